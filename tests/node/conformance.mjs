#!/usr/bin/env node
// Conformance of sinew's WebAssembly component under Node.
//
//   node tests/node/conformance.mjs DIR
//
// DIR (written by `cargo test -p sinew-tests --test node`, see
// tests/node.rs) holds:
//
//   sinew.component.wasm   the component
//   traces/*.json          scenarios run by the native engine, with what it
//                          answered, the state it left and its audit chain
//   risk/*.json            specs with the native risk report (its JSON text)
//
// This script transpiles the component with jco (into DIR/jco/), runs every
// trace on it with the JavaScript storage, clock and externals of
// storage.mjs, and compares responses, final state and audit chain with the
// native ones as JSON values (key order aside). Then it checks that
// `risk.analyze` returns the native report byte for byte.
//
// Output: one line per scenario (`ok <name>` or `FAIL <name>: …`), then
// `N scenarios passed` (or `K of N scenarios failed`), `M risk reports
// identical` and `X passed, Y failed`. Exit status 1 on any failure, 2 on a
// usage or setup error.

import { readFile, readdir, writeFile, mkdir, rm } from 'node:fs/promises';
import { join, dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transpile } from '@bytecodealliance/jco';

import { FixedClock, MemoryStorage, ScriptedExternal, makeImports } from '../../web/src/storage.mjs';
import { JsonNumber, parse, parseOr, stringify } from '../../web/src/json.mjs';

// ---------------------------------------------------------------------------
// Comparison

/** A short, readable rendering of a value for messages. */
function show(v) {
  if (v === undefined) return '(nothing)';
  const text = stringify(v);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/** JSON Pointer escaping of one token. */
function token(k) {
  return String(k).replaceAll('~', '~0').replaceAll('/', '~1');
}

function kindOf(v) {
  if (v === null) return 'null';
  if (v instanceof JsonNumber) return 'number';
  if (Array.isArray(v)) return 'array';
  if (v instanceof Map) return 'object';
  return typeof v;
}

/**
 * The first difference between two JSON values (json.mjs representation)
 * as `{path, expected, actual}`, or undefined when they are equal. Objects
 * compare regardless of key order; arrays in order; numbers as serde_json
 * does (`1` and `1.0` differ).
 */
function firstDifference(expected, actual, path = '') {
  const ke = kindOf(expected);
  const ka = kindOf(actual);
  if (ke !== ka) return { path, expected, actual };
  switch (ke) {
    case 'number':
      return expected.kind === actual.kind && expected.value === actual.value
        ? undefined
        : { path, expected, actual };
    case 'array': {
      const n = Math.min(expected.length, actual.length);
      for (let i = 0; i < n; i++) {
        const d = firstDifference(expected[i], actual[i], `${path}/${i}`);
        if (d) return d;
      }
      if (expected.length !== actual.length) {
        return {
          path: `${path}/${n}`,
          expected: expected[n],
          actual: actual[n],
          note: `${expected.length} items expected, ${actual.length} found`,
        };
      }
      return undefined;
    }
    case 'object': {
      for (const [k, x] of expected) {
        const d = firstDifference(x, actual.get(k), `${path}/${token(k)}`);
        if (d) return d;
      }
      for (const [k, y] of actual) {
        if (!expected.has(k)) return { path: `${path}/${token(k)}`, expected: undefined, actual: y };
      }
      return undefined;
    }
    default:
      return expected === actual ? undefined : { path, expected, actual };
  }
}

function describe(d) {
  const note = d.note ? ` (${d.note})` : '';
  return `${d.path || '/'}: expected ${show(d.expected)}, got ${show(d.actual)}${note}`;
}

// ---------------------------------------------------------------------------
// The component

/** Transpiles the component into DIR/jco and returns its `instantiate` and core modules. */
async function loadComponent(dir) {
  const bytes = await readFile(join(dir, 'sinew.component.wasm'));
  // `async` instantiation: we pass the imports ourselves (no WASI, no shims).
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
  return (world) => instantiate(getCoreModule, makeImports(world));
}

/** The payload of an error thrown by an export returning `result<_, error>`. */
function exportError(e) {
  const p = e && Object.prototype.hasOwnProperty.call(e, 'payload') ? e.payload : undefined;
  if (p && typeof p === 'object' && 'code' in p) return `${p.code}: ${p.message} (${p.pointer})`;
  return e instanceof Error ? e.stack ?? e.message : String(e);
}

/** A trace's request as the WIT `request` record (JSON as text). */
function witRequest(r) {
  const auth = r.get('auth');
  const key = r.get('idempotencyKey');
  return {
    tool: r.get('tool'),
    input: stringify(r.get('input')),
    auth:
      auth === null || auth === undefined
        ? undefined
        : {
            sub: auth.get('sub'),
            roles: auth.get('roles') ?? [],
            // As host/src/runtime/bindings.rs: null (or absent) claims are `{}`.
            claims:
              auth.get('claims') === null || auth.get('claims') === undefined
                ? '{}'
                : stringify(auth.get('claims')),
          },
    id: r.get('id'),
    idempotencyKey: key === null || key === undefined ? undefined : key,
  };
}

const asNumber = (v) => (v instanceof JsonNumber ? Number(v.value) : v);

/** Runs one trace; returns undefined on success or a message. */
async function runTrace(create, trace) {
  const storage = new MemoryStorage();
  for (const [entity, fields] of trace.get('unique') ?? new Map()) {
    for (const field of fields) storage.setUnique(entity, field);
  }
  for (const [entity, rows] of trace.get('seed') ?? new Map()) {
    for (const row of rows) {
      try {
        storage.seed(entity, row);
      } catch (e) {
        return `seed: ${e.message}`;
      }
    }
  }
  const clock = new FixedClock(asNumber(trace.get('clock')));
  const external = new ScriptedExternal(trace.get('externals') ?? new Map());
  const component = await create({ storage, clock, external });
  const { executor } = component;

  try {
    executor.load(trace.get('spec'));
  } catch (e) {
    return `load failed: ${exportError(e)}`;
  }

  const expected = trace.get('expected');
  const expectedResponses = expected.get('responses');
  const requests = trace.get('requests');
  if (requests.length !== expectedResponses.length) {
    return `the trace has ${requests.length} requests but ${expectedResponses.length} responses`;
  }
  for (const [i, item] of requests.entries()) {
    const request = item.get('request');
    clock.set(asNumber(item.get('at')));
    let r;
    try {
      r = executor.execute(witRequest(request));
    } catch (e) {
      return `request ${i + 1} (${request.get('tool')}) failed: ${exportError(e)}`;
    }
    const actual = new Map([
      ['status', JsonNumber.int(r.status)],
      ['body', parseOr(r.body, null)],
      ['audit', parseOr(r.audit, null)],
    ]);
    const d = firstDifference(expectedResponses[i], actual, `/responses/${i}`);
    if (d) return `request ${i + 1} (${request.get('tool')}): ${describe(d)}`;
    if (storage.openTransactions() !== 0) {
      return `request ${i + 1} (${request.get('tool')}) left ${storage.openTransactions()} transactions open`;
    }
  }

  // The committed state of every entity (the native trace lists each of the
  // spec's entities; an entity only we have rows of is a difference too).
  const expectedState = expected.get('state');
  const state = new Map();
  for (const entity of expectedState.keys()) state.set(entity, storage.rows(entity));
  for (const entity of storage.entities()) {
    if (!state.has(entity) && storage.rows(entity).length > 0) state.set(entity, storage.rows(entity));
  }
  const ds = firstDifference(expectedState, state, '/state');
  if (ds) return describe(ds);

  const da = firstDifference(expected.get('audit'), storage.auditEntries(), '/audit');
  if (da) return describe(da);
  return undefined;
}

// ---------------------------------------------------------------------------
// Main

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
    const trace = parse(await readFile(join(dir, 'traces', file), 'utf8'));
    const name = trace.get('name') ?? file.replace(/\.json$/, '');
    let problem;
    try {
      problem = await runTrace(create, trace);
    } catch (e) {
      problem = `crashed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
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

  // Risk reports: one instance (analyze needs no storage), byte for byte.
  const risks = await jsonFiles(join(dir, 'risk'));
  let identical = 0;
  if (risks.length > 0) {
    const { risk } = await create({
      storage: new MemoryStorage(),
      clock: new FixedClock(0),
      external: new ScriptedExternal(),
    });
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
      if (report === doc.report) {
        identical++;
        passed++;
      } else {
        let at = 0;
        while (at < report.length && report[at] === doc.report[at]) at++;
        console.log(
          `FAIL risk ${name}: reports differ at character ${at}: expected ` +
            `${JSON.stringify(doc.report.slice(at, at + 80))}, got ${JSON.stringify(report.slice(at, at + 80))}`,
        );
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
    console.error(e instanceof Error ? e.stack ?? e.message : String(e));
    process.exitCode = 2;
  },
);
