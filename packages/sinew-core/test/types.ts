// The package's TypeScript types as a user's code meets them: tests/npm.rs
// type-checks this file (tsc --strict) against the installed package. It
// is never run.

import { load, SinewError, version, type Core, type Report, type World, type Place, type ToolReport, type Diagnostic } from 'sinew-core';

const core: Core = await load({ base: new URL('./node_modules/sinew-core/component/', import.meta.url) });
const report: Report = core.analyze('{"sinew": "0.1"}');
const level: 'green' | 'yellow' | 'red' | 'invalid' = report.level;
for (const [tool, { findings }] of Object.entries(report.tools)) {
  for (const f of findings) {
    const patch = f.fix?.patch ?? [];
    const text: string = core.applyPatch('{}', patch);
    console.log(tool, f.code, f.path, f.acknowledged, text.length);
  }
}
// What the runtime gives: a tool with errors is `invalid`; a fix is always
// there, its patch only when mechanical; a diagnostic's help always, its
// span (in an expression) and at (JSON syntax, 1-based) sometimes.
const toolLevel: ToolReport['level'] = 'invalid';
const tool: ToolReport | undefined = report.tools['place_order'];
const summary: string | undefined = tool?.findings[0]?.fix.summary;
const diagnostic: Diagnostic | undefined = report.errors[0];
const help: string | undefined = diagnostic?.help;
const span: [number, number] | undefined = diagnostic?.span;
const column: number | undefined = diagnostic?.at?.column;
const places: Place[] = core.locate('{}', ['/tools']);
const first: number = places[0].markStart;
const fixed = core.fix('{}');
const applied: string[] = fixed.applied.map((a) => `${a.code} ${a.tool} ${a.path}`);

const world: World = await core.simulate({ now: Date.now(), externals: { 'pay.charge': [{ ok: {} }] } });
world.now = 0;
world.now = () => 1;
world.now = new Date('2026-01-01T00:00:00Z');
const info = world.load({ sinew: '0.1', name: 'x', tools: {} });
const tools: string[] = info.tools.map((t) => t.name);
// A user's own interfaces (no index signature, optional members) go in as they are.
interface Product {
  id: string;
  stock: number;
  note?: string;
}
const products: Product[] = [{ id: 'x', stock: 1 }];
const seeded: number = world.seed({ Product: products });
interface OrderInput {
  product: string;
  quantity: number;
}
const input: OrderInput = { product: 'x', quantity: 1 };
const response = world.execute({ tool: 't', input, auth: { sub: 'u', roles: ['r'] }, idempotencyKey: 'k' });
const len: bigint = world.raw.memory.auditLen();
const status: number = response.status;
const seq = response.audit.seq;
world.reset(world.state());
const saved: string = world.stateText();
world.reset(saved);
const failed: boolean = world.failed;
const rows = world.rows('Product');
try {
  world.load('{');
} catch (e) {
  if (e instanceof SinewError) console.log(e.code, e.pointer, e.message, e.code === 'failed' ? e.cause : undefined);
}

// @ts-expect-error a request names its tool
world.execute({ input: {} });
// @ts-expect-error the clock is milliseconds
world.now = '2026-01-01';
// @ts-expect-error `failed` is read-only
world.failed = false;
// @ts-expect-error patches are arrays
core.applyPatch('{}', { op: 'add' });

console.log(version, level, first, applied, tools, seeded, status, seq, rows, len);
console.log(toolLevel, summary, help, span, column, failed);
