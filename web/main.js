// The page: opens WebGPU through the pnp-web module (web/pkg, made by
// web/build.sh), loads a model from file inputs or a URL, translates an
// image, and shows progress per phase, the results and the timings.
import init, { Session } from './pkg/pnp_web.js';

const $ = (id) => document.getElementById(id);
const text = (e) => String(e?.message ?? e);
const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;

let session = null;
let modelReady = false;
let image = null; // { name, bytes: Uint8Array }
let busy = false;

function setState(s) {
  document.body.dataset.state = s;
}

function updateRun() {
  $('run').disabled = busy || !session || !modelReady || !image;
  for (const id of ['model-folder', 'model-files', 'load-url']) $(id).disabled = busy || !session;
}

async function start() {
  if (!('gpu' in navigator)) {
    $('status').textContent = '';
    $('fatal').textContent =
      'This browser has no WebGPU, so pnp cannot run here. Use a recent Chrome, Edge or Safari, ' +
      'over https:// or http://localhost (on Linux, Chrome needs --enable-unsafe-webgpu).';
    setState('no-webgpu');
    return;
  }
  await init();
  try {
    session = await Session.open(false);
  } catch (e) {
    $('status').textContent = '';
    $('fatal').textContent = text(e);
    setState('no-adapter');
    return;
  }
  // The browser names its adapter only through adapter.info.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const name = info ? [info.vendor, info.architecture, info.description].filter((s) => s).join(' ') : '';
  $('status').textContent =
    `WebGPU adapter: ${name ? `${name}: ` : ''}${session.adapter()}; weights and activations in ${session.precision()}` +
    (session.precision() === 'f32' ? ' (this adapter has no shader-f16)' : '');
  setState('ready');
  updateRun();
}

function note(msg) {
  const p = document.createElement('div');
  p.className = 'note';
  p.textContent = `note: ${msg}`;
  $('notes').append(p);
}

async function loadModel(load) {
  busy = true;
  modelReady = false;
  updateRun();
  $('model-error').textContent = '';
  $('model-info').textContent = 'Loading…';
  $('model-progress').hidden = false;
  setState('loading');
  const onEvent = (ev) => {
    if (ev.kind === 'bytes') {
      $('model-file').textContent = ev.name.split('/').slice(-2).join('/');
      $('model-bar').max = ev.total || ev.done || 1;
      $('model-bar').value = ev.done;
      $('model-pct').textContent = ev.total ? `${Math.round((100 * ev.done) / ev.total)}%` : mib(ev.done);
    } else if (ev.kind === 'phase') {
      $('model-file').textContent = ev.name;
    } else if (ev.kind === 'note') {
      note(ev.message);
    }
  };
  const t0 = performance.now();
  try {
    const summary = await load(onEvent);
    const secs = ((performance.now() - t0) / 1000).toFixed(2);
    $('model-info').textContent = `${summary}. Loaded in ${secs} s.`;
    modelReady = true;
    setState('model-loaded');
  } catch (e) {
    $('model-info').textContent = '';
    $('model-error').textContent = text(e);
    setState('model-error');
  }
  $('model-progress').hidden = true;
  busy = false;
  updateRun();
}

function pickFiles(input) {
  const files = [...input.files];
  if (files.length === 0) return;
  const paths = files.map((f) => f.webkitRelativePath || f.name);
  loadModel((onEvent) => session.load_files(files, paths, onEvent));
}

$('model-folder').addEventListener('change', (e) => pickFiles(e.target));
$('model-files').addEventListener('change', (e) => pickFiles(e.target));
$('load-url').addEventListener('click', () => {
  const url = $('model-url').value.trim();
  if (url) loadModel((onEvent) => session.load_url(url, onEvent));
});

$('image').addEventListener('change', async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  image = { name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) };
  const prev = $('preview');
  prev.src = URL.createObjectURL(f);
  prev.hidden = false;
  prev.onload = () => {
    $('preview-cap').textContent = `${f.name}, ${prev.naturalWidth}x${prev.naturalHeight}`;
  };
  updateRun();
});

function numberOrNull(id, parse) {
  const v = parse($(id).value);
  return Number.isFinite(v) ? v : null;
}

function phaseRow(name, total) {
  const row = document.createElement('div');
  row.className = 'phase';
  const label = document.createElement('span');
  label.textContent = name;
  const bar = document.createElement('progress');
  bar.max = Math.max(total, 1);
  bar.value = 0;
  const count = document.createElement('span');
  count.textContent = `0/${total}`;
  row.append(label, bar, count);
  $('phases').append(row);
  return {
    tick() {
      bar.value += 1;
      count.textContent = `${bar.value}/${total}`;
    },
  };
}

async function run() {
  busy = true;
  updateRun();
  setState('running');
  $('run-error').textContent = '';
  $('phases').textContent = '';
  $('notes').textContent = '';
  $('result').hidden = true;
  // Absent (undefined) settings take the library's defaults (PnpOptions).
  const opts = {
    prompts: $('prompts').value.split('\n').map((s) => s.trim()).filter((s) => s),
    negative_prompt: $('negative_prompt').value,
    inversion_prompt: $('inversion_prompt').value,
    steps: numberOrNull('steps', parseInt) ?? undefined,
    inversion_steps: numberOrNull('inversion_steps', parseInt) ?? undefined,
    guidance: numberOrNull('guidance', parseFloat) ?? undefined,
    pnp_f_t: numberOrNull('pnp_f_t', parseFloat) ?? undefined,
    pnp_attn_t: numberOrNull('pnp_attn_t', parseFloat) ?? undefined,
    width: numberOrNull('width', parseInt),
    height: numberOrNull('height', parseInt),
  };
  let current = null;
  const onEvent = (ev) => {
    if (ev.kind === 'phase') current = phaseRow(ev.name, ev.total);
    else if (ev.kind === 'tick') current?.tick();
    else if (ev.kind === 'note') note(ev.message);
  };
  const t0 = performance.now();
  try {
    const out = await session.translate(image.bytes, image.name, JSON.stringify(opts), onEvent);
    const total = (performance.now() - t0) / 1000;
    showResult(out, opts.prompts, total);
    setState('done');
  } catch (e) {
    $('run-error').textContent = text(e);
    setState('run-error');
  }
  busy = false;
  updateRun();
}

function showResult(out, prompts, total) {
  const outputs = $('outputs');
  outputs.textContent = '';
  out.images.forEach((png, i) => {
    const url = URL.createObjectURL(new Blob([png], { type: 'image/png' }));
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.src = url;
    img.className = 'output';
    img.width = Math.max(out.width, 192);
    img.alt = prompts[i];
    const cap = document.createElement('figcaption');
    const a = document.createElement('a');
    a.href = url;
    a.download = `pnp-${i}.png`;
    a.textContent = 'download';
    cap.append(`"${prompts[i]}", ${out.width}x${out.height} `, a);
    fig.append(img, cap);
    outputs.append(fig);
  });
  const rows = out.phases.map(([name, secs]) => [name, `${secs.toFixed(2)} s`]);
  rows.push(['total (in this tab)', `${total.toFixed(2)} s`]);
  rows.push(['UNet evaluations', String(out.unet_evals)]);
  rows.push([
    'features',
    out.used_store ? 'GPU-resident store (source pass once)' : 'inline source row',
  ]);
  rows.push(['peak planned GPU memory', mib(out.peak_bytes)]);
  const table = $('timings');
  table.textContent = '';
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell();
    td.textContent = v;
    td.className = 'num';
  }
  $('result').hidden = false;
}

$('run').addEventListener('click', run);
start().catch((e) => {
  $('fatal').textContent = text(e);
  setState('error');
});
