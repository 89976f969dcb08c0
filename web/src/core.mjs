// The component in the page: the core composed onto the in-memory world
// (`sinew component --composed`), fetched, compiled by streaming and
// instantiated with its one import, the clock. Storage and externals are
// the Rust ones inside it (`memory` resets and reads them). The risk
// engine's instance is shared; each simulation world gets an instance of
// its own.

/**
 * The payload of an error thrown by an export that returns a `result`
 * (jco throws `ComponentError` with the `err` value as `payload`): the
 * executor's `error` record, or the `memory` interface's sentence.
 */
export function exportError(e) {
  if (e && typeof e === 'object' && 'payload' in e) {
    const p = e.payload;
    return typeof p === 'string' ? { code: 'world', message: p, pointer: '' } : p;
  }
  return { code: 'trap', message: String(e?.message ?? e), pointer: '' };
}

/** A clock the page sets: milliseconds since the Unix epoch. */
export class Clock {
  constructor(ms) {
    this.ms = ms;
  }

  /** The `clock` import as jco wants it (versionless name, `bigint`). */
  imports() {
    return { 'sinew:executor/clock': { nowMs: () => BigInt(this.ms) } };
  }
}

/**
 * Loads the component: `manifest.json` names its core modules, compiled by
 * streaming (boot.mjs starts them before the rest of the page has loaded;
 * without it they start here), and the transpiled glue
 * (`component/sinew.js`). Returns `{manifest, risk, instantiate(clock)}`;
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
  const create = (clock) => instantiate(getCoreModule, clock.imports());
  // The risk engine never reads the clock.
  const judge = await create(new Clock(0));
  timings.instantiated = performance.now();
  return { manifest, risk: judge.risk, instantiate: create };
}
