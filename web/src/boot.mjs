// The page's first script, with no imports of its own: it starts fetching
// and compiling the component at once, while the browser is still loading
// the editor and the rest of the page's modules, then hands over to
// app.mjs. (The component is most of the bytes; compiling it is most of
// the start-up time.)

const base = new URL('../', import.meta.url);
const started = performance.now();

globalThis.sinewBoot = {
  started,
  manifest: fetch(new URL('manifest.json', base)).then((r) => {
    if (!r.ok) throw new Error(`manifest.json: HTTP ${r.status}`);
    return r.json();
  }),
};
// The server lists the core modules as preloads in index.html, so their
// bytes are on the way before any script runs; without them (the page
// opened some other way), the manifest names them.
const compile = (names) =>
  Promise.all(
    names.map(async (name) => [
      name,
      await WebAssembly.compileStreaming(fetch(new URL(`sinew-core/component/${name}`, base))),
    ]),
  );
const listed = [...document.querySelectorAll('link[data-core-module]')].map((l) => l.dataset.coreModule);
globalThis.sinewBoot.modules =
  listed.length > 0 ? compile(listed) : globalThis.sinewBoot.manifest.then((m) => compile(m.component.modules));
globalThis.sinewBoot.compiled = globalThis.sinewBoot.modules.then(() => performance.now());
// The npm package `sinew-core` (its API and jco's transpiled glue, a large
// script): parse it while the modules compile.
globalThis.sinewBoot.glue = import(new URL('sinew-core/index.js', base).href);

import('./app.mjs');
