// `pnp eval --html`'s page, opened in Debian's Chromium (playwright-core):
// `pnp batch` edits the three-item PIE-Bench fixture with the tiny SD 1.5
// model, `pnp eval` scores its results beside a folder holding the sources
// themselves, and the page must show every image (decoded, not broken), the
// summary of both methods and each edit's numbers.
//
// Run after a release build: `node web/tests/report.test.mjs` (PNP_BIN or
// CARGO_TARGET_DIR locate the binary; SCREENSHOT=path saves the page).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const fixtures = path.join(repo, 'kernels-tests/fixtures');
const target = process.env.CARGO_TARGET_DIR ?? path.join(repo, 'target');
const PNP = process.env.PNP_BIN ?? path.join(target, 'release/pnp');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pnp-report-'));
const run = (args) => execFileSync(PNP, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });

const pie = path.join(fixtures, 'piebench');
const out = path.join(dir, 'pnp-tiny');
run(['batch', '--model', path.join(fixtures, 'models/sd15-tiny'), '--pie-bench', pie, '--out', out,
  '--steps', '2', '--width', '64', '--height', '64']);
const same = path.join(dir, 'sources');
fs.cpSync(path.join(pie, 'annotation_images'), same, { recursive: true });
const html = path.join(dir, 'page/eval.html');
fs.mkdirSync(path.dirname(html));
const stdout = run(['eval', '--pie-bench', pie, '--results', out, '--results', same,
  '--csv', path.join(dir, 'eval.csv'), '--html', html]);
assert.match(stdout, /report page ->/);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(pathToFileURL(html).href);
  // Lazy images: scroll each into view, then wait until every one settled.
  const imgs = page.locator('img');
  const count = await imgs.count();
  assert.equal(count, 9, 'the source and two methods for each of three edits');
  for (let i = 0; i < count; i++) await imgs.nth(i).scrollIntoViewIfNeeded();
  await page.waitForFunction(() => [...document.images].every((im) => im.complete), null, { timeout: 20000 });
  const sizes = await page.evaluate(() => [...document.images].map((im) => [im.getAttribute('src'), im.naturalWidth]));
  for (const [src, w] of sizes) assert.ok(w > 0, `image ${src} did not load`);
  assert.ok(sizes.some(([src, w]) => src.startsWith('../pnp-tiny/') && w === 64), JSON.stringify(sizes));
  assert.ok(sizes.some(([src, w]) => src.startsWith('../sources/') && w === 512), JSON.stringify(sizes));
  // Two summaries (types 0, 1, 2 and "all"), numbers in every cell.
  const summaries = await page.locator('table.summary').count();
  assert.equal(summaries, 2);
  const rows = await page.locator('table.summary').first().locator('tr').count();
  assert.equal(rows, 1 + 4);
  const cells = await page.locator('table.summary td.num').allTextContents();
  assert.ok(cells.length > 0 && cells.every((c) => /^-?(\d+\.\d+|inf|NaN)$/.test(c)), cells.join(' '));
  // The identity method scores MSE 0 everywhere.
  const captions = await page.locator('table.edits figcaption').allTextContents();
  assert.ok(captions.some((c) => c.includes('mse_unedit_part x10^4 0.0000')), captions.join(' | '));
  assert.deepEqual(errors, []);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log(`report page: ${count} images loaded, ${cells.length} summary cells`);
} finally {
  await browser.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
