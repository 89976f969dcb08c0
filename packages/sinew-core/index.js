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
 * store; `patch` from `applyPatch`), `pointer` a JSON Pointer into the
 * spec where one applies.
 */
export class SinewError extends Error {
  constructor(code, message, pointer = '') {
    super(message);
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

/**
 * Milliseconds since the Unix epoch from a number or a Date: whole
 * (fractions dropped), finite, or a TypeError.
 */
function millis(value) {
  const ms = value instanceof Date ? value.getTime() : typeof value === 'number' ? value : NaN;
  if (!Number.isFinite(ms)) throw new TypeError(`the clock: ${String(value)} is not milliseconds`);
  return Math.floor(ms);
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
  const create = (clock) =>
    instantiate(getCoreModule, { 'sinew:executor/clock': { nowMs: () => BigInt(millis(clock())) } });
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
   * epoch, or a function returning them; default `Date.now`), and
   * `externals`, the scripted answers of external services
   * (`{"service.operation": [{"ok": …}, {"declined": …}, {"failed": "…"}]}`).
   */
  async simulate(options = {}) {
    const clock = { now: Date.now };
    const instance = await this.#create(() => clock.now());
    return new World(internal, instance, clock, options);
  }
}

/** An executor and its in-memory store. */
export class World {
  #executor;
  #memory;
  #clock;
  #spec;

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
   * Sets the clock: milliseconds since the epoch or a Date, or a function
   * returning either (called at every reading; fractions are dropped).
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

  /**
   * Loads a spec (its text or object): checks and judges it (a spec with
   * errors, a Red tool or unacknowledged Yellow signals throws a
   * SinewError), and tells the store its unique and timestamp fields.
   * Keeps the store's rows. Returns `{name, hash, tools: [{name, timeoutMs}]}`.
   */
  load(spec) {
    const t = text(spec);
    const info = attempt('load', () => this.#executor.load(t));
    attempt('world', () => this.#memory.declare(t));
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
   * defines it (`version` 1, timestamps now, the initial status, defaults).
   * Every row needs a UUID `id`. Returns how many rows it inserted. Not
   * all or nothing: on an error (a SinewError, code `seed`, naming the
   * row, with `inserted`, how many went in before it) the rows before it
   * stay.
   */
  seed(rows) {
    const tables = attempt('seed', () => this.#memory.tables(text(rows)));
    const now = BigInt(this.now);
    let n = 0;
    for (const { entity, rows: list } of tables) {
      list.forEach((row, i) => {
        const where = (e) => {
          const err = new SinewError('seed', `\`${entity}[${i}]\`: ${e.message}`, e.pointer);
          err.inserted = n;
          return err;
        };
        let complete;
        try {
          complete = attempt('seed', () => this.#executor.completeRow(entity, row, now));
          attempt('seed', () => this.#memory.seed(entity, complete));
        } catch (e) {
          throw e instanceof SinewError ? where(e) : e;
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
   * `too-large` (the input is over the executor's limit).
   */
  execute(request) {
    const auth = request.auth
      ? {
          sub: String(request.auth.sub),
          roles: [...(request.auth.roles ?? [])],
          claims: text(request.auth.claims ?? { sub: request.auth.sub }),
        }
      : undefined;
    const before = this.#memory.auditLen();
    const r = attempt('execute', () =>
      this.#executor.execute({
        tool: request.tool,
        input: text(request.input ?? {}),
        auth,
        id: request.id ?? requestId(),
        idempotencyKey: request.idempotencyKey ?? undefined,
        scheduled: request.scheduled ?? undefined,
      }),
    );
    // The request's final entry as chained (commit entries come before
    // it); the executor's own copy, unchained, if the store lost it.
    const chained = JSON.parse(this.#memory.audit(before));
    const audit = chained.findLast((e) => e.kind === 'final') ?? JSON.parse(r.audit);
    return { status: r.status, body: JSON.parse(r.body), audit };
  }

  /**
   * The store's whole state, as `sinew run --state` writes it: `{rows,
   * audit, idempotency, rate, unique, externals}`.
   */
  state() {
    return JSON.parse(this.#memory.state());
  }

  /**
   * Replaces the store's whole state (the form `state()` returns); the
   * loaded spec's unique and timestamp fields stay declared.
   */
  reset(state) {
    attempt('world', () => this.#memory.reset(text(state)));
    if (this.#spec !== undefined) attempt('world', () => this.#memory.declare(this.#spec));
  }

  /** The committed rows of an entity, soft-deleted ones included, in id order. */
  rows(entity) {
    return JSON.parse(this.#memory.rows(entity));
  }

  /** The audit chain from the `first`-th entry on (0: the oldest). */
  audit(first = 0) {
    return JSON.parse(this.#memory.audit(BigInt(first)));
  }

  /**
   * The component's own exports, JSON as text, for byte-exact work:
   * `executor` and `memory` (see the WIT in sinew's `wit/`).
   */
  get raw() {
    return { executor: this.#executor, memory: this.#memory };
  }
}
