#!/usr/bin/env node
// End-to-end tests of the studio (the browser risk preview) in headless
// Chromium, driven by playwright-core.
//
//   node web/e2e/e2e.mjs URL OUTDIR
//
// URL is a running `sinew preview` (host/tests/studio.rs starts one);
// OUTDIR receives the screenshots. The browser is the machine's Chromium
// (/usr/bin/chromium, or $CHROMIUM): nothing is downloaded.
//
// Prints one line per check (`ok …` / `FAIL …`), the speed figures, and
// `N passed, M failed`; exits 1 on any failure.

import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [url, outDir] = process.argv.slice(2);
if (!url || !outDir) {
  console.error('usage: node web/e2e/e2e.mjs URL OUTDIR');
  process.exit(2);
}
const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
await mkdir(outDir, { recursive: true });

let passed = 0;
let failed = 0;
function check(name, cond, detail = '') {
  if (cond) {
    passed++;
    console.log(`ok ${name}`);
  } else {
    failed++;
    console.log(`FAIL ${name}${detail ? `: ${detail}` : ''}`);
  }
}

/** The 1-based line of the first occurrence of `needle` in `text` at or after `from`. */
function lineOf(text, needle, from = 0) {
  const at = text.indexOf(needle, from);
  if (at < 0) throw new Error(`\`${needle}\` is not in the text`);
  return text.slice(0, at).split('\n').length;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(String(e)));
page.on('console', (m) => {
  if (m.type() === 'error') pageErrors.push(m.text());
});
// The page must talk to nobody but its origin.
const foreign = [];
page.on('request', (r) => {
  if (!r.url().startsWith(url) && !r.url().startsWith('data:')) foreign.push(r.url());
});

// What the page transfers while it starts (every response until the network
// is idle after the first report): bytes of bodies and headers, per file.
const transfers = new Map();
let counting = true;
page.on('requestfinished', async (r) => {
  if (!counting) return;
  const sizes = await r.sizes().catch(() => undefined);
  if (sizes) transfers.set(r.url(), sizes.responseBodySize + sizes.responseHeadersSize);
});

const analyses = () => page.evaluate(() => window.sinewStudio.analyses);
/** Waits until the page has analyzed more than `n` times. */
const analyzedAfter = (n) =>
  page.waitForFunction((k) => window.sinewStudio.analyses > k, n, { timeout: 10_000 });
/**
 * Replaces the editor's text the way a user pastes: select all, then a
 * `paste` event carrying the text (what the browser sends for Ctrl+V; CDP's
 * `insertText` takes the IME path, which is not how specs arrive).
 */
async function paste(text) {
  const n = await analyses();
  await page.click('.cm-content');
  await page.keyboard.press('Control+A');
  await page.evaluate((t) => {
    const data = new DataTransfer();
    data.setData('text/plain', t);
    const event = new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true });
    document.querySelector('.cm-content').dispatchEvent(event);
  }, text);
  await analyzedAfter(n);
  const got = await editorText();
  if (got !== text) throw new Error(`the paste left ${got.length} characters, not ${text.length}`);
}
/** The editor's diagnostics: `{line, severity, code, text}`. */
const diagnostics = () =>
  page.evaluate(() => {
    const s = window.sinewStudio;
    const doc = s.view.state.doc;
    return s.items.map((i) => ({
      line: doc.lineAt(i.from).number,
      code: i.code,
      tool: i.tool,
      level: i.level,
      acknowledged: !!i.acknowledged,
      text: doc.sliceString(i.from, i.to),
    }));
  });
const editorText = () => page.evaluate(() => window.sinewStudio.view.state.doc.toString());
const badgeText = (sel) => page.textContent(sel).then((t) => t.trim());

const timings = {};
try {
  // -- 1. The page loads with the startup spec (shop) judged ---------------
  await page.goto(url);
  await page.waitForSelector('body[data-ready=true]', { timeout: 20_000 });
  const t = await page.evaluate(() => window.sinewStudio.timings);
  Object.assign(timings, t);
  await page.waitForLoadState('networkidle');
  counting = false;
  check('page loads and shows the startup spec Green', (await badgeText('#bundle-level')) === 'Green');
  check('startup spec is shop.json', (await badgeText('#spec-name')) === 'shop.json');

  // -- 2. Opening shop.json from disk -------------------------------------
  const shopPath = join(root, 'specs/examples/shop.json');
  const shop = await readFile(shopPath, 'utf8');
  let n = await analyses();
  await page.selectOption('#example', 'bank');
  await analyzedAfter(n);
  n = await analyses();
  await page.setInputFiles('#file', shopPath);
  await analyzedAfter(n);
  check('shop.json opened from a file is Green', (await badgeText('#bundle-level')) === 'Green');
  check('the editor holds the file', (await editorText()) === shop);
  const toolBadges = await page.$$eval('.tool', (els) => els.map((e) => [e.dataset.tool, e.querySelector('.badge').textContent]));
  check(
    'every tool has a badge with its word',
    toolBadges.length > 3 && toolBadges.every(([, w]) => ['Green', 'Yellow', 'Red'].includes(w)),
    JSON.stringify(toolBadges),
  );
  await page.screenshot({ path: join(outDir, 'studio-green.png') });

  // An acknowledged signal is shown as such and does not raise the level.
  n = await analyses();
  await page.selectOption('#example', 'booking');
  await analyzedAfter(n);
  const ack = await page.$('.tool[data-tool=confirm_hold] .finding.acknowledged[data-code=external-in-transition]');
  check(
    'an acknowledged signal is marked acknowledged, its tool Green',
    ack !== null &&
      /acknowledged/.test(await ack.$eval('.badge', (b) => b.textContent)) &&
      (await badgeText('.tool[data-tool=confirm_hold] header .badge')) === 'Green',
  );
  check('an acknowledged signal has no Apply button', ack !== null && (await ack.$('button.apply')) === null);

  // Dropping a file on the page opens it.
  const bank = await readFile(join(root, 'specs/examples/bank.json'), 'utf8');
  const dropped = await page.evaluateHandle((text) => {
    const data = new DataTransfer();
    data.items.add(new File([text], 'dropped.json', { type: 'application/json' }));
    return data;
  }, bank);
  await page.dispatchEvent('body', 'dragenter', { dataTransfer: dropped });
  check('dragging a file over the page offers to open it', await page.isVisible('#drop'));
  n = await analyses();
  await page.dispatchEvent('body', 'drop', { dataTransfer: dropped });
  await analyzedAfter(n);
  check(
    'a dropped file is opened and judged',
    (await badgeText('#spec-name')) === 'dropped.json' && (await editorText()) === bank && !(await page.isVisible('#drop')),
  );
  n = await analyses();
  await page.setInputFiles('#file', shopPath);
  await analyzedAfter(n);

  // -- 3. An unsafe spec: Red, with the findings where they belong ---------
  const unsafe = JSON.parse(shop);
  const po = unsafe.tools.place_order.flow.nodes;
  delete po.charge.retry; // missing-retry (Yellow, mechanical fix)
  delete po.charge.compensate; // the refund no longer undoes it: Red
  unsafe.tools.purge_orders = {
    trigger: { http: { method: 'POST', path: '/admin/purge' } },
    auth: { roles: ['staff'] },
    idempotencyKey: 'request.idempotencyKey',
    input: { type: 'object', properties: { order: { type: 'string', format: 'uuid' } }, required: ['order'] },
    output: { type: 'object' },
    flow: {
      entry: 'purge',
      nodes: {
        purge: { type: 'delete', entity: 'Order', id: 'input.order', next: 'done' },
        done: { type: 'return', value: {} },
      },
    },
  };
  const unsafeText = `${JSON.stringify(unsafe, null, 2)}\n`;
  await paste(unsafeText);
  check('a pasted unsafe spec is Red', (await badgeText('#bundle-level')) === 'Red');
  const purgeCard = await page.$('.tool[data-tool=purge_orders]');
  check('purge_orders is Red in the report', (await purgeCard?.$eval('.badge', (b) => b.textContent)) === 'Red');
  const diags = await diagnostics();
  const hard = diags.find((d) => d.code === 'hard-delete');
  const wantHard = lineOf(unsafeText, '"purge": {');
  check('hard-delete is marked on the `purge` node', hard?.line === wantHard && hard?.text === '"purge"', JSON.stringify(hard) + ` want line ${wantHard}`);
  const retry = diags.find((d) => d.code === 'missing-retry' && d.tool === 'place_order');
  const wantRetry = lineOf(unsafeText, '"charge": {', unsafeText.indexOf('"place_order"'));
  check('missing-retry is marked on place_order\'s `charge`', retry?.line === wantRetry, JSON.stringify(retry) + ` want line ${wantRetry}`);
  const underlines = await page.$$eval('.cm-lintRange-error', (els) => els.map((e) => e.textContent));
  check('the Red finding is underlined in the editor', underlines.some((t) => t.includes('purge')), JSON.stringify(underlines));
  const gutterMarks = await page.$$('.cm-lint-marker-error, .cm-lint-marker-warning');
  check('findings have gutter marks', gutterMarks.length > 0);
  // Hover shows the message.
  const range = await page.$('.cm-lintRange-error');
  await range.scrollIntoViewIfNeeded();
  await range.hover();
  const tip = await page.waitForSelector('.cm-tooltip-lint', { timeout: 5000 }).catch(() => null);
  const tipText = tip ? await tip.textContent() : '';
  check('hovering a finding shows its message', /delete/i.test(tipText), tipText);
  await page.mouse.move(0, 0);

  // -- 4. Applying a fix removes the signal and keeps the formatting -------
  const before = await editorText();
  n = await analyses();
  await page.click('.tool[data-tool=place_order] .finding[data-code=missing-retry] button.apply');
  await analyzedAfter(n);
  const after = await editorText();
  const still = (await diagnostics()).filter((d) => d.code === 'missing-retry' && d.tool === 'place_order');
  check('the applied fix removes missing-retry', still.length === 0, JSON.stringify(still));
  check('the report no longer lists it', (await page.$('.tool[data-tool=place_order] .finding[data-code=missing-retry]')) === null);
  const kept = (() => {
    const lines = after.split('\n');
    let i = 0;
    // A member added after the last one puts a comma on the line before.
    const same = (a, b) => a === b || a === `${b},`;
    for (const l of before.split('\n')) {
      while (i < lines.length && !same(lines[i], l)) i++;
      if (i === lines.length) return false;
      i++;
    }
    return true;
  })();
  check('the fix keeps every other line as it was', kept && after.includes('"retry"'));
  check('the spec is still Red (the hard delete is not mechanical)', (await badgeText('#bundle-level')) === 'Red');

  check('place_order is Red without its compensation', (await badgeText('.tool[data-tool=place_order] .badge')) === 'Red');

  // The flow pictures of the Red tools; place_order's is the README's.
  await page.click('#tab-flow');
  await page.selectOption('#flow-tool', 'purge_orders');
  const purgeNode = await page.$('#flow g.node[data-node=purge]');
  check('a Red node is drawn as Red', (await purgeNode?.getAttribute('data-level')) === 'red');
  check('the flow tab shows the tool\'s level', (await badgeText('#flow-level')) === 'Red');
  await page.selectOption('#flow-tool', 'place_order');
  const refundLevel = await page.getAttribute('#flow g.node[data-node=refund]', 'data-level');
  check('place_order\'s uncompensated payment is drawn Red', refundLevel === 'red', String(refundLevel));
  await page.click('#flow g.node[data-node=refund]');
  await page.screenshot({ path: join(outDir, 'studio-red.png') });

  // -- 5. The flow of place_order ----------------------------------------
  n = await analyses();
  await page.selectOption('#example', 'shop');
  await analyzedAfter(n);
  await page.click('#tab-flow');
  await page.selectOption('#flow-tool', 'place_order');
  const nodes = await page.$$eval('#flow g.node', (els) => els.map((e) => [e.dataset.node, e.dataset.kind, e.dataset.type]));
  const names = nodes.map(([id]) => id);
  for (const id of ['product', 'charge', 'write', 'take_stock', 'order', 'refund', 'sold_out', 'declined', 'done']) {
    check(`flow node \`${id}\` is drawn`, names.includes(id), names.join(','));
  }
  const kinds = Object.fromEntries(nodes.map(([id, kind]) => [id, kind]));
  check('nodes are typed', kinds.product === 'read' && kinds.charge === 'call' && kinds.take_stock === 'write' && kinds.done === 'end');
  const inside = await page.evaluate(() => {
    const box = document.querySelector('#flow g.tx[data-node=write] rect.box')?.getBBox();
    if (!box) return 'no transaction box';
    for (const id of ['take_stock', 'order']) {
      const b = document.querySelector(`#flow g.node[data-node=${id}] .shape`).getBBox();
      if (b.x < box.x || b.y < box.y || b.x + b.width > box.x + box.width || b.y + b.height > box.y + box.height) return `${id} is outside`;
    }
    return 'ok';
  });
  check('the transaction box holds its body', inside === 'ok', inside);
  check('onError edges are drawn distinctly', (await page.$('#flow path.edge.onError[data-from=charge][data-to=declined]')) !== null);
  check('compensate edges are drawn distinctly', (await page.$('#flow path.edge.compensate[data-from=charge][data-to=refund]')) !== null);
  await page.click('#flow g.node[data-node=charge]');
  const selLine = await page.evaluate(() => {
    const v = window.sinewStudio.view;
    return v.state.doc.lineAt(v.state.selection.main.from).number;
  });
  const shopText = await editorText();
  const wantCharge = lineOf(shopText, '"charge": {', shopText.indexOf('"place_order"'));
  check('clicking a node jumps to it in the editor', selLine === wantCharge, `line ${selLine}, want ${wantCharge}`);
  await page.screenshot({ path: join(outDir, 'studio-flow.png') });

  // -- 6. Simulate place_order --------------------------------------------
  await page.click('#tab-simulate');
  await page.selectOption('#sim-tool', 'place_order');
  await page.fill('#sim-key', 'e2e-1');
  await page.click('#sim-run');
  await page.waitForSelector('#sim-result .result, #sim-result .problem', { timeout: 10_000 });
  const status = await page.$eval('#sim-result .result', (e) => Number(e.dataset.status)).catch(() => 0);
  const body = JSON.parse((await page.textContent('#sim-result .sim-body').catch(() => 'null')) || 'null');
  check('simulated place_order succeeds', status >= 200 && status < 300, `status ${status}: ${await page.textContent('#sim-result')}`);
  check('its response carries the new order', typeof body?.order === 'string' && body?.status === 'pending', JSON.stringify(body));
  const audit = JSON.parse(await page.textContent('#sim-result .sim-audit'));
  check('an audit entry is chained', audit.outcome === 'ok' && audit.seq === 1 && /^[0-9a-f]{64}$/.test(audit.hash) && audit.tool === 'place_order', JSON.stringify(audit).slice(0, 300));
  const rows = await page.textContent('#sim-result .sim-rows');
  check('the rows written are shown', /create Order/.test(rows) && /update Product/.test(rows) && /"stock": 8/.test(rows), rows.slice(0, 300));
  await page.screenshot({ path: join(outDir, 'studio-simulate.png') });
  // The same key again: the stored response, no second order.
  await page.click('#sim-run');
  await page.waitForFunction(() => JSON.parse(document.querySelector('#sim-result .sim-audit')?.textContent || '{}').seq === 2);
  const replay = JSON.parse(await page.textContent('#sim-result .sim-body'));
  check('a repeated idempotency key replays the response', replay.order === body?.order, JSON.stringify(replay));

  // -- 7. Broken JSON: an error at the right line, no crash ----------------
  await page.click('#tab-report');
  const broken = shopText.replace('"quantity": {', '"quantity": {,');
  await paste(broken);
  check('broken JSON is Invalid', (await badgeText('#bundle-level')) === 'Invalid');
  const syntax = (await diagnostics()).find((d) => d.code === 'json-syntax');
  const wantSyntax = lineOf(broken, '"quantity": {,');
  check('the syntax error is at its line', syntax?.line === wantSyntax, `${JSON.stringify(syntax)} want ${wantSyntax}`);
  check('the report shows the error', (await page.$('.error-item[data-code=json-syntax]')) !== null);
  await page.screenshot({ path: join(outDir, 'studio-broken.png') });
  n = await analyses();
  await page.keyboard.press('Control+Z');
  await analyzedAfter(n);
  check('undo brings the spec back, Green', (await badgeText('#bundle-level')) === 'Green');

  // -- 8. Keyboard and a narrow window -------------------------------------
  await page.focus('#tab-report');
  await page.keyboard.press('ArrowRight');
  check('arrow keys move between tabs', await page.evaluate(() => document.activeElement.id === 'tab-flow' && !document.getElementById('panel-flow').hidden));
  await page.focus('#flow g.node[data-node=done]');
  await page.keyboard.press('Enter');
  const doneLine = await page.evaluate(() => {
    const v = window.sinewStudio.view;
    return v.state.doc.lineAt(v.state.selection.main.from).number;
  });
  check('a flow node can be activated from the keyboard', doneLine === lineOf(shopText, '"done": {', shopText.indexOf('"place_order"')));
  await page.setViewportSize({ width: 420, height: 860 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check('a narrow window does not scroll sideways', overflow <= 0, `${overflow}px too wide`);
  check('the level badge stays visible when narrow', await page.isVisible('#bundle-level'));
  await page.screenshot({ path: join(outDir, 'studio-narrow.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });

  // -- 9. Speed -----------------------------------------------------------
  const specs = {};
  for (const name of ['shop', 'bank', 'booking', 'clinic']) {
    specs[name] = await readFile(join(root, `specs/examples/${name}.json`), 'utf8');
  }
  specs['500 nodes'] = bigSpec(500);
  const speed = {};
  for (const [name, text] of Object.entries(specs)) {
    speed[name] = await page.evaluate((t) => window.sinewStudio.measure(t, 21), text);
  }
  // The big spec is itself a valid spec: check it is judged, not rejected.
  await paste(specs['500 nodes']);
  check('the 500-node spec is judged', ['Green', 'Yellow', 'Red'].includes(await badgeText('#bundle-level')), await badgeText('#bundle-level'));
  timings.speed = speed;

  // -- 10. The clinic (format 0.2): a page whose rows embed related rows, owned
  // through a reference, computed by the Rust store in the page.
  n = await analyses();
  await page.selectOption('#example', 'clinic');
  await analyzedAfter(n);
  check('clinic.json is Green', (await badgeText('#bundle-level')) === 'Green');
  await page.click('#tab-simulate');
  await page.selectOption('#sim-tool', 'list_appointments');
  await page.click('#sim-run');
  await page.waitForSelector('#sim-result .result, #sim-result .problem', { timeout: 10_000 });
  const page1 = JSON.parse((await page.textContent('#sim-result .sim-body').catch(() => 'null')) || 'null');
  const appts = page1?.appointments ?? [];
  check(
    'the simulated list embeds therapists and invoices, the caller\'s rows only',
    page1?.total === 3 && appts.length === 3 &&
      appts[0]?.therapist_row?.name === 'Dr Bell' && appts[1]?.invoices?.length === 1 &&
      appts[2]?.therapist_row === null && appts.every((a) => a.patient !== '00000000-0000-4000-8000-000000000012'),
    JSON.stringify(page1).slice(0, 400),
  );

  check('no foreign requests', foreign.length === 0, foreign.join(', '));
  check('no errors in the page', pageErrors.length === 0, pageErrors.join(' | '));
} catch (e) {
  failed++;
  console.log(`FAIL the run stopped: ${e.stack ?? e}`);
  await page.screenshot({ path: join(outDir, 'failure.png') }).catch(() => {});
} finally {
  await browser.close();
}

const f = (x) => (typeof x === 'number' ? `${x.toFixed(2)} ms` : 'n/a');
console.log('');
console.log('speed (headless Chromium, this machine):');
console.log(`  component load and first report: ${f(timings.firstReport)} from navigation start (target < 300 ms)`);
console.log(`    component compiled at ${f(timings.compiled)}, instantiated at ${f(timings.instantiated)}; first script to first report ${f(timings.load)}`);
{
  const kb = (b) => `${(b / 1024).toFixed(0)} KiB`;
  let total = 0;
  let component = 0;
  for (const [u, b] of transfers) {
    total += b;
    if (new URL(u).pathname.includes('/component/')) component += b;
  }
  console.log(`  transferred at start: ${kb(total)} in ${transfers.size} responses (the component: ${kb(component)})`);
}
for (const [name, ms] of Object.entries(timings.speed ?? {})) {
  const target = name === '500 nodes' ? 16 : 5;
  console.log(`  re-analysis of ${name}: ${f(ms)} median of 21 (target < ${target} ms)`);
}
console.log(`screenshots in ${outDir}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

/** A valid spec whose tools have `n` flow nodes in all (reads, lets, transactions, creates). */
function bigSpec(n) {
  const spec = {
    sinew: '0.1',
    name: 'big',
    roles: ['clerk'],
    entities: {
      Item: { fields: { label: { type: 'string', maxLength: 100 }, qty: { type: 'integer' } } },
    },
    tools: {},
  };
  const perTool = 25;
  const tools = Math.ceil(n / perTool);
  let made = 0;
  for (let t = 0; t < tools && made < n; t++) {
    const nodes = {};
    const count = Math.min(perTool, n - made);
    // read → let … → transaction(create) → return
    for (let i = 0; i < count; i++) {
      const id = `n${i}`;
      const next = i + 1 < count ? `n${i + 1}` : undefined;
      if (i === count - 1) nodes[id] = { type: 'return', value: { ok: 'true' } };
      else if (i === 0) nodes[id] = { type: 'read', entity: 'Item', where: { label: 'input.label' }, limit: 10, next };
      else if (i === count - 2) {
        nodes[id] = {
          type: 'transaction',
          body: { entry: 'add', nodes: { add: { type: 'create', entity: 'Item', values: { label: 'input.label', qty: '1' } } } },
          next,
        };
      } else nodes[id] = { type: 'let', values: { [`v${i}`]: `${i} + 1` }, next };
    }
    made += count;
    spec.tools[`tool_${t}`] = {
      trigger: { http: { method: 'POST', path: `/t${t}` } },
      auth: { roles: ['clerk'] },
      idempotencyKey: 'request.idempotencyKey',
      input: { type: 'object', properties: { label: { type: 'string' } }, required: ['label'] },
      output: { type: 'object' },
      flow: { entry: 'n0', nodes },
    };
  }
  return `${JSON.stringify(spec, null, 2)}\n`;
}
