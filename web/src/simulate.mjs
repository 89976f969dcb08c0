// Simulate: runs one call of a tool in the page, on the component's
// executor, over storage.mjs's in-memory storage. A "world" (storage,
// clock, externals, instance with the spec loaded and the seed rows in it)
// lives across runs until the spec, the seed or the external answers
// change, or the user resets it.

import { exportError } from './core.mjs';
import { FixedClock, MemoryStorage, ScriptedExternal } from './storage.mjs';
import { parse, stringify } from './json.mjs';

/** Pretty JSON of a json.mjs value (display only). */
export function pretty(value) {
  try {
    return JSON.stringify(JSON.parse(stringify(value)), null, 2);
  } catch {
    return stringify(value);
  }
}

/** An input drafted from a JSON Schema: every property with a plausible value. */
export function draftInput(schema) {
  const draft = (s, depth) => {
    if (!s || typeof s !== 'object' || depth > 4) return null;
    if ('default' in s) return s.default;
    if (Array.isArray(s.enum) && s.enum.length) return s.enum[0];
    const type = Array.isArray(s.type) ? s.type[0] : s.type;
    switch (type) {
      case 'object': {
        const o = {};
        for (const [k, v] of Object.entries(s.properties ?? {})) o[k] = draft(v, depth + 1);
        return o;
      }
      case 'array':
        return [];
      case 'integer':
      case 'number':
        return s.minimum ?? 1;
      case 'boolean':
        return false;
      case 'string':
        if (s.format === 'date-time') return new Date(0).toISOString();
        return '';
      default:
        return null;
    }
  };
  return draft(schema, 0) ?? {};
}

/** A request id: unique per request (new row ids derive from it). */
function requestId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const hex = Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20)}`;
}

export class Simulator {
  constructor(core) {
    this.core = core;
    this.world = null;
    this.key = null;
  }

  reset() {
    this.world = null;
    this.key = null;
  }

  /** A world for this spec, seed and script: the current one, or a new one. */
  async worldFor(specText, seedText, externalsText) {
    const key = JSON.stringify([specText, seedText, externalsText]);
    if (this.world && this.key === key) return this.world;
    this.reset();
    let spec;
    try {
      spec = JSON.parse(specText);
    } catch (e) {
      throw new Error(`the spec is not JSON: ${e.message}`);
    }
    let seed;
    try {
      seed = parse(seedText.trim() === '' ? '{}' : seedText);
    } catch (e) {
      throw new Error(`the seed rows are not JSON: ${e.message}`);
    }
    if (!(seed instanceof Map)) throw new Error('the seed rows must be an object of entity → array of rows');
    let script;
    try {
      script = parse(externalsText.trim() === '' ? '{}' : externalsText);
    } catch (e) {
      throw new Error(`the external answers are not JSON: ${e.message}`);
    }
    const storage = new MemoryStorage();
    for (const [entity, def] of Object.entries(spec.entities ?? {})) {
      for (const [field, f] of Object.entries(def?.fields ?? {})) {
        if (f?.unique === true) storage.setUnique(entity, field);
      }
    }
    const clock = new FixedClock(Date.now());
    const external = new ScriptedExternal(script);
    const instance = await this.core.instantiate({ storage, clock, external });
    const { executor } = instance;
    try {
      executor.load(specText);
    } catch (e) {
      const err = exportError(e);
      throw new Error(`the spec does not load (${err.code}): ${err.message}`);
    }
    for (const [entity, rows] of seed) {
      if (!Array.isArray(rows)) throw new Error(`seed \`${entity}\`: expected an array of rows`);
      rows.forEach((row, i) => {
        let complete;
        try {
          complete = executor.completeRow(entity, stringify(row), BigInt(clock.nowMs()));
        } catch (e) {
          throw new Error(`seed \`${entity}[${i}]\`: ${exportError(e).message}`);
        }
        try {
          storage.seed(entity, parse(complete));
        } catch (e) {
          throw new Error(`seed \`${entity}[${i}]\`: ${e.message}`);
        }
      });
    }
    this.world = { storage, clock, external, executor, runs: 0 };
    this.key = key;
    return this.world;
  }

  /**
   * Runs one call. Returns `{status, body, audit, rows, ms}`: `audit` is the
   * entry as chained by the storage, `rows` the rows it names as they are
   * now. Throws an Error with a plain message when it cannot run.
   */
  async run({ specText, seedText, externalsText, tool, inputText, sub, roles, idempotencyKey }) {
    try {
      parse(inputText);
    } catch (e) {
      throw new Error(`the input is not JSON: ${e.message}`);
    }
    const world = await this.worldFor(specText, seedText, externalsText);
    world.clock.set(Date.now());
    const before = world.storage.auditEntries().length;
    const t0 = performance.now();
    let response;
    try {
      response = world.executor.execute({
        tool,
        input: inputText,
        auth: sub ? { sub, roles, claims: stringify(new Map([['sub', sub]])) } : undefined,
        id: requestId(),
        idempotencyKey: idempotencyKey || undefined,
      });
    } catch (e) {
      const err = exportError(e);
      throw new Error(`the call did not run (${err.code}): ${err.message}`);
    }
    const ms = performance.now() - t0;
    world.runs += 1;
    const entries = world.storage.auditEntries();
    const audit = entries.length > before ? entries[entries.length - 1] : parse(response.audit);
    const rows = [];
    const named = audit instanceof Map ? audit.get('rows') : undefined;
    for (const r of Array.isArray(named) ? named : []) {
      const entity = r.get('entity');
      const id = r.get('id');
      const row = world.storage.rows(entity).find((x) => x.get('id') === id);
      rows.push({ entity, id, op: r.get('op'), row });
    }
    return { status: response.status, body: parse(response.body), audit, rows, ms };
  }
}
