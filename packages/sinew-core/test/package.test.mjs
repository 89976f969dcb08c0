// The npm package `sinew-core` as a user gets it: installed from its
// tarball into a fresh directory, imported by its name, run by Node's
// built-in test runner.
//
//   SINEW_CONFORMANCE=DIR node --test package.test.mjs
//
// DIR is the conformance corpus (`sinew_tests::conformance::write`):
// traces/*.json (scenarios as the native engine ran them) and risk/*.json
// (specs with the native risk report). tests/npm.rs packs the package,
// installs it offline and runs this file.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createRequire } from 'node:module';

import { load, version, SinewError, Core, World } from 'sinew-core';

const dir = process.env.SINEW_CONFORMANCE;
assert.ok(dir, 'set SINEW_CONFORMANCE to the conformance corpus');

async function docs(sub) {
  const names = (await readdir(join(dir, sub))).filter((f) => f.endsWith('.json')).sort();
  return Promise.all(names.map(async (f) => JSON.parse(await readFile(join(dir, sub, f), 'utf8'))));
}

// Timed before anything else has run: a user's first calls.
let started = performance.now();
const core = await load();
const loadMs = performance.now() - started;
started = performance.now();
await core.simulate();
const firstSimulateMs = performance.now() - started;
const risks = await docs('risk');
const traces = await docs('traces');
const shop = risks.find((d) => JSON.parse(d.spec).name === 'shop');

test('the package is installed under its name, with its version and types', () => {
  const require = createRequire(import.meta.url);
  const manifest = require('sinew-core/package.json');
  assert.equal(manifest.name, 'sinew-core');
  assert.equal(manifest.version, version);
  assert.equal(manifest.types, './index.d.ts');
  assert.ok(core instanceof Core);
});

test('analyze gives the native risk report of every example spec, byte for byte', () => {
  assert.ok(risks.length >= 20, `${risks.length} specs`);
  for (const { spec, report } of risks) {
    assert.equal(core.analyzeText(spec), report);
    assert.deepEqual(core.analyze(spec), JSON.parse(report));
    // A spec may be given as an object too.
    assert.deepEqual(core.analyze(JSON.parse(spec)).level, JSON.parse(report).level);
  }
  const broken = core.analyze('{"sinew": "0.1",');
  assert.equal(broken.level, 'invalid');
  assert.equal(broken.errors[0].code, 'json-syntax');
});

test('fix, applyPatch and locate work on a spec with Red findings', () => {
  const red = risks.find((d) => {
    const r = JSON.parse(d.report);
    return Object.values(r.tools).some((t) => t.findings.some((f) => f.level === 'red' && f.fix));
  });
  assert.ok(red, 'a spec with a fixable Red finding');
  const report = core.analyze(red.spec);
  const finding = Object.values(report.tools)
    .flatMap((t) => t.findings)
    .find((f) => f.level === 'red' && f.fix);

  // One fix, by its patch: the finding is gone, the rest of the text kept.
  const patched = core.applyPatch(red.spec, finding.fix.patch);
  assert.notEqual(patched, red.spec);
  const after = core.analyze(patched);
  const same = (f) => f.code === finding.code && f.path === finding.path;
  assert.ok(!Object.values(after.tools).some((t) => t.findings.some(same)));

  // Every mechanical fix at once.
  const fixed = core.fix(red.spec);
  assert.ok(fixed.applied.length >= 1);
  assert.ok(fixed.applied.some((a) => a.code === finding.code && a.tool === finding.tool));
  assert.deepEqual(fixed.report, core.analyze(fixed.spec));

  // Where the finding is: UTF-8 byte offsets of the member's key.
  const [place] = core.locate(red.spec, [finding.path]);
  const bytes = Buffer.from(red.spec, 'utf8');
  const key = finding.path.split('/').pop();
  assert.equal(place.exact, true);
  assert.equal(bytes.subarray(place.markStart, place.markEnd).toString(), JSON.stringify(key));
  assert.ok(place.valueStart >= place.markEnd && place.valueEnd > place.valueStart);

  // A patch that does not apply is a SinewError, and changes nothing.
  assert.throws(
    () => core.applyPatch(red.spec, [{ op: 'remove', path: '/no/such/member' }]),
    (e) => e instanceof SinewError && e.code === 'patch' && /no/.test(e.message),
  );
  assert.throws(() => core.applyPatch('{', []), (e) => e instanceof SinewError && e.code === 'patch');
});

test('every scenario of the corpus runs in a simulated world as natively', async () => {
  assert.ok(traces.length >= 100, `${traces.length} scenarios`);
  for (const trace of traces) {
    const world = await core.simulate({ now: trace.clock, externals: JSON.parse(trace.state).externals });
    assert.ok(world instanceof World);
    world.load(trace.spec);
    // The trace's seed rows are complete already (the native engine
    // completed them): they go in as they are, through the raw export.
    for (const { entity, row } of trace.seed) world.raw.memory.seed(entity, row);
    trace.requests.forEach((r, i) => {
      world.now = r.at;
      const got = world.execute({
        tool: r.tool,
        input: r.input,
        auth: r.auth ?? undefined,
        id: r.id,
        idempotencyKey: r.idempotencyKey ?? undefined,
        scheduled: r.scheduled ?? undefined,
      });
      const want = trace.expected.responses[i];
      const here = `${trace.name}, request ${i + 1} (${r.tool})`;
      assert.equal(got.status, want.status, here);
      assert.deepEqual(got.body, JSON.parse(want.body), here);
      // The audit entry as chained: the native one, plus `seq`, `prev`, `hash`.
      const entry = JSON.parse(want.audit);
      for (const [k, v] of Object.entries(entry)) assert.deepEqual(got.audit[k], v, `${here}: audit ${k}`);
      assert.match(got.audit.hash, /^[0-9a-f]{64}$/, here);
    });
    assert.deepEqual(world.state(), JSON.parse(trace.expected.state), trace.name);
    assert.equal(world.raw.memory.state(), trace.expected.state, `${trace.name}: the state's text`);
  }
});

test('seed completes rows as the spec defines them; the clock is the world’s', async () => {
  const now = Date.parse('2026-03-01T09:30:00Z');
  const world = await core.simulate({ now });
  const info = world.load(shop.spec);
  assert.equal(info.name, 'shop');
  assert.match(info.hash, /^sha256:[0-9a-f]{64}$/);
  assert.ok(info.tools.some((t) => t.name === 'place_order' && typeof t.timeoutMs === 'number'));
  const id = '00000000-0000-4000-8000-000000000001';
  const n = world.seed({ Product: [{ id, sku: 'pen', name: 'Pen', price_cents: 150, stock: 4 }] });
  assert.equal(n, 1);
  const [row] = world.rows('Product');
  assert.equal(row.version, 1);
  assert.equal(row.created_at, '2026-03-01T09:30:00Z');
  assert.equal(row.deleted_at, null);
  assert.equal(world.now, now);

  const listed = world.execute({ tool: 'list_products', input: {}, auth: { sub: 'ann', roles: ['customer'] } });
  assert.equal(listed.status, 200);
  assert.deepEqual(
    listed.body.products.map((p) => [p.sku, p.stock]),
    [['pen', 4]],
  );
  assert.equal(listed.audit.seq, 1);
  assert.equal(world.audit().length, 1);

  // External answers are scripted as an object or its text, alike.
  const script = { 'payments.charge': [{ ok: { id: 'ch_1' } }, { failed: 'timeout' }] };
  const scripted = await core.simulate({ externals: script });
  assert.deepEqual((await core.simulate({ externals: JSON.stringify(script) })).state(), scripted.state());
  assert.notDeepEqual(scripted.state(), (await core.simulate()).state());
  await assert.rejects(core.simulate({ externals: { 'payments.charge': 'yes' } }), (e) => e instanceof SinewError && e.code === 'world');

  // A second world starts empty: worlds share nothing.
  const other = await core.simulate({ now });
  other.load(shop.spec);
  assert.deepEqual(other.rows('Product'), []);

  // reset keeps the spec's declarations: a seeded unique value is still unique.
  const state = world.state();
  world.reset(state);
  assert.deepEqual(world.state(), state);
  assert.throws(
    () => world.seed({ Product: [{ id: '00000000-0000-4000-8000-000000000002', sku: 'pen', name: 'Pen 2', price_cents: 1, stock: 1 }] }),
    (e) => e instanceof SinewError && /Product\[0\]/.test(e.message),
  );
});

test('load takes the component directory as a URL or, in Node, a path', async () => {
  const { fileURLToPath } = await import('node:url');
  const { relative } = await import('node:path');
  const dir = fileURLToPath(new URL('./node_modules/sinew-core/component/', import.meta.url));
  for (const base of [dir, dir.replace(/\/$/, ''), relative(process.cwd(), dir), new URL(`file://${dir}`)]) {
    const other = await load({ base });
    assert.equal(other.analyze(shop.spec).level, 'green', String(base));
  }
  await assert.rejects(load({ base: '/no/such/dir/' }), /ENOENT|no such file/);
  // Only load() and simulate() make them.
  assert.throws(() => new Core(), TypeError);
  assert.throws(() => new World(), TypeError);
});

test('the clock takes milliseconds, a Date or a function of either', async () => {
  const world = await core.simulate({ now: new Date('2026-05-01T12:00:00Z') });
  assert.equal(world.now, Date.parse('2026-05-01T12:00:00Z'));
  world.now = () => 1767225600000.75; // a fraction is dropped
  assert.equal(world.now, 1767225600000);
  world.load(shop.spec);
  world.seed({ Product: [{ id: '00000000-0000-4000-8000-000000000009', sku: 'x', name: 'X', price_cents: 1, stock: 1 }] });
  assert.equal(world.rows('Product')[0].created_at, '2026-01-01T00:00:00Z');
  for (const bad of [null, 'soon', Number.NaN, Infinity]) assert.throws(() => (world.now = bad), TypeError);
});

test('what cannot run is a typed SinewError', async () => {
  const world = await core.simulate();
  assert.throws(
    () => world.execute({ tool: 'list_products', input: {} }),
    (e) => e instanceof SinewError && e.code === 'not-loaded',
  );
  assert.throws(
    () => world.load('{"sinew": "0.1", "name": "x"}'),
    (e) => e instanceof SinewError && e.code === 'spec-errors',
  );
  world.load(shop.spec);
  assert.throws(
    () => world.seed({ Product: [{ sku: 'no-id' }] }),
    (e) => e instanceof SinewError && e.code === 'seed' && /Product\[0\]/.test(e.message),
  );
  assert.throws(() => world.seed('[1, 2]'), (e) => e instanceof SinewError);
  // Not all or nothing: the rows before the refused one stay, and say so.
  const pen = (n) => ({ id: `00000000-0000-4000-8000-00000000010${n}`, sku: `s${n}`, name: 'P', price_cents: 1, stock: 1 });
  assert.throws(
    () => world.seed({ Product: [pen(1), pen(2), { sku: 'no-id' }] }),
    (e) => e instanceof SinewError && e.code === 'seed' && e.inserted === 2 && /Product\[2\]/.test(e.message),
  );
  assert.equal(world.rows('Product').length, 2);
  // An input given as text must be JSON.
  assert.throws(
    () => world.execute({ tool: 'list_products', input: 'hello', auth: { sub: 'ann', roles: ['customer'] } }),
    (e) => e instanceof SinewError && e.code === 'invalid-json',
  );
  // A refused call is a response (RFC 9457 problem, audited), not an exception.
  const refused = world.execute({ tool: 'create_product', input: { sku: 'x' }, auth: { sub: 'ann', roles: ['customer'] } });
  assert.equal(refused.status, 403);
  assert.equal(refused.body.code, 'forbidden');
  assert.equal(refused.audit.outcome, 'rejected');
});

// Not a test: the figures, measured after the tests (a user's later
// calls), printed for tests/npm.rs's report and the README.
after(async () => {
  const a = performance.now();
  await core.simulate();
  const simulateMs = performance.now() - a;
  const b = performance.now();
  core.analyze(shop.spec);
  const analyzeMs = performance.now() - b;
  console.log(
    `timings: load ${loadMs.toFixed(1)} ms, first simulate ${firstSimulateMs.toFixed(1)} ms, ` +
      `later simulate ${simulateMs.toFixed(1)} ms, analyze(shop) ${analyzeMs.toFixed(1)} ms`,
  );
});
