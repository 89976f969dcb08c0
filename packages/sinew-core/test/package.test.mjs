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

test('reports have the shape index.d.ts gives them', () => {
  // A JSON syntax error: `at`, line and column 1-based (the `}` is the
  // 8th character of line 3); `help` always, `span` not.
  const [syntax] = core.analyze('{\n  "sinew": "0.1",\n  "x": }').errors;
  assert.deepEqual(syntax.at, { line: 3, column: 8 });
  assert.equal(typeof syntax.help, 'string');
  assert.equal(syntax.span, undefined);
  // An error in an expression: `span`, bytes within the expression; the
  // tool's level is `invalid`.
  const spec = JSON.parse(shop.spec);
  const args = spec.tools.place_order.flow.nodes.charge.args;
  args.amount_cents = 'product.price_cents * * input.quantity';
  const report = core.analyze(spec);
  const [expr] = report.errors;
  assert.equal(expr.code, 'expr-syntax');
  assert.equal(expr.tool, 'place_order');
  assert.deepEqual(expr.span, [22, 23]);
  assert.equal(args.amount_cents.slice(...expr.span), '*');
  assert.equal(report.tools.place_order.level, 'invalid');
  // Every finding has a fix in words (`fix.summary`), a patch only when mechanical.
  for (const { report: r } of risks) {
    for (const tool of Object.values(JSON.parse(r).tools)) {
      for (const f of tool.findings) assert.equal(typeof f.fix.summary, 'string', `${f.tool} ${f.code}`);
    }
  }
});

test('the README example runs on the shop spec', async () => {
  // The first `js` block of the installed README, with `specText` the shop
  // spec, run as a module of its own; its console.log calls are kept quiet.
  const { readFile, writeFile } = await import('node:fs/promises');
  const readme = await readFile(new URL('./node_modules/sinew-core/README.md', import.meta.url), 'utf8');
  const example = readme.match(/```js\n([\s\S]*?)```/)[1];
  const file = new URL('./readme-example.mjs', import.meta.url);
  await writeFile(
    file,
    `const specText = ${JSON.stringify(shop.spec)};\n${example}\n` +
      'export { report, fixed, applied, findings, patched, places, world, status, body, audit, copy };\n',
  );
  const log = console.log;
  console.log = () => {};
  let ran;
  try {
    ran = await import(file.href);
  } finally {
    console.log = log;
  }
  assert.equal(ran.report.level, 'green');
  assert.equal(ran.fixed, shop.spec);
  assert.deepEqual(ran.applied, []);
  assert.equal(ran.places.length, ran.findings.length);
  assert.equal(ran.status, 200, JSON.stringify(ran.body));
  assert.equal(ran.body.status, 'pending');
  assert.match(ran.audit.hash, /^[0-9a-f]{64}$/);
  assert.equal(ran.copy.stateText(), ran.world.stateText());
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
  // Only times sinew can write (RFC 3339, years 1 to 9999 UTC): a time out
  // of them is a TypeError too, and the clock stays as it was.
  const outside = [2 ** 63, 1e20, -1e15, Date.parse('+010000-01-01T00:00:00Z'), Date.parse('0000-12-31T23:59:59.999Z')];
  for (const bad of outside) {
    assert.throws(() => (world.now = bad), TypeError, String(bad));
    assert.throws(() => (world.now = new Date(bad)), TypeError, String(bad));
  }
  assert.equal(world.now, 1767225600000);
  for (const [edge, written] of [
    [Date.parse('0001-01-01T00:00:00Z'), '0001-01-01T00:00:00Z'],
    [Date.parse('9999-12-31T23:59:59.999Z'), '9999-12-31T23:59:59.999Z'],
  ]) {
    const w = await core.simulate({ now: edge });
    w.load(shop.spec);
    const listed = w.execute({ tool: 'list_products', input: {}, auth: { sub: 'ann', roles: ['customer'] } });
    assert.equal(listed.audit.time, written);
  }
  // A clock function returning such a time fails the call that reads it.
  const late = await core.simulate();
  late.load(shop.spec);
  late.now = () => 2 ** 63;
  assert.throws(() => late.execute({ tool: 'list_products', input: {} }), TypeError);
  assert.ok(late.failed);
});

test('state() and reset() round trip exactly, integers beyond 2^53 too', async () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  const world = await core.simulate({ now });
  world.load(shop.spec);
  const id = '00000000-0000-4000-8000-000000000021';
  // Seeded as text, so the number is exact; an order audits the row.
  world.seed(`{"Product": [{"id": "${id}", "sku": "big", "name": "Big", "price_cents": 1, "stock": 9007199254740993}]}`);
  const order = world.execute({
    tool: 'place_order',
    input: { product: id, quantity: 1 },
    auth: { sub: 'ann', roles: ['customer'] },
    idempotencyKey: 'big-1',
  });
  assert.equal(order.status, 200, JSON.stringify(order.body));
  const exact = world.stateText();
  assert.equal(exact, world.raw.memory.state());
  assert.match(exact, /"stock":9007199254740992/);
  assert.match(exact, /"stock":9007199254740993/);
  // Parsed, the integers are rounded (JSON.parse)...
  assert.equal(world.rows('Product')[0].stock, 9007199254740992);
  // ...but reset(state()) of the object unchanged is exact, as is reset(stateText()).
  for (const saved of [world.state(), world.stateText()]) {
    const copy = await core.simulate({ now });
    copy.load(shop.spec);
    copy.reset(saved);
    assert.equal(copy.stateText(), exact);
  }
  // A state object changed is stringified: what JSON.parse rounded stays rounded.
  const changed = world.state();
  changed.rows.Product[0].name = 'Bigger';
  const copy = await core.simulate({ now });
  copy.load(shop.spec);
  copy.reset(changed);
  assert.doesNotMatch(copy.stateText(), /9007199254740993/);
  assert.match(copy.stateText(), /"name":"Bigger"/);
});

test('a world that failed inside a call refuses every later call', async () => {
  const world = await core.simulate({ now: Date.parse('2026-01-01T00:00:00Z') });
  world.load(shop.spec);
  const id = '00000000-0000-4000-8000-000000000031';
  world.seed({ Product: [{ id, sku: 'pen', name: 'Pen', price_cents: 150, stock: 4 }] });
  const order = (key) => ({
    tool: 'place_order',
    input: { product: id, quantity: 1 },
    auth: { sub: 'ann', roles: ['customer'] },
    idempotencyKey: key,
  });
  // An argument of the wrong type is refused before the call: no harm done.
  assert.throws(() => world.execute({ tool: 5 }), TypeError);
  assert.equal(world.failed, false);
  // The clock throws half-way through the order, its transaction open
  // and the product's row locked.
  let readings = 0;
  const boom = new Error('the clock broke');
  world.now = () => {
    readings += 1;
    if (readings === 6) throw boom;
    return Date.parse('2026-01-01T00:00:01Z');
  };
  assert.throws(() => world.execute(order('k1')), (e) => e === boom);
  assert.equal(world.raw.memory.openTransactions(), 1);
  assert.equal(world.failed, true);
  // From then on, every call is a typed error naming the first failure.
  world.now = Date.parse('2026-01-01T00:00:02Z');
  const failed = (e) => e instanceof SinewError && e.code === 'failed' && e.cause === boom && /core\.simulate/.test(e.message);
  assert.throws(() => world.execute(order('k2')), failed);
  assert.throws(() => world.rows('Product'), failed);
  assert.throws(() => world.state(), failed);
  assert.throws(() => world.stateText(), failed);
  assert.throws(() => world.audit(), failed);
  assert.throws(() => world.seed({ Product: [] }), failed);
  assert.throws(() => world.load(shop.spec), failed);
  assert.throws(() => world.reset('{}'), failed);
  // So does a clock that answers NaN mid-call.
  const other = await core.simulate({ now: Date.parse('2026-01-01T00:00:00Z') });
  other.load(shop.spec);
  other.now = () => Number.NaN;
  assert.throws(() => other.execute({ tool: 'list_products', input: {} }), TypeError);
  assert.throws(() => other.execute({ tool: 'list_products', input: {} }), (e) => e.code === 'failed' && e.cause instanceof TypeError);
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
