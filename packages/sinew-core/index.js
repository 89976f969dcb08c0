// sinew-core: sinew's core (the risk engine and the interpreter) as a
// WebAssembly component for JavaScript, in Node and in the browser.
//
// The component is the core composed onto sinew's in-memory world (the
// Rust in-memory storage and scripted externals), transpiled by jco into
// `component/`: the same core and the same store as `sinew check`, `sinew
// run` and `sinew serve`. This file is the API: no WIT needed. JSON values
// cross the component as text; this API parses what it returns and
// stringifies what it is given (strings are passed as they are).
//
//   import { load } from 'sinew-core';
//   const core = await load();
//   const report = core.analyze(specText);
//   const world = await core.simulate({ now: Date.parse('2026-01-01T00:00:00Z') });
//   world.load(specText);
//   world.seed({ Product: [{ id: '…', name: 'Pen', stock: 3 }] });
//   const { status, body } = world.execute({ tool: 'create_order', input: {…}, auth: { sub: 'u1', roles: ['customer'] } });
//
// See README.md and index.d.ts.

import { instantiate } from './component/sinew.js';

/** The package's version (sinew's). */
export const version = '0.1.0';

/**
 * What went wrong: `code` is stable (`invalid-json`, `spec-errors`,
 * `blocked`, `schema`, `not-loaded`, `too-large` from the executor;
 * `seed` for a seed row refused; `world` from the simulated world's
 * store; `failed` from a world that failed inside the component before,
 * with the first failure as `cause`; `patch` from `applyPatch`),
 * `pointer` a JSON Pointer into the spec where one applies.
 */
export class SinewError extends Error {
  constructor(code, message, pointer = '', options = undefined) {
    super(message, options);
    this.name = 'SinewError';
    this.code = code;
    this.pointer = pointer;
  }
}

/** The SinewError of an export's `err` (jco throws it as `payload`). */
function thrown(e, code) {
  if (e && typeof e === 'object' && 'payload' in e) {
    const p = e.payload;
    if (typeof p === 'string') return new SinewError(code, p);
    if (p && typeof p === 'object' && 'code' in p) return new SinewError(p.code, p.message, p.pointer);
  }
  return e;
}

/** Calls `f`; an `err` it returns is thrown as a SinewError. */
function attempt(code, f) {
  try {
    return f();
  } catch (e) {
    throw thrown(e, code);
  }
}

/** JSON text: strings as they are, anything else stringified. */
function text(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** Whether this is Node (its file system reads the core modules). */
const inNode = typeof globalThis.process?.versions?.node === 'string';

/** Keeps `new Core()` and `new World()` to this module. */
const internal = Symbol('sinew-core');

/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the times sinew writes (RFC 3339, years 1 to 9999). */
const EARLIEST = -62135596800000;
const LATEST = 253402300799999;

/**
 * Milliseconds since the Unix epoch from a number or a Date: whole
 * (fractions dropped), in years 1 to 9999 UTC, or a TypeError.
 */
function millis(value) {
  const given = value instanceof Date ? value.getTime() : typeof value === 'number' ? value : NaN;
  if (!Number.isFinite(given)) throw new TypeError(`the clock: ${String(value)} is not milliseconds`);
  const ms = Math.floor(given);
  if (ms < EARLIEST || ms > LATEST) {
    throw new TypeError(`the clock: ${String(value)} is not a time in years 1 to 9999 (UTC)`);
  }
  return ms;
}

/** A request id: unique per request (new row ids derive from it). */
function requestId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const hex = Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20)}`;
}

/**
 * Compiles one core module of the component. In Node a `file:` URL is
 * read from disk; anything else is fetched and compiled by streaming,
 * or from its bytes when the server's content type is not
 * `application/wasm`.
 */
async function compileModule(base, name) {
  const url = new URL(name, base);
  if (url.protocol === 'file:' && inNode) {
    const { readFile } = await import('node:fs/promises');
    return WebAssembly.compile(await readFile(url));
  }
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  const wasm = (r.headers.get('content-type') ?? '').split(';')[0].trim() === 'application/wasm';
  if (wasm && WebAssembly.compileStreaming) return WebAssembly.compileStreaming(r);
  return WebAssembly.compile(await r.arrayBuffer());
}

/**
 * The URL of the `component/` directory: next to this file by default; a
 * URL; in Node, a file path too (absolute, or relative to the working
 * directory); in a browser, a relative URL is relative to the page.
 */
async function baseURL(base) {
  let url;
  if (base === undefined) url = new URL('./component/', import.meta.url);
  else if (base instanceof URL) url = new URL(base.href);
  else {
    const s = String(base);
    const scheme = /^[A-Za-z][A-Za-z0-9+.-]+:/.test(s) && !/^[A-Za-z]:[\\/]/.test(s);
    if (!scheme && inNode) {
      const [{ pathToFileURL }, { resolve }] = await Promise.all([import('node:url'), import('node:path')]);
      url = pathToFileURL(resolve(s));
    } else {
      url = new URL(s, globalThis.location?.href ?? import.meta.url);
    }
  }
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

/**
 * Loads the component: compiles its core modules (once; every `simulate`
 * instantiates them afresh) and instantiates the risk engine.
 *
 * Options: `base`, the URL of the `component/` directory (default: next to
 * this file); `modules`, core modules compiled already (an iterable of
 * `[name, WebAssembly.Module]`, or a promise of one: a page that starts
 * compiling early passes them).
 */
export async function load(options = {}) {
  const base = await baseURL(options.base);
  // Modules compiled already; if that failed (a page's early start), the
  // modules are compiled here instead.
  const given = await Promise.resolve(options.modules ?? []).catch(() => []);
  const compiled = new Map(given);
  const pending = new Map();
  const getCoreModule = (name) => {
    const m = compiled.get(name);
    if (m) return m;
    if (!pending.has(name)) {
      pending.set(
        name,
        compileModule(base, name).then((module) => {
          compiled.set(name, module);
          return module;
        }),
      );
    }
    return pending.get(name);
  };
  // `clock` returns whole milliseconds (`millis`).
  const create = (clock) => instantiate(getCoreModule, { 'sinew:executor/clock': { nowMs: () => BigInt(clock()) } });
  // The risk engine never reads the clock.
  const judge = await create(() => 0);
  return new Core(internal, judge, create);
}

/** The risk engine, and worlds to simulate calls in. */
export class Core {
  /** @internal Use `load()`. */
  constructor(token, instance, create) {
    if (token !== internal) throw new TypeError('a Core comes from `load()`');
    this.#risk = instance.risk;
    this.#create = create;
  }

  #risk;
  #create;

  /** The risk report of a spec's text (what `sinew check --format json` prints). */
  analyze(spec) {
    return JSON.parse(this.#risk.analyze(text(spec)));
  }

  /** `analyze`, the report as the component wrote it (text). */
  analyzeText(spec) {
    return this.#risk.analyze(text(spec));
  }

  /** Applies every mechanical fix: `{spec, applied, report}`. */
  fix(spec) {
    const out = this.#risk.fix(text(spec));
    return { spec: out.spec, applied: out.applied, report: JSON.parse(out.report) };
  }

  /**
   * Applies a JSON Patch (a finding's `fix.patch`) to a spec's text,
   * keeping the rest of its formatting. Throws a SinewError (`patch`) when
   * the text is not JSON or the patch does not apply.
   */
  applyPatch(spec, patch) {
    return attempt('patch', () => this.#risk.apply(text(spec), text(patch)));
  }

  /**
   * Where JSON Pointers (findings' `path`s) are in a spec's text: for each,
   * `{markStart, markEnd, valueStart, valueEnd, exact}`, UTF-8 byte offsets.
   */
  locate(spec, pointers) {
    return this.#risk.locate(text(spec), [...pointers]);
  }

  /**
   * A new world to run calls in: the executor and an empty in-memory store
   * of its own. Options: `now`, its clock (milliseconds since the Unix
   * epoch in years 1 to 9999 UTC, a Date, or a function returning either;
   * default `Date.now`), and
   * `externals`, the scripted answers of external services
   * (`{"service.operation": [{"ok": …}, {"declined": …}, {"failed": "…"}]}`).
   */
  async simulate(options = {}) {
    // `faulted`: whether the clock threw while the component read it.
    const clock = { now: Date.now, faulted: false };
    const instance = await this.#create(() => {
      try {
        return millis(clock.now());
      } catch (e) {
        clock.faulted = true;
        throw e;
      }
    });
    return new World(internal, instance, clock, options);
  }
}

/**
 * The text each parsed state came from (`World#state`): `reset` of an
 * unchanged state object uses it, so the round trip is exact even for
 * integers JSON.parse rounds (beyond 2^53).
 */
const stateTexts = new WeakMap();

/**
 * A state's text: a string as it is; an object `state()` returned and not
 * changed since, the exact text it was parsed from; else stringified.
 */
function stateSource(state) {
  if (typeof state === 'string') return state;
  const source = state !== null && typeof state === 'object' ? stateTexts.get(state) : undefined;
  if (source !== undefined && JSON.stringify(state) === JSON.stringify(JSON.parse(source))) return source;
  return text(state);
}

/**
 * Whether an error thrown by a call into the component may have stopped
 * it mid-call: a trap (a WebAssembly.RuntimeError), the stack exhausted
 * (a RangeError), or the clock throwing while the component read it.
 * Errors of the arguments (a TypeError before the call) and the exports'
 * own `err`s leave it as it was.
 */
function stopped(e, clock) {
  return clock.faulted || e instanceof WebAssembly.RuntimeError || e instanceof RangeError;
}

/** An executor and its in-memory store. */
export class World {
  #executor;
  #memory;
  #clock;
  #spec;
  /** Whether an error stopped the component mid-call; `#failure`, that error. */
  #failed = false;
  #failure;

  /** @internal Use `core.simulate()`. */
  constructor(token, instance, clock, options) {
    if (token !== internal) throw new TypeError('a World comes from `core.simulate()`');
    this.#executor = instance.executor;
    this.#memory = instance.memory;
    this.#clock = clock;
    if (options.now !== undefined) this.now = options.now;
    if (options.externals !== undefined) this.reset(`{"externals": ${text(options.externals)}}`);
  }

  /**
   * Calls into the component. An error that stopped it mid-call (a trap,
   * the clock throwing or returning no time) is thrown as it is, and the
   * world is failed from then on: a transaction may be open, a row locked,
   * an idempotency key claimed, and nothing can roll them back. Every later
   * call throws a SinewError (`failed`, the first error as its `cause`).
   */
  #call(f) {
    if (this.#failed) {
      const cause = this.#failure;
      throw new SinewError(
        'failed',
        `this world failed inside an earlier call (${cause?.message ?? String(cause)}), which may have left a ` +
          'transaction open: discard it and make a new one with `core.simulate()`',
        '',
        { cause },
      );
    }
    this.#clock.faulted = false;
    try {
      return f();
    } catch (e) {
      if (stopped(e, this.#clock)) {
        this.#failed = true;
        this.#failure = e;
      }
      throw e;
    } finally {
      this.#clock.faulted = false;
    }
  }

  /**
   * Sets the clock: milliseconds since the epoch or a Date, or a function
   * returning either (called at every reading; fractions are dropped). A
   * time outside years 1 to 9999 (UTC), like NaN, is a TypeError: when set,
   * or, from a function, when the component reads it (which fails the
   * world mid-call: see `#call`).
   */
  set now(value) {
    if (typeof value === 'function') this.#clock.now = value;
    else {
      const ms = millis(value);
      this.#clock.now = () => ms;
    }
  }

  /** The clock's time now, in milliseconds. */
  get now() {
    return millis(this.#clock.now());
  }

  /** Whether an earlier call failed inside the component: every call but `now` and `raw` then throws. */
  get failed() {
    return this.#failed;
  }

  /**
   * Loads a spec (its text or object): checks and judges it (a spec with
   * errors, a Red tool or unacknowledged Yellow signals throws a
   * SinewError), and tells the store its unique and timestamp fields.
   * Keeps the store's rows. Returns `{name, hash, tools: [{name, timeoutMs}]}`.
   */
  load(spec) {
    const t = text(spec);
    const info = this.#call(() => {
      const info = attempt('load', () => this.#executor.load(t));
      attempt('world', () => this.#memory.declare(t));
      return info;
    });
    this.#spec = t;
    return {
      name: info.name,
      hash: info.hash,
      tools: info.tools.map((x) => ({
        name: x.name,
        timeoutMs: x.timeoutMs === undefined ? undefined : Number(x.timeoutMs),
      })),
    };
  }

  /**
   * Inserts seed rows as committed, `{"Entity": [row, …]}` (an object or
   * its text; numbers as written), each completed as the loaded spec
   * defines them (`version` 1, timestamps now, the initial status, defaults).
   * Every row needs a UUID `id`. Returns how many rows it inserted. Not
   * all or nothing: on an error (a SinewError, code `seed`, naming the
   * row, with `inserted`, how many went in before it) the rows before it
   * stay.
   */
  seed(rows) {
    const given = text(rows);
    const tables = this.#call(() => attempt('seed', () => this.#memory.tables(given)));
    const now = BigInt(this.now);
    let n = 0;
    for (const { entity, rows: list } of tables) {
      list.forEach((row, i) => {
        const where = (e) => {
          const err = new SinewError('seed', `\`${entity}[${i}]\`: ${e.message}`, e.pointer);
          err.inserted = n;
          return err;
        };
        try {
          this.#call(() => {
            const complete = attempt('seed', () => this.#executor.completeRow(entity, row, now));
            attempt('seed', () => this.#memory.seed(entity, complete));
          });
        } catch (e) {
          throw e instanceof SinewError && e.code !== 'failed' ? where(e) : e;
        }
        n += 1;
      });
    }
    return n;
  }

  /**
   * Runs one call of a tool through the nine steps of the contract.
   * `request`: `{tool, input, auth?: {sub, roles?, claims?}, id?,
   * idempotencyKey?, scheduled?}`; `input` is a value, or its JSON text
   * when a string (a string input is `'"text"'`); `id` defaults to a
   * random UUID (new row ids derive from it). Returns `{status, body,
   * audit}`: the HTTP status, the body (the output or an RFC 9457
   * problem) and the request's final audit entry as the store chained it
   * (with `seq`, `prev`, `hash`). A refused call is a response; a
   * SinewError is thrown only when the call cannot be taken at all:
   * `not-loaded`, `invalid-json` (the input text is not JSON),
   * `too-large` (the input is over the executor's limit), `failed` (an
   * earlier call failed inside the component). An error that stops the
   * component mid-call (the clock function throwing or returning no time
   * in years 1 to 9999) is thrown as it is, and fails the world.
   */
  execute(request) {
    const auth = request.auth
      ? {
          sub: String(request.auth.sub),
          roles: [...(request.auth.roles ?? [])],
          claims: text(request.auth.claims ?? { sub: request.auth.sub }),
        }
      : undefined;
    const call = {
      tool: request.tool,
      input: text(request.input ?? {}),
      auth,
      id: request.id ?? requestId(),
      idempotencyKey: request.idempotencyKey ?? undefined,
      scheduled: request.scheduled ?? undefined,
    };
    return this.#call(() => {
      const before = this.#memory.auditLen();
      const r = attempt('execute', () => this.#executor.execute(call));
      // The request's final entry as chained (commit entries come before
      // it); the executor's own copy, unchained, if the store lost it.
      const chained = JSON.parse(this.#memory.audit(before));
      const audit = chained.findLast((e) => e.kind === 'final') ?? JSON.parse(r.audit);
      return { status: r.status, body: JSON.parse(r.body), audit };
    });
  }

  /**
   * The store's whole state, as `sinew run --state` writes it: `{rows,
   * audit, idempotency, rate, unique, externals}`, parsed (integers
   * beyond 2^53 rounded, as JSON.parse does). `reset` of this object,
   * unchanged, is exact all the same; `stateText()` is the exact text.
   */
  state() {
    const t = this.stateText();
    const parsed = JSON.parse(t);
    stateTexts.set(parsed, t);
    return parsed;
  }

  /** The store's whole state as JSON text, exactly as `sinew run --state` writes it. */
  stateText() {
    return this.#call(() => this.#memory.state());
  }

  /**
   * Replaces the store's whole state: its text (`stateText()`, exact), or
   * an object (`state()`'s, unchanged, exact; any other, stringified);
   * the loaded spec's unique and timestamp fields stay declared.
   */
  reset(state) {
    const t = stateSource(state);
    this.#call(() => {
      attempt('world', () => this.#memory.reset(t));
      if (this.#spec !== undefined) attempt('world', () => this.#memory.declare(this.#spec));
    });
  }

  /** The committed rows of an entity, soft-deleted ones included, in id order (parsed: integers beyond 2^53 rounded). */
  rows(entity) {
    return JSON.parse(this.#call(() => this.#memory.rows(entity)));
  }

  /** The audit chain from the `first`-th entry on (0: the oldest; parsed: integers beyond 2^53 rounded). */
  audit(first = 0) {
    const from = BigInt(first);
    return JSON.parse(this.#call(() => this.#memory.audit(from)));
  }

  /**
   * The component's own exports, JSON as text, for byte-exact work:
   * `executor` and `memory` (see the WIT in sinew's `wit/`). Calls through
   * them bypass the world's checks (`failed`).
   */
  get raw() {
    return { executor: this.#executor, memory: this.#memory };
  }
}
