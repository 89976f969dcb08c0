// The risk report, drawn: the bundle's level, spec errors and warnings,
// then every tool with its level and findings in plain language, and an
// "Apply fix" button for each mechanical fix.

/** The word of a level, for badges (never color alone). */
export function levelWord(level) {
  return { green: 'Green', yellow: 'Yellow', red: 'Red', invalid: 'Invalid' }[level] ?? '—';
}

/** A badge element for `level`. */
export function badge(level, { small = false, text } = {}) {
  const b = document.createElement('span');
  b.className = small ? 'badge small' : 'badge';
  b.dataset.level = level ?? 'none';
  b.textContent = text ?? levelWord(level);
  return b;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c);
  return e;
}

/**
 * Every item of a report that has a place in the spec, in report order:
 * `{kind: 'error'|'warning'|'finding', level, code, path, message, help,
 * at, span, tool, node, acknowledged, fix}`.
 */
export function reportItems(report) {
  const items = [];
  for (const e of report.errors ?? []) items.push({ kind: 'error', level: 'invalid', ...e });
  for (const w of report.warnings ?? []) items.push({ kind: 'warning', level: 'yellow', ...w });
  for (const [name, tool] of Object.entries(report.tools ?? {})) {
    for (const f of tool.findings ?? []) items.push({ kind: 'finding', tool: name, ...f });
  }
  return items;
}

/**
 * Renders `report` into `root`. `items` are `reportItems(report)`, in the
 * same order; the handlers get an item (`onJump`, `onApply`) or a tool's
 * name (`onTool`).
 */
export function renderReport(root, report, items, { onJump, onApply, onTool }) {
  const out = el('div', { class: 'report' });
  const counts = { red: 0, yellow: 0, green: 0 };
  for (const t of Object.values(report.tools ?? {})) counts[t.level] = (counts[t.level] ?? 0) + 1;
  const headline = el('h2', {}, 'Spec ', badge(report.level));
  if (report.level === 'invalid') {
    headline.append(
      el('span', { class: 'muted' }, `${report.errors.length} spec error${report.errors.length === 1 ? '' : 's'}: it does not load until fixed`),
    );
  } else {
    const n = Object.keys(report.tools ?? {}).length;
    headline.append(
      el('span', { class: 'muted' }, `${n} tool${n === 1 ? '' : 's'}: ${counts.red} Red, ${counts.yellow} Yellow, ${counts.green} Green`),
    );
  }
  out.append(headline);
  if (report.level === 'red') {
    out.append(el('p', { class: 'problem' }, 'Red tools can never be deployed: apply the fixes or change the flow.'));
  } else if (report.level === 'yellow') {
    out.append(el('p', { class: 'muted' }, 'Yellow signals deploy only once acknowledged (`acknowledgments` in the spec) or fixed.'));
  }

  const jumpLink = (item, text) => {
    const b = el('button', { type: 'button', class: 'linkish', title: 'Show in the editor' }, text);
    b.addEventListener('click', () => onJump(item));
    return b;
  };

  const errorList = items.filter((i) => i.kind !== 'finding');
  if (errorList.length > 0) {
    out.append(el('h2', {}, 'Spec errors and warnings'));
    for (const item of errorList) {
      const div = el(
        'div',
        { class: 'error-item', 'data-code': item.code },
        badge(item.kind === 'error' ? 'invalid' : 'yellow', { small: true, text: item.kind === 'error' ? 'Error' : 'Warning' }),
        ' ',
        el('strong', {}, item.message),
        item.help ? el('div', { class: 'muted' }, item.help) : null,
        el('div', { class: 'muted' }, el('code', {}, item.code), ' at ', jumpLink(item, item.path || '(the document)')),
      );
      out.append(div);
    }
  }

  const tools = Object.entries(report.tools ?? {});
  if (tools.length > 0) out.append(el('h2', {}, 'Tools'));
  for (const [name, tool] of tools) {
    const nameButton = el('button', { type: 'button', class: 'name', title: 'Show its flow' }, name);
    nameButton.addEventListener('click', () => onTool(name));
    const card = el(
      'section',
      { class: 'tool', 'data-tool': name, 'data-level': tool.level },
      el('header', {}, badge(tool.level), nameButton, el('span', { class: 'spacer' }),
        el('span', { class: 'muted' }, tool.findings.length === 0 ? 'no signals' : `${tool.findings.length} signal${tool.findings.length === 1 ? '' : 's'}`)),
    );
    const list = el('ul');
    for (const f of tool.findings) {
      const item = items.find((i) => i.kind === 'finding' && i.tool === name && i.code === f.code && i.path === f.path);
      const li = el('li', { class: `finding${f.acknowledged ? ' acknowledged' : ''}`, 'data-code': f.code });
      li.append(f.acknowledged ? badge(f.level, { small: true, text: `${f.level === 'red' ? 'Red' : 'Yellow'} · acknowledged` }) : badge(f.level, { small: true }));
      const msg = el('span', { class: 'msg', tabIndex: 0, role: 'link', title: 'Show in the editor' }, f.message);
      msg.addEventListener('click', () => onJump(item));
      msg.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') onJump(item);
      });
      li.append(msg);
      const meta = el('div', { class: 'meta' }, el('code', {}, f.code));
      if (f.fix?.summary) meta.append(el('span', {}, `Fix: ${f.fix.summary}`));
      if (f.fix?.patch && !f.acknowledged) {
        const apply = el('button', { type: 'button', class: 'apply' }, 'Apply fix');
        apply.setAttribute('aria-label', `Apply fix for ${f.code} in ${name}: ${f.fix.summary}`);
        apply.addEventListener('click', () => onApply(item));
        meta.append(apply);
      }
      li.append(meta);
      list.append(li);
    }
    if (tool.findings.length > 0) card.append(list);
    out.append(card);
  }
  root.replaceChildren(out);
}
