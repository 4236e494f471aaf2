// The page, end to end, in Debian's Chromium driven by playwright-core:
// serve web/ on localhost, load the tiny SD1.5 model through the page's own
// folder input, pick the fixture image, set the fixture's prompt and
// settings, press Translate, and compare the page's output image with
// tools/reference_pnp.py's (kernels-tests/fixtures/pnp/sd15_square.safetensors).
// Also checks that a browser without a WebGPU adapter gets a clear message.
//
// Run: `bash web/build.sh && (cd web && npm ci) && node web/tests/page.test.mjs`.
// SCREENSHOT=path saves a screenshot of the page after the run.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixtures = path.resolve(web, '../kernels-tests/fixtures');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Without these, Chromium's background connections flood a closed network.
const QUIET = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** The tensors and metadata of a safetensors file (f32 tensors only). */
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__' || t.dtype !== 'F32') continue;
    const [a, b] = t.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    tensors[name] = { shape: t.shape, data };
  }
  return { tensors, meta: header.__metadata__ ?? {} };
}

/** Serves `root`, and the fixture models under /models/ (for the URL input). */
function serve(root) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.png': 'image/png' };
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const base = rel.startsWith('/models/') ? fixtures : root;
    const file = path.join(base, rel.endsWith('/') ? `${rel}index.html` : rel);
    if (!file.startsWith(base) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Forgets the page's state, so the next waitState sees only what follows. */
async function resetState(page) {
  await page.evaluate(() => { document.body.dataset.state = 'test-waiting'; });
}

async function waitState(page, states, timeout) {
  await page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout });
  return page.evaluate(() => document.body.dataset.state);
}

const server = await serve(web);
const url = `http://127.0.0.1:${server.address().port}/`;
let failed = false;
try {
  // 1. No WebGPU adapter (Chromium without --enable-unsafe-webgpu): a clear message.
  {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: QUIET });
    const page = await browser.newPage();
    await page.goto(url);
    const state = await waitState(page, ['no-webgpu', 'no-adapter', 'ready', 'error'], 60_000);
    const msg = await page.textContent('#fatal');
    console.log(`without WebGPU: state ${state}; the page says: ${msg}`);
    assert.ok(['no-webgpu', 'no-adapter'].includes(state), `state ${state}`);
    assert.match(msg, /WebGPU/);
    await browser.close();
  }

  // 2. A whole translation of the tiny model through the page's inputs.
  const ref = readSafetensors(path.join(fixtures, 'pnp/sd15_square.safetensors'));
  const c = JSON.parse(ref.meta.case);
  assert.equal(c.model, 'sd15-tiny');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--enable-unsafe-webgpu', ...QUIET],
  });
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on('console', (m) => console.log(`[page] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[page error] ${e}`));
  await page.goto(url);
  assert.equal(await waitState(page, ['ready', 'no-webgpu', 'no-adapter', 'error'], 60_000), 'ready',
    await page.textContent('#fatal'));
  console.log(await page.textContent('#status'));

  // The other two ways in: a URL of a diffusers folder (fetched, streamed),
  // and a single checkpoint, refused without its tokenizer files.
  await page.fill('#model-url', `${url}models/${c.model}`);
  await resetState(page);
  await page.click('#load-url');
  assert.equal(await waitState(page, ['model-loaded', 'model-error'], 120_000), 'model-loaded',
    await page.textContent('#model-error'));
  console.log(`from a URL: ${await page.textContent('#model-info')}`);
  const single = path.join(fixtures, 'models', `${c.model}.safetensors`);
  await resetState(page);
  await page.setInputFiles('#model-files', [single]);
  assert.equal(await waitState(page, ['model-loaded', 'model-error'], 120_000), 'model-error');
  const refusal = await page.textContent('#model-error');
  console.log(`a single checkpoint alone: ${refusal}`);
  assert.match(refusal, /carries no tokenizer.*vocab\.json/);
  // With its tokenizer it is read, and its layout mapped; the tiny model's
  // 16-channel blocks then contradict the group count a single file does
  // not record (SD's 32 is assumed), which the page names with the way out.
  const tok = path.join(fixtures, 'models', c.model, 'tokenizer');
  await resetState(page);
  await page.setInputFiles('#model-files', [single, path.join(tok, 'vocab.json'), path.join(tok, 'merges.txt')]);
  assert.equal(await waitState(page, ['model-loaded', 'model-error'], 120_000), 'model-error');
  const assumed = await page.textContent('#model-error');
  console.log(`the tiny single checkpoint with its tokenizer: ${assumed}`);
  assert.match(assumed, /norm_num_groups 32 does not divide.*Stable Diffusion's values were assumed/);

  // The translation runs on the folder pick, the way most people will come.
  await resetState(page);
  await page.setInputFiles('#model-folder', path.join(fixtures, 'models', c.model));
  const loaded = await waitState(page, ['model-loaded', 'model-error'], 120_000);
  assert.equal(loaded, 'model-loaded', await page.textContent('#model-error'));
  console.log(await page.textContent('#model-info'));

  await page.setInputFiles('#image', path.join(fixtures, 'pnp', c.image));
  await page.fill('#prompts', c.prompts.join('\n'));
  await page.click('details summary');
  const set = { negative_prompt: c.negative_prompt, inversion_prompt: c.inversion_prompt,
    steps: c.steps, inversion_steps: c.inversion_steps, guidance: c.guidance,
    pnp_f_t: c.pnp_f_t, pnp_attn_t: c.pnp_attn_t, width: 64, height: 64 };
  for (const [id, v] of Object.entries(set)) await page.fill(`#${id}`, String(v));
  await resetState(page);
  await page.click('#run');
  const done = await waitState(page, ['done', 'run-error'], 600_000);
  assert.equal(done, 'done', await page.textContent('#run-error'));

  const timings = await page.$$eval('#timings tr', (rows) => rows.map((r) => r.innerText.replace('\t', ': ')));
  console.log(`in-browser timings:\n  ${timings.join('\n  ')}`);
  if (process.env.SCREENSHOT) {
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(`screenshot: ${process.env.SCREENSHOT}`);
  }

  // The output <img> as RGBA pixels, against the reference image (3, H, W) in [0, 1].
  const outs = await page.$$eval('img.output', (imgs) => imgs.map((img) => {
    const cv = document.createElement('canvas');
    cv.width = img.naturalWidth;
    cv.height = img.naturalHeight;
    const cx = cv.getContext('2d');
    cx.drawImage(img, 0, 0);
    return { w: cv.width, h: cv.height, rgba: Array.from(cx.getImageData(0, 0, cv.width, cv.height).data) };
  }));
  const want = ref.tensors.image;
  assert.equal(outs.length, c.prompts.length);
  const tol = 0.5 / 255 + 1e-3; // 8-bit rounding plus the native tests' image tolerance
  outs.forEach((o, i) => {
    const [h, w] = [want.shape[2], want.shape[3]];
    assert.deepEqual([o.h, o.w], [h, w]);
    let maxErr = 0;
    let first = null;
    for (let ch = 0; ch < 3; ch++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const got = o.rgba[(y * w + x) * 4 + ch] / 255;
          const ref = want.data[((i * 3 + ch) * h + y) * w + x];
          const err = Math.abs(got - ref);
          maxErr = Math.max(maxErr, err);
          if (err > tol && !first) first = `channel ${ch} (${x}, ${y}): got ${got}, want ${ref}`;
        }
      }
    }
    console.log(`output ${i}: ${w}x${h}, max abs error vs reference ${maxErr.toExponential(2)} (tolerance ${tol.toExponential(2)})`);
    assert.equal(first, null, `output ${i} differs from the reference: first at ${first}`);
  });
  await browser.close();
  console.log('page test: ok');
} catch (e) {
  failed = true;
  console.error(`page test FAILED: ${e.stack ?? e}`);
} finally {
  server.close();
}
process.exit(failed ? 1 : 0);
