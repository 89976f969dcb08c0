// A minimal embedding of sinew's core in JavaScript (Node), with jco: the
// core composed onto the in-memory world (`sinew component --composed`),
// whose only import is the clock, transpiled on the fly (into a temporary
// directory, removed at the end). It judges a spec,
// loads it, seeds one row and runs one call. With jco installed
// (`npm install @bytecodealliance/jco`):
//
//     sinew component --composed --out sinew.composed.wasm
//     node embed.mjs sinew.composed.wasm specs/examples/shop.json
//
// (The npm package `sinew-core` wraps all this in a small API.)

import { readFile, writeFile, mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transpile } from '@bytecodealliance/jco';

const [componentPath, specPath] = process.argv.slice(2);
const spec = await readFile(specPath, 'utf8');

// Transpile: JavaScript glue and core modules, instantiated by us.
const { files } = await transpile(await readFile(componentPath), {
  name: 'sinew',
  instantiation: 'async',
  quiet: true,
});
const dir = await mkdtemp(join(tmpdir(), 'sinew-'));
const modules = new Map();
for (const [name, data] of Object.entries(files)) {
  await mkdir(dirname(join(dir, name)), { recursive: true });
  await writeFile(join(dir, name), data);
  if (name.endsWith('.wasm')) modules.set(name, await WebAssembly.compile(data));
}
const { instantiate } = await import(pathToFileURL(join(dir, 'sinew.js')).href);
await rm(dir, { recursive: true }); // loaded and compiled: no longer needed

// 2026-01-01T00:00:00Z: the clock every call of this example reads. jco
// names imports without their version; `s64` is a BigInt.
const now = 1767225600000n;
const { risk, executor, memory } = await instantiate((name) => modules.get(name), {
  'sinew:executor/clock': { nowMs: () => now },
});

// An export returning `result` throws the `err` value as `e.payload`.
const must = (f) => {
  try {
    return f();
  } catch (e) {
    throw new Error(JSON.stringify(e.payload ?? String(e)));
  }
};

// Judge the spec: the JSON of `sinew check --format json`.
const report = risk.analyze(spec);
console.log(`report ${Buffer.byteLength(report)} bytes`);

// Load it, and tell the in-memory store its unique and timestamp fields.
const info = must(() => executor.load(spec));
must(() => memory.declare(spec));
console.log(`loaded ${info.name} ${info.hash} (${info.tools.length} tools)`);

// One seed row, completed as the spec defines it, inserted as committed.
const row = '{"id": "00000000-0000-4000-8000-000000000001", "sku": "pen", "name": "Pen", "price_cents": 150, "stock": 4}';
must(() => memory.seed('Product', must(() => executor.completeRow('Product', row, now))));

// One call, through the nine steps of the contract.
const response = must(() =>
  executor.execute({
    tool: 'list_products',
    input: '{}',
    auth: { sub: 'ann', roles: ['customer'], claims: '{"sub": "ann"}' },
    id: 'req-1',
    idempotencyKey: undefined,
    scheduled: undefined,
  }),
);
console.log(`${response.status} ${response.body}`);
// The audit chain as the store keeps it (with `seq`, `prev`, `hash`).
console.log(`audit ${memory.audit(0n)}`);
