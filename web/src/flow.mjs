// A tool's flow graph as an SVG: a layered layout of our own (ranks by
// longest path from the entry, rows top to bottom), transaction bodies laid
// out recursively inside boxes, `onError` and `compensate` edges drawn
// distinctly, nodes colored by type and outlined by the level of their
// findings. Small flows need nothing cleverer; large ones stay readable
// because every row is centered and edges are short curves.

import { pointerToken } from './text.mjs';

const SVG = 'http://www.w3.org/2000/svg';
const NODE_W = 172;
const NODE_H = 46;
const GAP_X = 26;
const GAP_Y = 46;
const PAD = 14;
const HEADER = 22;

const KIND = {
  read: 'read',
  aggregate: 'read',
  create: 'write',
  update: 'write',
  transition: 'write',
  soft_delete: 'write',
  delete: 'write',
  sql: 'write',
  call: 'call',
  emit: 'call',
  if: 'branch',
  switch: 'branch',
  return: 'end',
  fail: 'end',
};

/** The kind a node type is drawn as: read, write, call, branch, end or other. */
export function kindOf(type) {
  return KIND[type] ?? 'other';
}

/** A node's successors: `{to, type, label}` (compensate edges apart). */
function successors(node) {
  const out = [];
  const add = (to, type, label) => {
    if (typeof to === 'string') out.push({ to, type, label });
  };
  add(node.next, 'next');
  add(node.then, 'then', 'then');
  add(node.else, 'else', 'else');
  if (Array.isArray(node.cases)) {
    node.cases.forEach((c, i) => add(c?.next, 'case', `case ${i + 1}`));
  }
  add(node.default, 'default', 'default');
  add(node.onError, 'onError', 'onError');
  return out;
}

function detail(node) {
  switch (node.type) {
    case 'call':
      return `call ${node.external ?? '?'}.${node.operation ?? '?'}`;
    case 'transaction':
      return `transaction${node.isolation ? ` (${node.isolation})` : ''}`;
    case 'fail':
      return `fail ${node.status ?? ''} ${node.code ?? ''}`.trim();
    default:
      return node.entity ? `${node.type} ${node.entity}` : String(node.type ?? '?');
  }
}

/** Lays out one flow (`{entry, nodes}`); `base` is its pointer. */
function layout(flow, base) {
  const nodes = flow && typeof flow.nodes === 'object' && flow.nodes !== null ? flow.nodes : {};
  const ids = Object.keys(nodes);
  const items = new Map();
  for (const id of ids) {
    const node = nodes[id] ?? {};
    const pointer = `${base}/nodes/${pointerToken(id)}`;
    if (node.type === 'transaction') {
      const inner = layout(node.body, `${pointer}/body`);
      items.set(id, {
        id, node, pointer, tx: true, inner,
        w: Math.max(inner.width + 2 * PAD, NODE_W + 2 * PAD),
        h: inner.height + HEADER + 2 * PAD,
      });
    } else {
      items.set(id, { id, node, pointer, tx: false, w: NODE_W, h: NODE_H });
    }
  }
  const edges = [];
  for (const id of ids) {
    for (const s of successors(nodes[id] ?? {})) {
      if (items.has(s.to)) edges.push({ from: id, ...s });
    }
    const comp = nodes[id]?.compensate;
    if (typeof comp === 'string' && items.has(comp)) {
      edges.push({ from: id, to: comp, type: 'compensate', label: 'compensate' });
    }
  }

  // Back edges: found by a depth-first walk from the entry, then from any
  // node not reached (iteratively: flows may be long).
  const order = [];
  const state = new Map();
  const back = new Set();
  const ranked = edges.filter((e) => e.type !== 'compensate');
  const out = new Map(ids.map((id) => [id, []]));
  for (const e of ranked) out.get(e.from).push(e);
  const roots = [flow?.entry, ...ids].filter((r) => items.has(r));
  for (const root of roots) {
    if (state.has(root)) continue;
    const stack = [[root, 0]];
    state.set(root, 'open');
    order.push(root);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const list = out.get(top[0]);
      if (top[1] >= list.length) {
        state.set(top[0], 'done');
        stack.pop();
        continue;
      }
      const e = list[top[1]++];
      const st = state.get(e.to);
      if (st === 'open') back.add(e);
      else if (!st) {
        state.set(e.to, 'open');
        order.push(e.to);
        stack.push([e.to, 0]);
      }
    }
  }
  // Longest-path ranks over the forward edges, in topological order.
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of ranked) if (!back.has(e)) indeg.set(e.to, indeg.get(e.to) + 1);
  const rank = new Map(ids.map((id) => [id, 0]));
  const queue = order.filter((id) => indeg.get(id) === 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const e of out.get(id)) {
      if (back.has(e)) continue;
      rank.set(e.to, Math.max(rank.get(e.to), rank.get(id) + 1));
      indeg.set(e.to, indeg.get(e.to) - 1);
      if (indeg.get(e.to) === 0) queue.push(e.to);
    }
  }
  // Rows, in discovery order; each centered.
  const rows = [];
  for (const id of order) {
    const r = rank.get(id);
    (rows[r] ??= []).push(items.get(id));
  }
  const widths = rows.map((row) => (row ?? []).reduce((w, it) => w + it.w, 0) + GAP_X * Math.max(0, (row ?? []).length - 1));
  const width = Math.max(NODE_W, ...widths);
  let y = 0;
  rows.forEach((row, r) => {
    if (!row) return;
    let x = (width - widths[r]) / 2;
    const h = Math.max(...row.map((it) => it.h));
    for (const it of row) {
      it.x = x;
      it.y = y;
      x += it.w + GAP_X;
    }
    y += h + GAP_Y;
  });
  return { items, edges, back, width, height: Math.max(NODE_H, y - GAP_Y) };
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

const clip = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/**
 * Draws `tool`'s flow into `root`. `levels` maps a node's pointer to the
 * worst level of its unacknowledged findings; `onNode(pointer)` is called
 * when a node is clicked (or activated with the keyboard).
 */
export function renderFlow(root, toolName, tool, levels, onNode) {
  const base = `/tools/${pointerToken(toolName)}/flow`;
  const lay = layout(tool?.flow, base);
  const M = 20;
  // Room on the right for edges routed around the side.
  const W = lay.width + 2 * M + 70;
  const H = lay.height + 2 * M;
  const s = svg('svg', {
    width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `Flow of ${toolName}`, 'data-tool': toolName,
  });
  const defs = svg('defs');
  for (const [id, color] of [['arrow', '#6b7685'], ['arrow-error', '#a3161c'], ['arrow-comp', '#6b3fb8']]) {
    const m = svg('marker', { id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    m.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: color }));
    defs.append(m);
  }
  s.append(defs);
  const edgeLayer = svg('g', { class: 'edges' });
  const nodeLayer = svg('g', { class: 'nodes' });
  s.append(nodeLayer, edgeLayer);

  const draw = (lay, ox, oy) => {
    for (const it of lay.items.values()) {
      const x = ox + it.x;
      const y = oy + it.y;
      it.ax = x;
      it.ay = y;
      const level = levels.get(it.pointer);
      if (it.tx) {
        const g = svg('g', { class: 'tx', 'data-node': it.id, 'data-pointer': it.pointer });
        g.append(svg('rect', { class: 'box', x, y, width: it.w, height: it.h, rx: 10 }));
        const head = svg('g', {
          class: 'node', 'data-node': it.id, 'data-type': 'transaction', 'data-kind': 'other',
          'data-pointer': it.pointer, tabindex: 0, role: 'button',
          'aria-label': `${it.id}: transaction${level ? `, ${level}` : ''}`,
        });
        if (level) head.setAttribute('data-level', level);
        head.append(svg('text', { x: x + 10, y: y + 16 }, clip(`${it.id} · ${detail(it.node)}`, 40)));
        if (level) head.append(svg('text', { class: 'flag', x: x + it.w - 10, y: y + 16, 'text-anchor': 'end' }, level === 'red' ? 'RED' : 'YELLOW'));
        g.append(head);
        nodeLayer.append(g);
        bind(head, it.pointer);
        draw(it.inner, x + (it.w - it.inner.width) / 2, y + HEADER + PAD);
        continue;
      }
      const kind = kindOf(it.node.type);
      const g = svg('g', {
        class: 'node', 'data-node': it.id, 'data-type': String(it.node.type ?? ''), 'data-kind': kind,
        'data-pointer': it.pointer, tabindex: 0, role: 'button',
        'aria-label': `${it.id}: ${detail(it.node)}${level ? `, ${level}` : ''}`,
      });
      if (level) g.setAttribute('data-level', level);
      if (kind === 'branch') {
        const cx = x + it.w / 2;
        const cy = y + it.h / 2;
        g.append(svg('polygon', {
          class: 'shape',
          points: `${x + 12},${cy} ${cx},${y} ${x + it.w - 12},${cy} ${cx},${y + it.h}`,
        }));
      } else {
        g.append(svg('rect', { class: 'shape', x, y, width: it.w, height: it.h, rx: kind === 'end' ? 23 : 6 }));
      }
      g.append(svg('text', { x: x + it.w / 2, y: y + 19, 'text-anchor': 'middle', 'font-weight': 600 }, clip(it.id, 24)));
      g.append(svg('text', { class: 'sub', x: x + it.w / 2, y: y + 35, 'text-anchor': 'middle' }, clip(detail(it.node), 28)));
      if (level) g.append(svg('text', { class: 'flag', x: x + it.w - 6, y: y + 11, 'text-anchor': 'end' }, level === 'red' ? 'RED' : 'YELLOW'));
      nodeLayer.append(g);
      bind(g, it.pointer);
    }
    for (const e of lay.edges) {
      const a = lay.items.get(e.from);
      const b = lay.items.get(e.to);
      let d;
      let lx;
      let ly;
      if (lay.back.has(e) || e.type === 'compensate' || b.ay <= a.ay) {
        // Around the right side.
        const x1 = a.ax + a.w;
        const y1 = a.ay + a.h / 2;
        const x2 = b.ax + b.w;
        const y2 = b.ay + b.h / 2;
        const bend = Math.max(x1, x2) + 40;
        d = `M${x1},${y1} C${bend},${y1} ${bend},${y2} ${x2},${y2}`;
        lx = bend - 8;
        ly = (y1 + y2) / 2;
      } else {
        const x1 = a.ax + a.w / 2;
        const y1 = a.ay + a.h;
        const x2 = b.ax + b.w / 2;
        const y2 = b.ay;
        const mid = (y1 + y2) / 2;
        d = `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`;
        lx = (x1 + x2) / 2 + 4;
        ly = mid;
      }
      const marker = e.type === 'onError' ? 'arrow-error' : e.type === 'compensate' ? 'arrow-comp' : 'arrow';
      edgeLayer.append(svg('path', {
        class: `edge ${e.type}`, d, 'marker-end': `url(#${marker})`,
        'data-from': e.from, 'data-to': e.to, 'data-type': e.type,
      }));
      if (e.label) edgeLayer.append(svg('text', { class: 'edge-label', x: lx, y: ly }, e.label));
    }
  };
  const bind = (g, pointer) => {
    g.addEventListener('click', () => onNode(pointer));
    g.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        onNode(pointer);
      }
    });
  };
  draw(lay, M, M);
  root.replaceChildren(s);
  return s;
}

/**
 * The worst unacknowledged level per node pointer of `tool`'s findings:
 * each finding goes to the deepest node whose pointer starts its path.
 */
export function nodeLevels(toolReport) {
  const levels = new Map();
  const rank = { yellow: 1, red: 2 };
  for (const f of toolReport?.findings ?? []) {
    if (f.acknowledged) continue;
    const m = /^(\/tools\/[^/]+\/flow(?:\/nodes\/[^/]+\/body)*\/nodes\/[^/]+)/.exec(f.path);
    if (!m) continue;
    // The deepest node: the longest prefix matched above.
    const p = m[1];
    if ((rank[f.level] ?? 0) > (rank[levels.get(p)] ?? 0)) levels.set(p, f.level);
  }
  return levels;
}
