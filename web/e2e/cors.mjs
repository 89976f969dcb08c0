#!/usr/bin/env node
// A real browser's CORS against `sinew serve`: a page of another origin
// (APP, a blank page on loopback) calls a sinew serve at BASE, whose
// spec's `cors` allows that origin for some tools. Chromium sends its own
// preflights; this prints what each fetch got, as JSON, for
// host/tests/studio.rs to check.
//
//   node web/e2e/cors.mjs APP BASE TOKEN

import { chromium } from 'playwright-core';

const [app, base, token] = process.argv.slice(2);
if (!app || !base || !token) {
  console.error('usage: node web/e2e/cors.mjs APP BASE TOKEN');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(app);
  const results = await page.evaluate(
    async ({ base, token }) => {
      const out = { origin: location.origin };
      const attempt = async (name, path, init) => {
        try {
          const r = await fetch(base + path, init);
          out[name] = {
            status: r.status,
            body: await r.json(),
            requestId: r.headers.get('x-request-id'),
          };
        } catch (e) {
          out[name] = { error: String(e) };
        }
      };
      const json = (body, key) => ({
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${token}`,
          'idempotency-key': key,
        },
        body: JSON.stringify(body),
      });
      // Preflighted (JSON, Authorization): allowed by `cors`.
      await attempt('allowed', '/products', json({ sku: 'WEB', name: 'From a page', price_cents: 100 }, 'k-web'));
      // A simple GET: no preflight, readable by the page.
      await attempt('simple', '/products', {});
      // Preflighted, for a tool `cors` does not list: the browser refuses.
      await attempt('refused', '/orders', json({ product: 'x', quantity: 1 }, 'k-refused'));
      return out;
    },
    { base, token },
  );
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
