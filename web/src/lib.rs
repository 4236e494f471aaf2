//! The pnp library in a browser tab. The page's worker (`web/worker.js`)
//! imports the wasm-bindgen output of this crate (`web/build.sh`) and drives
//! a [`Session`]: open WebGPU, load a model from file inputs or a URL,
//! translate images, stop a translation through its [`Cancel`]. Everything
//! runs on the user's own GPU; nothing leaves the tab.
#![cfg(target_arch = "wasm32")]
// The session serves one request at a time: a load or a translation holds the
// session's RefCell across its awaits on purpose, and a second request made
// meanwhile gets try_borrow_mut's "busy" error instead of racing it.
#![allow(clippy::await_holding_refcell_ref)]

pub mod app;
pub mod source;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use pnp::gpu::Gpu;
use pnp::progress::Progress;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use app::{Loaded, TranslateError, WebOptions};
use source::Source;

/// Sends progress to the page as `on_event({kind, ...})` objects:
/// `{kind: "phase", name, total}`, `{kind: "tick"}`, `{kind: "note", message}`,
/// `{kind: "bytes", name, done, total}`; and tells the pipeline when the
/// run is cancelled.
struct JsReport {
    on_event: Function,
    cancel: Option<Rc<Cell<bool>>>,
}

impl JsReport {
    fn new(on_event: Function) -> Self {
        JsReport {
            on_event,
            cancel: None,
        }
    }

    fn emit(&self, kind: &str, fields: &[(&str, JsValue)]) {
        let o = Object::new();
        let _ = Reflect::set(&o, &"kind".into(), &kind.into());
        for (k, v) in fields {
            let _ = Reflect::set(&o, &(*k).into(), v);
        }
        // A throwing callback must not abort the run.
        let _ = self.on_event.call1(&JsValue::NULL, &o);
    }
}

impl Progress for JsReport {
    fn phase(&mut self, name: &str, total: usize) {
        self.emit("phase", &[("name", name.into()), ("total", total.into())]);
    }
    fn tick(&mut self) {
        self.emit("tick", &[]);
    }
    fn note(&mut self, msg: &str) {
        self.emit("note", &[("message", msg.into())]);
    }
    fn bytes(&mut self, file: &str, done: usize, total: usize) {
        self.emit(
            "bytes",
            &[
                ("name", file.into()),
                ("done", (done as f64).into()),
                ("total", (total as f64).into()),
            ],
        );
    }
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.get())
    }
}

/// Stops the translation it is given to before its next step. A separate
/// object because the session is borrowed while a translation runs; the
/// worker calls [`Cancel::cancel`] from its message handler, which runs
/// while the pipeline waits on the GPU.
#[wasm_bindgen]
#[derive(Default)]
pub struct Cancel(Rc<Cell<bool>>);

#[wasm_bindgen]
impl Cancel {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.set(true);
    }
}

struct Inner {
    gpu: Arc<Gpu>,
    loaded: Option<Loaded>,
}

/// An open WebGPU device and, once loaded, a model.
#[wasm_bindgen]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
}

fn busy() -> JsValue {
    JsError::new("busy: a model load or translation is still running").into()
}

fn err(msg: String) -> JsValue {
    JsError::new(&msg).into()
}

#[wasm_bindgen]
impl Session {
    /// Opens WebGPU (f16 storage where the adapter has shader-f16, unless
    /// `force_f32`). Rejects with a message when WebGPU is missing.
    pub async fn open(force_f32: bool) -> Result<Session, JsError> {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("pnp panicked: {info}").into());
        }));
        let gpu = app::open(force_f32).await.map_err(|e| JsError::new(&e))?;
        Ok(Session {
            inner: Rc::new(RefCell::new(Inner { gpu, loaded: None })),
        })
    }

    /// The adapter's name, backend, features and binding limit.
    pub fn adapter(&self) -> String {
        self.inner.borrow().gpu.describe()
    }

    /// "f16" or "f32": the storage type weights and activations use.
    pub fn precision(&self) -> String {
        format!("{:?}", app::dtype(&self.inner.borrow().gpu)).to_lowercase()
    }

    /// The largest storage binding, in bytes (the page checks sizes against it).
    pub fn max_binding(&self) -> f64 {
        self.inner.borrow().gpu.max_binding() as f64
    }

    /// Loads a model from picked files: `files[i]` (a File or Blob) at
    /// relative path `paths[i]` (`webkitRelativePath` for a folder pick).
    /// Resolves to a one-line summary.
    pub fn load_files(&self, files: Array, paths: Vec<String>, on_event: Function) -> Promise {
        let map: BTreeMap<String, web_sys::Blob> = paths
            .into_iter()
            .zip(files.iter().map(JsCast::unchecked_into))
            .collect();
        self.load(Source::Files(map), on_event)
    }

    /// Loads a diffusers folder served at `url` (its base, holding
    /// model_index.json). Resolves to a one-line summary.
    pub fn load_url(&self, url: String, on_event: Function) -> Promise {
        self.load(Source::Url(url), on_event)
    }

    fn load(&self, source: Source, on_event: Function) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let mut st = inner.try_borrow_mut().map_err(|_| busy())?;
            st.loaded = None; // free the old model's buffers first
            let gpu = st.gpu.clone();
            let mut rep = JsReport::new(on_event);
            let loaded = app::load(&gpu, &source, app::dtype(&gpu), &mut rep)
                .await
                .map_err(err)?;
            for n in loaded.loaded.model.notes() {
                rep.note(&n);
            }
            let summary = loaded.summary();
            st.loaded = Some(loaded);
            Ok(summary.into())
        })
    }

    /// Translates `image` (PNG or JPEG bytes named `name`) with the options
    /// in `options_json` (see `app::WebOptions`; `prompts` is required),
    /// until `cancel` is cancelled. Resolves to `{width, height, source:
    /// Uint8Array PNG of the image as processed, images: [Uint8Array PNG
    /// carrying its parameters], phases: [[name, seconds]], unet_evals,
    /// used_store, peak_bytes}`; rejects with an error named "AbortError"
    /// when cancelled.
    pub fn translate(
        &self,
        image: Vec<u8>,
        name: String,
        options_json: String,
        cancel: &Cancel,
        on_event: Function,
    ) -> Promise {
        let inner = self.inner.clone();
        let cancel = cancel.0.clone();
        future_to_promise(async move {
            let st = inner.try_borrow_mut().map_err(|_| busy())?;
            let loaded = st
                .loaded
                .as_ref()
                .ok_or_else(|| err("load a model first".into()))?;
            let opts = WebOptions::from_json(&options_json).map_err(err)?;
            let mut rep = JsReport {
                on_event,
                cancel: Some(cancel),
            };
            let out = match app::translate(&st.gpu, loaded, &name, &image, &opts, &mut rep).await {
                Ok(out) => out,
                Err(TranslateError::Failed(msg)) => return Err(err(msg)),
                Err(TranslateError::Cancelled) => {
                    let e = js_sys::Error::new("cancelled");
                    e.set_name("AbortError");
                    return Err(e.into());
                }
            };
            let o = Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v);
            set("width", out.width.into())?;
            set("height", out.height.into())?;
            set("source", Uint8Array::from(out.source.as_slice()).into())?;
            let images: Array = out
                .pngs
                .iter()
                .map(|p| Uint8Array::from(p.as_slice()))
                .collect();
            set("images", images.into())?;
            let phases: Array = out
                .stats
                .phases
                .iter()
                .map(|(n, s)| Array::of2(&n.into(), &(*s).into()))
                .collect();
            set("phases", phases.into())?;
            set("unet_evals", out.stats.unet_evals.into())?;
            set("used_store", out.stats.used_store.into())?;
            set("peak_bytes", (out.stats.peak_bytes as f64).into())?;
            Ok(o.into())
        })
    }
}
