// The page: a form, progress and results. Everything that touches the GPU
// (WebGPU, the wasm module, loading, translating) runs in web/worker.js; this
// thread only posts requests and draws what comes back, so it stays
// responsive during a translation. Settings are kept in localStorage.

const $ = (id) => document.getElementById(id);
const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;

const SETTINGS = ['model-url', 'prompts', 'negative_prompt', 'inversion_prompt', 'steps',
  'inversion_steps', 'guidance', 'pnp_f_t', 'pnp_attn_t', 'width', 'height'];
const STORE = 'pnp-settings';

const worker = new Worker('./worker.js', { type: 'module' });
let ready = false;
let modelReady = false;
let image = null; // { name, bytes: Uint8Array }
let busy = false;
let onReply = null; // the current request's handler of the worker's replies

function setState(s) {
  document.body.dataset.state = s;
}

function updateRun() {
  $('run').disabled = busy || !ready || !modelReady || !image;
  for (const id of ['model-folder', 'model-files', 'load-url']) $(id).disabled = busy || !ready;
}

function fatal(state, message) {
  $('status').textContent = '';
  $('fatal').textContent = message;
  setState(state);
}

worker.onmessage = ({ data: msg }) => {
  if (msg.type === 'ready') {
    $('status').textContent =
      `WebGPU adapter: ${msg.status}; weights and activations in ${msg.precision}` +
      (msg.precision === 'f32' ? ' (this adapter has no shader-f16)' : '');
    ready = true;
    setState('ready');
    updateRun();
  } else if (msg.type === 'fatal') {
    fatal(msg.state, msg.message);
  } else {
    onReply(msg);
  }
};
worker.onerror = (e) => fatal('error', `the page's worker failed: ${e.message ?? 'it could not start'}`);

/** Posts `req` to the worker; calls `onEvent` with its progress events, and
 * resolves to its last reply ('done' or 'failed'). */
function request(req, onEvent) {
  return new Promise((resolve) => {
    onReply = (msg) => {
      if (msg.type === 'event') onEvent(msg.event);
      else resolve(msg);
    };
    worker.postMessage(req);
  });
}

function restoreSettings() {
  const saved = JSON.parse(localStorage.getItem(STORE) ?? '{}');
  for (const id of SETTINGS) if (typeof saved[id] === 'string') $(id).value = saved[id];
}

function saveSettings() {
  localStorage.setItem(STORE, JSON.stringify(Object.fromEntries(SETTINGS.map((id) => [id, $(id).value]))));
}

function note(msg) {
  const p = document.createElement('div');
  p.className = 'note';
  p.textContent = `note: ${msg}`;
  $('notes').append(p);
}

async function loadModel(req) {
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
  const reply = await request({ type: 'load', ...req }, onEvent);
  if (reply.type === 'done') {
    const secs = ((performance.now() - t0) / 1000).toFixed(2);
    $('model-info').textContent = `${reply.summary}. Loaded in ${secs} s.`;
    modelReady = true;
    setState('model-loaded');
  } else {
    $('model-info').textContent = '';
    $('model-error').textContent = reply.message;
    setState('model-error');
  }
  $('model-progress').hidden = true;
  busy = false;
  updateRun();
}

/** Loads the model from picked or dropped files: [{file, path}], paths
 * relative to the pick (a folder's name first, as webkitRelativePath). */
function loadFiles(picked) {
  if (picked.length === 0) return;
  loadModel({ files: picked.map((p) => p.file), paths: picked.map((p) => p.path) });
}

function pickFiles(input) {
  loadFiles([...input.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name })));
}

async function pickImage(f) {
  image = { name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) };
  const prev = $('preview');
  prev.onload = () => {
    $('preview-cap').textContent = `${f.name}, ${prev.naturalWidth}x${prev.naturalHeight}`;
  };
  prev.src = URL.createObjectURL(f);
  prev.hidden = false;
  updateRun();
}

/** Every file under a dropped folder, with its path from the folder. */
async function walk(dir) {
  const reader = dir.createReader();
  const out = [];
  for (;;) {
    const entries = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (entries.length === 0) return out;
    for (const e of entries) {
      if (e.isDirectory) out.push(...(await walk(e)));
      else out.push({ file: await new Promise((ok, fail) => e.file(ok, fail)), path: e.fullPath.slice(1) });
    }
  }
}

/** The dropped files and folders' files as [{file, path}]. */
function dropped(dt) {
  // A drop's items are readable only while its event runs: take them now.
  const items = [...dt.items].filter((it) => it.kind === 'file')
    .map((it) => ({ entry: it.webkitGetAsEntry?.(), file: it.getAsFile() }));
  return Promise.all(items.map(({ entry, file }) => (entry?.isDirectory ? walk(entry) : [{ file, path: file.name }])))
    .then((lists) => lists.flat());
}

/** Makes `zone` take drops, handing their files to `take`. */
function dropZone(zone, take) {
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    if (!busy) zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (!busy && ready) dropped(e.dataTransfer).then(take);
  });
}

dropZone($('model-section'), loadFiles);
dropZone($('image-section'), (files) => {
  const f = files.find((p) => /^image\/(png|jpeg)$/.test(p.file.type))?.file;
  if (!f) {
    $('run-error').textContent = `no PNG or JPEG among the dropped files (${files.map((p) => p.path).join(', ')})`;
    return;
  }
  $('image').value = ''; // it no longer names the image
  pickImage(f);
});

$('model-folder').addEventListener('change', (e) => pickFiles(e.target));
$('model-files').addEventListener('change', (e) => pickFiles(e.target));
$('load-url').addEventListener('click', () => {
  const url = $('model-url').value.trim();
  if (url) loadModel({ url });
});

$('image').addEventListener('change', (e) => {
  if (e.target.files[0]) pickImage(e.target.files[0]);
});

for (const id of SETTINGS) $(id).addEventListener('input', saveSettings);

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
    name,
    total,
    tick() {
      bar.value += 1;
      count.textContent = `${bar.value}/${total}`;
    },
    get done() {
      return bar.value;
    },
  };
}

async function run() {
  busy = true;
  updateRun();
  $('cancel').disabled = false;
  setState('running');
  $('run-error').textContent = '';
  $('run-info').textContent = '';
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
  const req = { type: 'translate', image: image.bytes, name: image.name, options: JSON.stringify(opts) };
  const reply = await request(req, onEvent);
  const freed = `freed ${reply.freed.buffers} GPU buffers (${mib(reply.freed.bytes)})`;
  if (reply.type === 'done') {
    showResult(reply.out, opts.prompts, (performance.now() - t0) / 1000);
    $('run-info').textContent = `Done; ${freed}.`;
    setState('done');
  } else if (reply.cancelled) {
    const at = current ? ` in ${current.name} after step ${current.done} of ${current.total}` : '';
    $('run-info').textContent = `Cancelled${at}; ${freed}.`;
    setState('cancelled');
  } else {
    $('run-error').textContent = reply.message;
    setState('run-error');
  }
  $('cancel').disabled = true;
  $('cancel').textContent = 'Cancel';
  busy = false;
  updateRun();
}

function cancel() {
  $('cancel').disabled = true;
  $('cancel').textContent = 'Cancelling…';
  worker.postMessage({ type: 'cancel' });
}

/** The image before (as the pipeline took it) and after, one over the
 * other: the slider moves the edge between them. */
function compareView(before, after, prompt, width, height) {
  const fig = document.createElement('figure');
  fig.className = 'compare';
  const frame = document.createElement('div');
  frame.className = 'frame';
  const show = Math.max(width, 256);
  const images = [['before', before], ['after', after]].map(([cls, url]) => {
    const img = document.createElement('img');
    img.src = url;
    img.className = cls;
    img.width = show;
    img.height = Math.round((show * height) / width);
    img.alt = cls === 'after' ? prompt : 'the image as processed';
    return img;
  });
  images[1].classList.add('output');
  const split = document.createElement('input');
  split.type = 'range';
  split.className = 'split';
  split.min = 0;
  split.max = 100;
  split.value = 50;
  split.setAttribute('aria-label', 'before / after');
  const place = () => frame.style.setProperty('--split', `${split.value}%`);
  split.addEventListener('input', place);
  place();
  frame.append(...images);
  const cap = document.createElement('figcaption');
  const a = document.createElement('a');
  a.href = after;
  a.download = `pnp-${prompt.replace(/[^\w-]+/g, '_').slice(0, 60)}.png`;
  a.textContent = 'download';
  a.title = 'PNG carrying this run\'s parameters (pnp info --image reads them)';
  cap.append(`before | after: "${prompt}", ${width}x${height} `, a);
  fig.append(frame, split, cap);
  return fig;
}

function showResult(out, prompts, total) {
  const outputs = $('outputs');
  outputs.textContent = '';
  const png = (bytes) => URL.createObjectURL(new Blob([bytes], { type: 'image/png' }));
  const before = png(out.source);
  out.images.forEach((img, i) => outputs.append(compareView(before, png(img), prompts[i], out.width, out.height)));
  const rows = out.phases.map(([name, secs]) => [name, `${secs.toFixed(2)} s`]);
  rows.push(['total (request to result)', `${total.toFixed(2)} s`]);
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
$('cancel').addEventListener('click', cancel);
restoreSettings();
