#!/usr/bin/env node
// Conformance of sinew's composed WebAssembly component under Node.
//
//   node tests/node/conformance.mjs DIR
//
// DIR (written by `cargo test -p sinew-tests --test node`, see
// tests/node.rs) holds:
//
//   sinew.composed.wasm    the core composed onto the in-memory world
//                          (`sinew component --composed`): it imports only
//                          the clock, and exports `executor`, `risk` and
//                          `memory`, the world's state
//   traces/*.json          scenarios run by the native engine: the spec, the
//                          world's state to start from (the externals'
//                          script), the seed rows, the requests, and what
//                          the native engine answered and left behind,
//                          every JSON value as its text
//   risk/*.json            specs with the native risk report (its JSON text)
//
// This script transpiles the component with jco (into DIR/jco/), runs every
// trace on a fresh instance of it (the world reset to the trace's state, the
// spec's unique and timestamp fields declared from its text, as the browser
// preview does, the seed rows inserted), and compares every response (status,
// body, audit entry) and the final state (rows, audit chain, idempotency
// keys, rate windows, the externals' script and counters) with the native
// ones, byte for byte. Then it checks that `risk.analyze` returns the native
// report byte for byte. It parses none of the component's JSON: the store,
// its hashes and its JSON are the Rust ones, on both sides.
//
// Output: one line per scenario (`ok <name>` or `FAIL <name>: …`), then
// `N scenarios passed` (or `K of N scenarios failed`), `M risk reports
// identical` and `X passed, Y failed`. Exit status 1 on any failure, 2 on a
// usage or setup error.

import { readFile, readdir, writeFile, mkdir, rm } from 'node:fs/promises';
import { join, dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transpile } from '@bytecodealliance/jco';

/** Where two texts first differ, with some context, or undefined. */
function difference(what, expected, actual) {
  if (expected === actual) return undefined;
  if (typeof actual !== 'string') return `${what}: expected text, got ${String(actual)}`;
  let at = 0;
  while (at < expected.length && expected[at] === actual[at]) at++;
  const from = Math.max(0, at - 60);
  const cut = (t) => JSON.stringify(t.slice(from, at + 60));
  return `${what} differs at character ${at}: expected …${cut(expected)}…, got …${cut(actual)}…`;
}

/** The message of an error thrown by an export returning a `result`. */
function exportError(e) {
  const p = e && Object.prototype.hasOwnProperty.call(e, 'payload') ? e.payload : undefined;
  if (typeof p === 'string') return p;
  if (p && typeof p === 'object' && 'code' in p) return `${p.code}: ${p.message} (${p.pointer})`;
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

/**
 * Transpiles the component into DIR/jco. Returns `create(clock)`: a new
 * instance whose clock reads `clock.ms`.
 */
async function loadComponent(dir) {
  const bytes = await readFile(join(dir, 'sinew.composed.wasm'));
  // `async` instantiation: we pass the one import ourselves (no WASI).
  const { files } = await transpile(bytes, {
    name: 'sinew',
    instantiation: 'async',
    quiet: true,
  });
  const out = join(dir, 'jco');
  await rm(out, { recursive: true, force: true });
  for (const [name, data] of Object.entries(files)) {
    const path = join(out, name);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, data);
  }
  // Compile each core module once; every scenario instantiates afresh.
  const modules = new Map();
  for (const name of Object.keys(files)) {
    if (name.endsWith('.wasm')) modules.set(name, await WebAssembly.compile(files[name]));
  }
  const { instantiate } = await import(pathToFileURL(join(out, 'sinew.js')).href);
  const getCoreModule = (path) => {
    const m = modules.get(path);
    if (!m) throw new Error(`jco asked for an unknown core module \`${path}\``);
    return m;
  };
  return (clock) => {
    // jco looks imports up by their versionless names.
    const imports = { 'sinew:executor/clock': { nowMs: () => BigInt(clock.ms) } };
    return instantiate(getCoreModule, imports);
  };
}

/** A trace's request as the WIT `request` record. */
function witRequest(r) {
  return {
    tool: r.tool,
    input: r.input,
    auth: r.auth ?? undefined,
    id: r.id,
    idempotencyKey: r.idempotencyKey ?? undefined,
    scheduled: r.scheduled ?? undefined,
  };
}

/** Runs one trace; returns undefined on success or a message. */
async function runTrace(create, trace) {
  const clock = { ms: trace.clock };
  const { executor, memory } = await create(clock);
  try {
    executor.load(trace.spec);
  } catch (e) {
    return `load failed: ${exportError(e)}`;
  }
  try {
    memory.reset(trace.state);
    memory.declare(trace.spec);
  } catch (e) {
    return `the world: ${exportError(e)}`;
  }
  for (const { entity, row } of trace.seed) {
    try {
      memory.seed(entity, row);
    } catch (e) {
      return `seed \`${entity}\`: ${exportError(e)}`;
    }
  }

  const expected = trace.expected.responses;
  if (trace.requests.length !== expected.length) {
    return `the trace has ${trace.requests.length} requests but ${expected.length} responses`;
  }
  for (const [i, request] of trace.requests.entries()) {
    const here = `request ${i + 1} (${request.tool})`;
    clock.ms = request.at;
    let r;
    try {
      r = executor.execute(witRequest(request));
    } catch (e) {
      return `${here} failed: ${exportError(e)}`;
    }
    if (r.status !== expected[i].status) {
      return `${here}: status ${r.status} instead of ${expected[i].status}: ${r.body}`;
    }
    const d =
      difference(`${here}: the body`, expected[i].body, r.body) ??
      difference(`${here}: the audit entry`, expected[i].audit, r.audit);
    if (d) return d;
    const open = memory.openTransactions();
    if (open !== 0) return `${here} left ${open} transactions open`;
  }
  return difference('the final state', trace.expected.state, memory.state());
}

async function jsonFiles(dir) {
  try {
    return (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
  } catch (e) {
    if (e.code === 'ENOENT') return [];
    throw e;
  }
}

async function main() {
  const arg = process.argv[2];
  if (!arg) {
    console.error('usage: node conformance.mjs DIR  (DIR: target/node-conformance)');
    return 2;
  }
  const dir = resolve(arg);
  const create = await loadComponent(dir);

  let passed = 0;
  let failed = 0;

  const traces = await jsonFiles(join(dir, 'traces'));
  if (traces.length === 0) {
    console.error(`no traces in ${join(dir, 'traces')} (run \`cargo test -p sinew-tests --test node\`)`);
    return 2;
  }
  let scenariosFailed = 0;
  for (const file of traces) {
    const trace = JSON.parse(await readFile(join(dir, 'traces', file), 'utf8'));
    const name = trace.name ?? file.replace(/\.json$/, '');
    let problem;
    try {
      problem = await runTrace(create, trace);
    } catch (e) {
      problem = `crashed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
    }
    if (problem === undefined) {
      console.log(`ok ${name}`);
      passed++;
    } else {
      console.log(`FAIL ${name}: ${problem}`);
      failed++;
      scenariosFailed++;
    }
  }
  if (scenariosFailed === 0) console.log(`${traces.length} scenarios passed`);
  else console.log(`${scenariosFailed} of ${traces.length} scenarios failed`);

  // Risk reports: one instance (analyze needs no world), byte for byte.
  const risks = await jsonFiles(join(dir, 'risk'));
  let identical = 0;
  if (risks.length > 0) {
    const { risk } = await create({ ms: 0 });
    for (const file of risks) {
      const doc = JSON.parse(await readFile(join(dir, 'risk', file), 'utf8'));
      const name = file.replace(/\.json$/, '');
      let report;
      try {
        report = risk.analyze(doc.spec);
      } catch (e) {
        console.log(`FAIL risk ${name}: analyze failed: ${exportError(e)}`);
        failed++;
        continue;
      }
      const d = difference('the report', doc.report, report);
      if (d === undefined) {
        identical++;
        passed++;
      } else {
        console.log(`FAIL risk ${name}: ${d}`);
        failed++;
      }
    }
  }
  if (identical === risks.length) console.log(`${identical} risk reports identical`);
  else console.log(`${identical} of ${risks.length} risk reports identical`);

  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
    process.exitCode = 2;
  },
);
