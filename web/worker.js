// The page's worker: it holds the GPU device. It opens WebGPU through the
// pnp-web module (web/pkg, made by web/build.sh), loads models and runs
// translations on the page's requests, one after another, and posts back
// progress, results and errors. The page's own thread only draws them.
//
// Requests: {type: 'load', files, paths} or {type: 'load', url};
// {type: 'translate', image, name, options}; {type: 'cancel'}.
// Replies: {type: 'ready', status, precision} or {type: 'fatal', state,
// message} once; then per request {type: 'event', event}s and one
// {type: 'done', ...} or {type: 'failed', message, cancelled, freed}.
import init, { Cancel, Session } from './pkg/pnp_web.js';

const text = (e) => String(e?.message ?? e);

let session = null;
let running = null; // the Cancel of the translation under way
let queue = Promise.resolve();

// wgpu's WebGPU backend does not destroy the buffers it drops; they wait for
// the garbage collector, which need not run before the memory is wanted
// again. So every buffer is filed under the request that made it and
// destroyed once that request's work is gone: a translation's when it ends
// (it keeps nothing on the GPU), a model's when the next load replaces it.
let filing = null; // the Set the buffers made now go to
const modelBuffers = new Set();

function fileBuffers() {
  const create = GPUDevice.prototype.createBuffer;
  GPUDevice.prototype.createBuffer = function (descriptor) {
    const buffer = create.call(this, descriptor);
    filing?.add(buffer);
    return buffer;
  };
}

async function filed(into, work) {
  filing = into;
  try {
    return await work();
  } finally {
    filing = null;
  }
}

/** Destroys `buffers`; says how many and their bytes. */
function destroy(buffers) {
  let bytes = 0;
  for (const b of buffers) {
    bytes += b.size;
    b.destroy();
  }
  const freed = { buffers: buffers.size, bytes };
  buffers.clear();
  return freed;
}

const post = (msg, transfer) => self.postMessage(msg, transfer ?? []);
const onEvent = (event) => post({ type: 'event', event });

async function open() {
  if (!('gpu' in navigator)) {
    post({
      type: 'fatal',
      state: 'no-webgpu',
      message:
        'This browser has no WebGPU, so pnp cannot run here. Use a recent Chrome, Edge or Safari, ' +
        'over https:// or http://localhost (on Linux, Chrome needs --enable-unsafe-webgpu).',
    });
    return;
  }
  fileBuffers();
  await init();
  try {
    session = await Session.open(false);
  } catch (e) {
    post({ type: 'fatal', state: 'no-adapter', message: text(e) });
    return;
  }
  // The browser names its adapter only through adapter.info.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const name = info ? [info.vendor, info.architecture, info.description].filter((s) => s).join(' ') : '';
  post({ type: 'ready', status: `${name ? `${name}: ` : ''}${session.adapter()}`, precision: session.precision() });
}

async function load(req) {
  destroy(modelBuffers); // the session drops the old model first
  try {
    const summary = await filed(modelBuffers, () => (req.url
      ? session.load_url(req.url, onEvent)
      : session.load_files(req.files, req.paths, onEvent)));
    post({ type: 'done', summary });
  } catch (e) {
    destroy(modelBuffers);
    post({ type: 'failed', message: text(e) });
  }
}

async function translate(req) {
  running = new Cancel();
  const made = new Set();
  try {
    const out = await filed(made, () => session.translate(req.image, req.name, req.options, running, onEvent));
    const freed = destroy(made);
    post({ type: 'done', out, freed }, [out.source.buffer, ...out.images.map((png) => png.buffer)]);
  } catch (e) {
    const freed = destroy(made);
    post({ type: 'failed', message: text(e), cancelled: e?.name === 'AbortError', freed });
  } finally {
    running.free();
    running = null;
  }
}

self.onmessage = ({ data: req }) => {
  if (req.type === 'cancel') running?.cancel();
  else queue = queue.then(() => (req.type === 'load' ? load(req) : translate(req)));
};

queue = open().catch((e) => post({ type: 'fatal', state: 'error', message: text(e) }));
