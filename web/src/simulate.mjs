// Simulate: runs one call of a tool in the page, on the component's
// executor and the in-memory world composed into it (the Rust storage and
// scripted externals, reset and read through its `memory` interface). A
// "world" (an instance with the spec loaded, the seed rows in its storage,
// and its clock) lives across runs until the spec, the seed or the
// external answers change, or the user resets it. JSON the world keeps
// (rows, audit entries) crosses as text and is parsed here for display only.

import { Clock, exportError } from './core.mjs';

/** Pretty JSON of a value (display only). */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** Fails with `what`'s message when `text` is not JSON. */
function mustParse(text, what) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} not JSON: ${e.message}`);
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
    mustParse(specText, 'the spec is');
    const seed = seedText.trim() === '' ? '{}' : seedText;
    const externals = externalsText.trim() === '' ? '{}' : externalsText;
    mustParse(seed, 'the seed rows are');
    mustParse(externals, 'the external answers are');
    const clock = new Clock(Date.now());
    const { executor, memory } = await this.core.instantiate(clock);
    try {
      executor.load(specText);
    } catch (e) {
      const err = exportError(e);
      throw new Error(`the spec does not load (${err.code}): ${err.message}`);
    }
    try {
      memory.reset(`{"externals": ${externals}}`);
    } catch (e) {
      throw new Error(`the external answers: ${exportError(e).message}`);
    }
    memory.declare(specText);
    let tables;
    try {
      tables = memory.tables(seed);
    } catch (e) {
      throw new Error(exportError(e).message);
    }
    for (const { entity, rows } of tables) {
      rows.forEach((row, i) => {
        try {
          memory.seed(entity, executor.completeRow(entity, row, BigInt(clock.ms)));
        } catch (e) {
          throw new Error(`seed \`${entity}[${i}]\`: ${exportError(e).message}`);
        }
      });
    }
    this.world = { clock, executor, memory, runs: 0 };
    this.key = key;
    return this.world;
  }

  /**
   * Runs one call. Returns `{status, body, audit, rows, ms}`: `audit` is the
   * entry as chained by the storage, `rows` the rows it names as they are
   * now. Throws an Error with a plain message when it cannot run.
   */
  async run({ specText, seedText, externalsText, tool, inputText, sub, roles, idempotencyKey }) {
    mustParse(inputText, 'the input is');
    const world = await this.worldFor(specText, seedText, externalsText);
    world.clock.ms = Date.now();
    const before = world.memory.auditLen();
    const t0 = performance.now();
    let response;
    try {
      response = world.executor.execute({
        tool,
        input: inputText,
        auth: sub ? { sub, roles, claims: JSON.stringify({ sub }) } : undefined,
        id: requestId(),
        idempotencyKey: idempotencyKey || undefined,
      });
    } catch (e) {
      const err = exportError(e);
      throw new Error(`the call did not run (${err.code}): ${err.message}`);
    }
    const ms = performance.now() - t0;
    world.runs += 1;
    const entries = JSON.parse(world.memory.audit(before));
    const audit = entries.length > 0 ? entries[entries.length - 1] : JSON.parse(response.audit);
    const tables = new Map();
    const rows = [];
    for (const { entity, id, op } of Array.isArray(audit?.rows) ? audit.rows : []) {
      if (!tables.has(entity)) tables.set(entity, JSON.parse(world.memory.rows(entity)));
      const row = tables.get(entity).find((x) => x.id === id);
      rows.push({ entity, id, op, row });
    }
    return { status: response.status, body: JSON.parse(response.body), audit, rows, ms };
  }
}
