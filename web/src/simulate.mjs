// Simulate: runs one call of a tool in the page, in a world of the npm
// package `sinew-core` (`core.simulate()`: the component's executor and the
// in-memory world composed into it, the Rust storage and scripted
// externals). A world (an instance with the spec loaded, the seed rows in
// its storage, and its clock) lives across runs until the spec, the seed
// or the external answers change, or the user resets it.

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
    let world;
    try {
      world = await this.core.simulate({ now: Date.now(), externals });
    } catch (e) {
      throw new Error(e.code === 'world' ? `the external answers: ${e.message}` : e.message);
    }
    try {
      world.load(specText);
    } catch (e) {
      throw new Error(`the spec does not load (${e.code}): ${e.message}`);
    }
    try {
      world.seed(seed);
    } catch (e) {
      throw new Error(`the seed rows: ${e.message}`);
    }
    this.world = world;
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
    world.now = Date.now();
    const t0 = performance.now();
    let response;
    try {
      response = world.execute({
        tool,
        input: inputText,
        auth: sub ? { sub, roles, claims: { sub } } : undefined,
        idempotencyKey: idempotencyKey || undefined,
      });
    } catch (e) {
      throw new Error(`the call did not run (${e.code ?? 'trap'}): ${e.message}`);
    }
    const ms = performance.now() - t0;
    const { audit } = response;
    const tables = new Map();
    const rows = [];
    for (const { entity, id, op } of Array.isArray(audit?.rows) ? audit.rows : []) {
      if (!tables.has(entity)) tables.set(entity, world.rows(entity));
      const row = tables.get(entity).find((x) => x.id === id);
      rows.push({ entity, id, op, row });
    }
    return { status: response.status, body: response.body, audit, rows, ms };
  }
}
