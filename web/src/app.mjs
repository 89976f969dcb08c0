// sinew studio: the page. It loads the core component, opens the startup
// spec in a CodeMirror editor and, on every edit (debounced), asks the
// component's risk engine for the report: underlines and gutter marks in
// the editor, the report panel, the flow picture. Everything runs here;
// nothing is sent anywhere.

// CodeMirror (the largest script) loads while the component compiles; the
// first report is shown before the editor is ready.
const codemirror = import('../vendor/codemirror.js');
import { load } from '../sinew-core/index.js';
import { byteOffsets, lineColumnOffset } from './text.mjs';
import { levelWord, renderReport, reportItems } from './report.mjs';
import { nodeLevels, renderFlow } from './flow.mjs';
import { Simulator, draftInput, pretty } from './simulate.mjs';
import { PRESETS } from './presets.mjs';

const booted = globalThis.sinewBoot?.started ?? performance.now();
const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 120;

/** What the page exposes for tests and the curious (`window.sinewStudio`). */
const studio = {
  /** Analyses done so far. */
  analyses: 0,
  /** The last report (parsed) and its items. */
  report: null,
  items: [],
  /** Milliseconds: `firstReport` (navigation start to the first report
   *  shown), `load` (the first script's start to it), `compiled` and
   *  `instantiated` (navigation start to the component compiled, and
   *  instantiated), `analysis` (the last analysis). */
  timings: {},
  /** The name of the spec in the editor. */
  name: '',
  /** Errors the page caught (shown to the user too). */
  errors: [],
};
window.sinewStudio = studio;

let core;
let view;
/** CodeMirror's exports, once loaded. */
let cm;
/** The spec's text until the editor holds it. */
let startupText = '';
/** The last analysis' editor diagnostics. */
let lastDiagnostics = [];
let simulator;
let exampleName = null;
let selectedTool = null;
let timer = null;

// ---------------------------------------------------------------------------
// Analysis

/** The spec's text: the editor's, or the startup spec's before it exists. */
function specText() {
  return view ? view.state.doc.toString() : startupText;
}

/**
 * Judges `text`: the report, its items with their places, and the editor
 * diagnostics. Pure: touches neither the editor nor the page.
 */
function analyze(text) {
  const report = core.analyze(text);
  const items = reportItems(report);
  const places = core.locate(text, items.map((i) => i.path ?? ''));
  const toIndex = byteOffsets(text);
  const diagnostics = [];
  items.forEach((item, k) => {
    const place = places[k];
    let from;
    let to;
    if (item.at) {
      from = lineColumnOffset(text, item.at.line, item.at.column);
      to = Math.min(text.length, from + 1);
    } else if (item.span && text[toIndex(place.valueStart)] === '"') {
      from = toIndex(place.valueStart + 1 + item.span[0]);
      to = Math.min(toIndex(place.valueStart + 1 + item.span[1]), toIndex(place.valueEnd));
    } else {
      from = toIndex(place.markStart);
      to = toIndex(place.markEnd);
    }
    if (to <= from) to = Math.min(text.length, from + 1);
    item.from = from;
    item.to = to;
    const severity =
      item.kind === 'error' || (item.level === 'red' && !item.acknowledged)
        ? 'error'
        : item.acknowledged
          ? 'info'
          : 'warning';
    const lines = [`${item.tool ? `${item.tool}: ` : ''}${item.message}`];
    if (item.help) lines.push(item.help);
    if (item.fix?.summary) lines.push(`Fix: ${item.fix.summary}`);
    if (item.acknowledged) lines.push('Acknowledged in the spec.');
    const d = { from, to, severity, source: item.code, message: lines.join('\n') };
    if (item.fix?.patch && !item.acknowledged) {
      d.actions = [{ name: 'Apply fix', apply: () => applyFix(item) }];
    }
    diagnostics.push(d);
  });
  return { report, items, diagnostics };
}

/** Re-analyzes the editor's text and redraws what depends on it. */
function refresh() {
  clearTimeout(timer);
  timer = null;
  const text = specText();
  const t0 = performance.now();
  let result;
  try {
    result = analyze(text);
  } catch (e) {
    fail(`the risk engine failed: ${e.message ?? e}`);
    return;
  }
  const ms = performance.now() - t0;
  lastDiagnostics = result.diagnostics;
  if (view) view.dispatch(cm.setDiagnostics(view.state, result.diagnostics));
  studio.report = result.report;
  studio.items = result.items;
  studio.analyses += 1;
  studio.timings.analysis = ms;
  render(text);
  $('timing').textContent = `analyzed in ${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  document.body.dataset.analyses = String(studio.analyses);
}

function schedule() {
  if (!core) return; // the first analysis runs once the component is ready
  clearTimeout(timer);
  timer = setTimeout(refresh, DEBOUNCE_MS);
}

function fail(message) {
  studio.errors.push(message);
  $('timing').textContent = message;
  console.error(message);
}

// ---------------------------------------------------------------------------
// Drawing

/** The spec as a value, if the text is JSON (for the flow and simulate). */
function specValue(text) {
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? v : null;
  } catch {
    return null;
  }
}

function render(text) {
  const report = studio.report;
  const top = $('bundle-level');
  top.dataset.level = report.level;
  top.textContent = levelWord(report.level);
  top.title = `The spec is ${levelWord(report.level)}`;
  renderReport($('report'), report, studio.items, {
    onJump: (item) => item && jump(item.from, item.to),
    onApply: (item) => applyFix(item),
    onTool: (name) => {
      selectTool(name);
      selectTab('flow');
    },
  });
  const spec = specValue(text);
  if (!spec) {
    // Not JSON for now (mid-edit): keep the choices as they were.
    drawFlow(spec);
    return;
  }
  const tools = Object.keys(spec.tools ?? {});
  if (!tools.includes(selectedTool)) selectedTool = tools[0] ?? null;
  fillSelect($('flow-tool'), tools, selectedTool);
  const simTool = $('sim-tool').value;
  fillSelect($('sim-tool'), tools, tools.includes(simTool) ? simTool : selectedTool);
  if (simTool !== $('sim-tool').value) draftCall();
  drawFlow(spec);
}

function fillSelect(select, names, chosen) {
  const same = select.options.length === names.length && names.every((n, i) => select.options[i].value === n);
  if (!same) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
  }
  if (chosen !== null && chosen !== undefined) select.value = chosen;
}

function drawFlow(spec = specValue(specText())) {
  const root = $('flow');
  const badgeEl = $('flow-level');
  if (!selectedTool || !spec?.tools?.[selectedTool]) {
    root.replaceChildren(Object.assign(document.createElement('p'), {
      className: 'muted',
      textContent: spec ? 'The spec has no tools.' : 'The flow appears when the spec is valid JSON.',
    }));
    badgeEl.dataset.level = 'none';
    badgeEl.textContent = '';
    return;
  }
  const toolReport = studio.report?.tools?.[selectedTool];
  badgeEl.dataset.level = toolReport?.level ?? 'none';
  badgeEl.textContent = toolReport ? levelWord(toolReport.level) : '';
  renderFlow(root, selectedTool, spec.tools[selectedTool], nodeLevels(toolReport), (pointer) => {
    const text = specText();
    const [place] = core.locate(text, [pointer]);
    const toIndex = byteOffsets(text);
    jump(toIndex(place.markStart), toIndex(place.markEnd));
  });
}

function selectTool(name) {
  selectedTool = name;
  $('flow-tool').value = name;
  drawFlow();
}

// ---------------------------------------------------------------------------
// Editing

/** Replaces the editor's text by `next`, changing only the span that differs. */
function replaceText(next) {
  if (!view) {
    // The editor is still loading: it will open with this text.
    startupText = next;
    return;
  }
  const cur = specText();
  if (cur === next) return;
  let start = 0;
  while (start < cur.length && start < next.length && cur[start] === next[start]) start++;
  let endCur = cur.length;
  let endNext = next.length;
  while (endCur > start && endNext > start && cur[endCur - 1] === next[endNext - 1]) {
    endCur--;
    endNext--;
  }
  view.dispatch({
    changes: { from: start, to: endCur, insert: next.slice(start, endNext) },
    selection: { anchor: start + (endNext - start) },
    scrollIntoView: true,
  });
}

function applyFix(item) {
  const text = specText();
  try {
    replaceText(core.applyPatch(text, item.fix.patch));
  } catch (e) {
    fail(`the fix did not apply: ${e.message ?? e}`);
    return;
  }
  refresh();
}

function applyAll() {
  const out = core.fix(specText());
  replaceText(out.spec);
  refresh();
  $('timing').textContent = out.applied.length === 0
    ? 'no mechanical fix to apply'
    : `applied ${out.applied.length} fix${out.applied.length === 1 ? '' : 'es'}`;
}

function jump(from, to) {
  if (from === undefined || !view) return;
  view.dispatch({ selection: { anchor: from, head: to ?? from }, scrollIntoView: true });
  view.focus();
}

/** Opens `text` as the spec `name` (an example's name, or a file's). */
function open(name, text, example = null) {
  studio.name = name;
  exampleName = example;
  $('spec-name').textContent = name;
  if (!view) startupText = text;
  else if (specText() !== text) {
    view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text }, selection: { anchor: 0 } });
  }
  simulator?.reset();
  selectedTool = null;
  $('sim-tool').replaceChildren();
  refresh();
  seedPreset();
}

async function openFile(file) {
  try {
    const text = await file.text();
    $('example').value = '';
    open(file.name, text);
  } catch (e) {
    fail(`cannot read ${file.name}: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------
// Simulate

function seedPreset() {
  const preset = exampleName ? PRESETS[exampleName] : undefined;
  $('sim-seed').value = preset ? JSON.stringify(preset.seed, null, 2) : '{}';
  $('sim-externals').value = '{}';
  if (preset && [...$('sim-tool').options].some((o) => o.value === preset.tool)) {
    $('sim-tool').value = preset.tool;
  }
  draftCall();
}

/** Fills the call's fields for the chosen tool. */
function draftCall() {
  const tool = $('sim-tool').value;
  const spec = specValue(specText());
  const def = spec?.tools?.[tool];
  const preset = exampleName ? PRESETS[exampleName] : undefined;
  if (preset && preset.tool === tool) {
    $('sim-input').value = JSON.stringify(preset.input, null, 2);
    $('sim-sub').value = preset.sub;
    $('sim-roles').value = preset.roles.join(', ');
    $('sim-key').value = preset.idempotencyKey ?? '';
    return;
  }
  $('sim-input').value = JSON.stringify(draftInput(def?.input), null, 2);
  $('sim-roles').value = (def?.auth?.roles ?? []).join(', ');
  $('sim-sub').value = def?.auth?.public ? '' : 'alice';
  $('sim-key').value = def?.idempotencyKey ? `sim-${Date.now().toString(36)}` : '';
}

async function runSimulation() {
  const status = $('sim-status');
  const out = $('sim-result');
  status.textContent = 'running…';
  const call = {
    specText: specText(),
    seedText: $('sim-seed').value,
    externalsText: $('sim-externals').value,
    tool: $('sim-tool').value,
    inputText: $('sim-input').value,
    sub: $('sim-sub').value.trim(),
    roles: $('sim-roles').value.split(',').map((r) => r.trim()).filter(Boolean),
    idempotencyKey: $('sim-key').value.trim(),
  };
  let r;
  try {
    r = await simulator.run(call);
  } catch (e) {
    status.textContent = '';
    const p = document.createElement('p');
    p.className = 'problem';
    p.setAttribute('role', 'alert');
    p.textContent = e.message;
    out.replaceChildren(p);
    return;
  }
  status.textContent = `ran in ${r.ms.toFixed(1)} ms`;
  const ok = r.status < 400;
  const box = document.createElement('div');
  box.className = 'result';
  box.dataset.status = String(r.status);
  const head = document.createElement('div');
  head.className = `status ${ok ? 'ok' : 'err'}`;
  head.textContent = `${r.status} ${ok ? 'success' : 'error'} · ${call.tool}`;
  box.append(head);
  const section = (title, value, cls) => {
    const h = document.createElement('h3');
    h.textContent = title;
    const pre = document.createElement('pre');
    pre.className = cls;
    pre.textContent = value;
    box.append(h, pre);
  };
  section('Response body', pretty(r.body), 'sim-body');
  section(
    `Rows written (${r.rows.length})`,
    r.rows.length === 0
      ? '(none)'
      : r.rows.map((w) => `${w.op} ${w.entity} ${w.id}\n${w.row ? pretty(w.row) : '(rolled back)'}`).join('\n\n'),
    'sim-rows',
  );
  section('Audit entry', pretty(r.audit), 'sim-audit');
  out.replaceChildren(box);
}

// ---------------------------------------------------------------------------
// Tabs, files, keyboard

const TABS = ['report', 'flow', 'simulate'];

function selectTab(name) {
  for (const t of TABS) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (name === 'flow') drawFlow();
}

function wireTabs() {
  TABS.forEach((t, i) => {
    const tab = $(`tab-${t}`);
    tab.addEventListener('click', () => selectTab(t));
    tab.addEventListener('keydown', (e) => {
      const step = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
      if (!step) return;
      const next = TABS[(i + step + TABS.length) % TABS.length];
      selectTab(next);
      $(`tab-${next}`).focus();
    });
  });
}

function wireFiles() {
  $('open').addEventListener('click', () => $('file').click());
  $('file').addEventListener('change', () => {
    const f = $('file').files?.[0];
    if (f) openFile(f);
    $('file').value = '';
  });
  const drop = $('drop');
  let depth = 0;
  window.addEventListener('dragenter', (e) => {
    if (![...(e.dataTransfer?.types ?? [])].includes('Files')) return;
    depth++;
    drop.hidden = false;
  });
  window.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) drop.hidden = true;
  });
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    drop.hidden = true;
    const f = e.dataTransfer?.files?.[0];
    if (f) openFile(f);
  });
}

// ---------------------------------------------------------------------------
// Start

/**
 * The npm package `sinew-core`, served under `sinew-core/`, on the core
 * modules boot.mjs started compiling (or, without it, compiled here).
 * `timings` gets `compiled` (ms since navigation start when the modules
 * were compiled) and `instantiated`.
 */
async function loadCore(timings) {
  const boot = globalThis.sinewBoot;
  const loaded = await load({
    base: new URL('../sinew-core/component/', import.meta.url),
    modules: boot?.modules,
  });
  timings.compiled = boot ? await boot.compiled : performance.now();
  timings.instantiated = performance.now();
  return loaded;
}

async function main() {
  const base = new URL('../', import.meta.url);
  // The component compiles (off the main thread) while the page loads
  // (boot.mjs started it); its first report is drawn before the editor
  // exists.
  const coreP = loadCore(studio.timings);
  const manifest = await (globalThis.sinewBoot?.manifest ??
    fetch(new URL('manifest.json', base)).then((r) => r.json()));
  const startup = manifest.startup;
  const examples = $('example');
  examples.append(new Option('(choose)', ''));
  for (const name of Object.keys(manifest.examples)) examples.append(new Option(`${name}.json`, name));
  examples.addEventListener('change', () => {
    const name = examples.value;
    if (name) open(`${name}.json`, manifest.examples[name], name);
  });

  $('spec-name').textContent = startup.name;
  core = await coreP;
  simulator = new Simulator(core);
  studio.timings.coreReady = performance.now();
  // The first report, before the editor exists; `open` analyzes at once.
  const example = Object.entries(manifest.examples).find(([, t]) => t === startup.text)?.[0] ?? null;
  if (example) examples.value = example;
  open(startup.name, startup.text, example);

  studio.timings.load = performance.now() - booted;
  studio.timings.firstReport = performance.now();

  cm = await codemirror;
  const {
    EditorState,
    EditorView,
    keymap,
    lineNumbers,
    highlightActiveLine,
    highlightActiveLineGutter,
    drawSelection,
    defaultKeymap,
    history,
    historyKeymap,
    syntaxHighlighting,
    defaultHighlightStyle,
    bracketMatching,
    foldGutter,
    foldKeymap,
    indentOnInput,
    lintGutter,
    lintKeymap,
    searchKeymap,
    highlightSelectionMatches,
    json,
  } = cm;
  view = new EditorView({
    parent: $('editor'),
    state: EditorState.create({
      doc: startupText,
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        foldGutter(),
        lintGutter(),
        drawSelection(),
        history(),
        indentOnInput(),
        bracketMatching(),
        highlightActiveLine(),
        highlightSelectionMatches(),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        json(),
        // Tab is left to the browser (moving focus): the editor is not a
        // keyboard trap.
        keymap.of([...defaultKeymap, ...historyKeymap, ...foldKeymap, ...searchKeymap, ...lintKeymap]),
        EditorView.updateListener.of((u) => {
          if (u.docChanged) schedule();
        }),
        EditorView.contentAttributes.of({ 'aria-label': 'Spec (JSON)' }),
      ],
    }),
  });
  view.dispatch(cm.setDiagnostics(view.state, lastDiagnostics));
  studio.timings.editorReady = performance.now();

  wireTabs();
  wireFiles();
  $('fix-all').addEventListener('click', applyAll);
  $('flow-tool').addEventListener('change', () => selectTool($('flow-tool').value));
  $('sim-tool').addEventListener('change', draftCall);
  $('sim-run').addEventListener('click', runSimulation);
  $('sim-reset').addEventListener('click', () => {
    simulator.reset();
    $('sim-result').replaceChildren();
    $('sim-status').textContent = 'data reset';
  });

  Object.assign(studio, {
    view,
    /** Replaces the whole text, as a paste would, and analyzes it now. */
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
      refresh();
    },
    /** Times `runs` analyses of `text` (report, places, diagnostics); the median in ms. */
    measure(text, runs = 15) {
      const times = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        analyze(text);
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      return times[Math.floor(times.length / 2)];
    },
  });
  document.body.dataset.ready = 'true';
}

main().catch((e) => {
  fail(`the studio failed to start: ${e?.message ?? e}`);
  document.body.dataset.ready = 'failed';
});
