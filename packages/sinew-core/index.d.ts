// Types of sinew-core's API (index.js). The component's own interfaces, as
// jco generated them from the WIT, are under `component/` (`sinew.d.ts`).

import type * as ExecutorExports from './component/interfaces/sinew-executor-executor.js';
import type * as MemoryExports from './component/interfaces/sinew-executor-memory.js';

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The package's version (sinew's). */
export const version: string;

/** What went wrong. */
export class SinewError extends Error {
  constructor(code: string, message: string, pointer?: string, options?: { cause?: unknown });
  /**
   * Stable: `invalid-json`, `spec-errors`, `blocked`, `schema`,
   * `not-loaded`, `too-large` (the executor's), `seed` (a seed row
   * refused), `world` (the simulated store's), `failed` (the world failed
   * inside an earlier call; `cause` is that call's error), `patch`
   * (`applyPatch`).
   */
  readonly code: string;
  /** A JSON Pointer into the spec, where one applies; else empty. */
  readonly pointer: string;
  /** For `seed`: how many rows went in before the refused one. */
  readonly inserted?: number;
}

/** A spec: its JSON text, or the document itself. */
export type Spec = string | object;

/** Options of `load`. */
export interface LoadOptions {
  /**
   * The package's `component/` directory (default: next to index.js): a
   * URL; in Node also a file path (relative to the working directory); in
   * a browser a relative URL is relative to the page.
   */
  base?: string | URL;
  /** Core modules compiled already, by name (or a promise of them). */
  modules?: Iterable<[string, WebAssembly.Module]> | Promise<Iterable<[string, WebAssembly.Module]>>;
}

/** Compiles and instantiates the component. */
export function load(options?: LoadOptions): Promise<Core>;

/** The risk level of a finding (a tool or a spec with errors is `invalid`: see `ToolReport`, `Report`). */
export type Level = 'green' | 'yellow' | 'red';

/** One finding of the risk engine (sinew's docs/risk-signals.md lists the codes). */
export interface Finding {
  /** The signal. */
  code: string;
  level: Level;
  tool: string;
  /** The flow node, when the finding is about one. */
  node?: string;
  /** JSON Pointer into the spec. */
  path: string;
  message: string;
  /** Whether the spec acknowledges it (`acknowledgments`). */
  acknowledged: boolean;
  /** How to fix it, in words; `patch`, when the fix is mechanical, a JSON Patch (RFC 6902) `applyPatch` applies. */
  fix: { summary: string; patch?: Json[] };
}

/** An error or warning about the spec itself. */
export interface Diagnostic {
  code: string;
  /** JSON Pointer into the spec. */
  path: string;
  message: string;
  /** What to do about it (may be empty). */
  help: string;
  /** The tool it is in, when it is inside one. */
  tool?: string;
  /** For an error inside an expression string: its byte range `[start, end)` within that string. */
  span?: [number, number];
  /** Where in the text, for JSON syntax errors: line and column, both 1-based (the column in characters). */
  at?: { line: number; column: number };
}

/** The verdict on one tool. */
export interface ToolReport {
  /** Its worst unacknowledged finding's level; `invalid` when the tool has errors. */
  level: Level | 'invalid';
  findings: Finding[];
}

/** The risk report: what `sinew check --format json` prints. */
export interface Report {
  /** The spec's level: its worst tool's, `invalid` when it has errors. */
  level: Level | 'invalid';
  errors: Diagnostic[];
  warnings: Diagnostic[];
  tools: { [tool: string]: ToolReport };
}

/** A mechanical fix `fix` applied. */
export interface Applied {
  /** The signal it removed. */
  code: string;
  /** The tool. */
  tool: string;
  /** Where (JSON Pointer). */
  path: string;
  /** What it did. */
  summary: string;
}

/** The result of `fix`. */
export interface Fixed {
  /** The spec's text, fixed (formatting kept where possible). */
  spec: string;
  /** What was applied, in order. */
  applied: Applied[];
  /** The report on the fixed spec. */
  report: Report;
}

/** Where a JSON Pointer is in a spec's text: UTF-8 byte offsets. */
export interface Place {
  /** What to mark: the member's key (quotes included), else the value's first line. */
  markStart: number;
  markEnd: number;
  /** The value. */
  valueStart: number;
  valueEnd: number;
  /** False when the pointer is not in the text and this is its nearest ancestor's place. */
  exact: boolean;
}

/** Options of `simulate`. */
export interface SimulateOptions {
  /** The clock: milliseconds since the Unix epoch or a Date, or a function returning either (default `Date.now`). */
  now?: number | Date | (() => number | Date);
  /** Scripted answers of external services: `{"service.operation": [{ok: …} | {declined: …} | {failed: "…"}]}`, or its text. */
  externals?: object | string;
}

/** The risk engine, and worlds to simulate calls in. */
export class Core {
  private constructor();
  /** The risk report of a spec (its text, or an object). */
  analyze(spec: Spec): Report;
  /** `analyze`, the report's JSON text exactly as the native engine writes it. */
  analyzeText(spec: Spec): string;
  /** Applies every mechanical fix. */
  fix(spec: Spec): Fixed;
  /** Applies a JSON Patch (a finding's `fix.patch`), keeping formatting. Throws a SinewError (`patch`). */
  applyPatch(spec: Spec, patch: readonly unknown[] | string): string;
  /** Where JSON Pointers are in a spec's text, in the order asked. */
  locate(spec: string, pointers: Iterable<string>): Place[];
  /** A new world: the executor and an empty in-memory store of its own. */
  simulate(options?: SimulateOptions): Promise<World>;
}

/** A loaded spec's name, hash and tools. */
export interface BundleInfo {
  name: string;
  /** `sha256:` + hex of the spec's canonical JSON. */
  hash: string;
  tools: { name: string; timeoutMs?: number }[];
}

/** One call of a tool. */
export interface Request {
  tool: string;
  /** The input: a value, or its JSON text when a string (a string input is `'"text"'`); default `{}`. */
  input?: unknown;
  /** The verified caller; anonymous without. `claims` (an object or its text) default to `{sub}`. */
  auth?: { sub: string; roles?: string[]; claims?: object | string };
  /** Unique per request (new row ids derive from it); a random UUID by default. */
  id?: string;
  /** The `Idempotency-Key`. */
  idempotencyKey?: string;
  /** A cron tool's scheduled time (RFC 3339). */
  scheduled?: string;
}

/** A call's response. */
export interface Response {
  /** HTTP status. */
  status: number;
  /** The output, or an RFC 9457 problem. */
  body: Json;
  /** The audit entry as chained (`seq`, `prev`, `hash`). */
  audit: { [key: string]: Json };
}

/** The in-memory store's state, as `sinew run --state` writes it. */
export interface State {
  rows?: { [entity: string]: { [key: string]: Json }[] };
  audit?: { [key: string]: Json }[];
  idempotency?: Json[];
  rate?: Json[];
  outbox?: { [key: string]: Json }[];
  unique?: { [entity: string]: string[] };
  timestamps?: { [entity: string]: string[] };
  externals?: Json;
  [key: string]: Json | undefined;
}

/** An executor and its in-memory store. */
export class World {
  private constructor();
  /**
   * The clock, in milliseconds; set it to milliseconds, a Date, or a
   * function returning either. A time outside years 1 to 9999 (UTC), or
   * not a number, is a TypeError: when set, or when the component reads
   * it from the function (which fails the world).
   */
  get now(): number;
  set now(value: number | Date | (() => number | Date));
  /**
   * Whether the world failed inside an earlier call (the clock function
   * threw or returned no time, or the component trapped): every method
   * then throws a SinewError (`failed`); make a new world.
   */
  readonly failed: boolean;
  /** Loads a spec; throws a SinewError when it has errors or a Red tool. */
  load(spec: Spec): BundleInfo;
  /**
   * Inserts seed rows, `{"Entity": [row, …]}` (or its text), completed as
   * the spec defines them; returns how many. Not all or nothing: a refused
   * row throws a SinewError (`seed`) whose `inserted` counts the rows
   * before it, which stay.
   */
  seed(rows: { [entity: string]: object[] } | string): number;
  /**
   * Runs one call through the nine steps of the contract. A refused call
   * is a response; throws a SinewError only when the call cannot be
   * taken: `not-loaded`, `invalid-json` (input text), `too-large`,
   * `failed`. An error that stops the component mid-call (from the clock
   * function) is thrown as it is, and fails the world. The body and audit
   * entry are parsed: integers beyond 2^53 are rounded (`raw` has the text).
   */
  execute(request: Request): Response;
  /**
   * The store's whole state, parsed: integers beyond 2^53 are rounded
   * (`reset` of this object unchanged is exact all the same; use
   * `stateText()` to save it).
   */
  state(): State;
  /** The store's whole state as JSON text, exactly as `sinew run --state` writes it. */
  stateText(): string;
  /** Replaces the store's whole state: `stateText()`'s text, or an object (`state()`'s). */
  reset(state: State | string): void;
  /** The committed rows of an entity, in id order (parsed: integers beyond 2^53 rounded). */
  rows(entity: string): { [key: string]: Json }[];
  /** The audit chain from the `first`-th entry on (parsed: integers beyond 2^53 rounded). */
  audit(first?: number): { [key: string]: Json }[];
  /** The component's own exports (JSON as text, `u64`/`s64` as bigint). */
  readonly raw: { executor: typeof ExecutorExports; memory: typeof MemoryExports };
}
