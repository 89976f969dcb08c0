// The core component in the page: fetched, compiled by streaming, and
// instantiated with JavaScript imports (storage.mjs). The risk engine's
// instance is shared; each simulation world gets an instance of its own.

import { FixedClock, MemoryStorage, ScriptedExternal, makeImports } from './storage.mjs';

/**
 * The payload of an error thrown by an export that returns a `result`
 * (jco throws `ComponentError` with the `err` value as `payload`).
 */
export function exportError(e) {
  if (e && typeof e === 'object' && 'payload' in e) return e.payload;
  return { code: 'trap', message: String(e?.message ?? e), pointer: '' };
}

/**
 * Loads the component: `manifest.json` names its core modules, compiled by
 * streaming (boot.mjs starts both before the rest of the page has loaded;
 * without it they start here), and the transpiled glue
 * (`component/sinew.js`). Returns `{manifest, risk, instantiate(world)}`;
 * `timings` gets `compiled` (ms since navigation start when the modules
 * were compiled) and `instantiated`.
 */
export async function loadCore(base, timings = {}) {
  const boot = globalThis.sinewBoot;
  const manifestP = boot?.manifest ?? fetch(new URL('manifest.json', base)).then((r) => r.json());
  const modulesP =
    boot?.modules ??
    manifestP.then((m) =>
      Promise.all(
        m.component.modules.map(async (name) => [
          name,
          await WebAssembly.compileStreaming(fetch(new URL(`component/${name}`, base))),
        ]),
      ),
    );
  const glue = boot?.glue ?? import(new URL('component/sinew.js', base).href);
  const [manifest, modules, { instantiate }] = await Promise.all([manifestP, modulesP, glue]);
  timings.compiled = boot ? await boot.compiled : performance.now();
  const compiled = new Map(modules);
  const getCoreModule = (name) => {
    const m = compiled.get(name);
    if (!m) throw new Error(`the component asked for an unknown core module \`${name}\``);
    return m;
  };
  const create = (world) => instantiate(getCoreModule, makeImports(world));
  // The risk engine never calls its imports; it gets an empty world.
  const judge = await create({
    storage: new MemoryStorage(),
    clock: new FixedClock(0),
    external: new ScriptedExternal(),
  });
  timings.instantiated = performance.now();
  return { manifest, risk: judge.risk, instantiate: create };
}
