//! Where a model's files come from in the browser: the files of a file input
//! (a picked diffusers folder, or a single checkpoint with its tokenizer
//! files), or a URL (a diffusers folder served over HTTP, Hugging Face's
//! `resolve/main` included). Files are read on demand, one at a time, in
//! chunks straight into their final buffer: a file's bytes are held once in
//! wasm memory and dropped when its network is on the GPU.

use std::collections::BTreeMap;

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, ReadableStreamDefaultReader, RequestInit, Response, WorkerGlobalScope};

/// Bytes read per `Blob.slice` (so no JS ArrayBuffer holds a whole file).
const CHUNK: usize = 32 << 20;

use pnp::models::files::{FileSource, ReadProgress};
use pnp::models::loader::ModelLayout;

pub enum Source {
    /// Picked files by relative path ("sd15/unet/config.json" or "model.safetensors").
    Files(BTreeMap<String, Blob>),
    /// The base URL of a diffusers folder.
    Url(String),
}

/// A JS exception or rejection as text.
pub fn js_text(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

impl Source {
    /// The model's root inside the picked files: the folder holding
    /// `unet/config.json` ("" when the paths start there), or None when
    /// there is no diffusers folder among them.
    pub fn folder_root(&self) -> Option<String> {
        match self {
            Source::Url(_) => Some(String::new()),
            Source::Files(files) => files.keys().find_map(|p| {
                let p = format!("/{p}");
                p.strip_suffix("/unet/config.json")
                    .map(|root| root.trim_start_matches('/').to_string())
            }),
        }
    }

    /// The one `.safetensors` file among the picked files, for a single-file checkpoint.
    pub fn single_checkpoint(&self) -> Result<String, String> {
        let Source::Files(files) = self else {
            return Err("a URL must point at a diffusers folder (the folder holding model_index.json, unet/, vae/, text_encoder/ and tokenizer/)".into());
        };
        let found: Vec<&String> = files
            .keys()
            .filter(|p| p.ends_with(".safetensors"))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no model among the picked files ({}): pick a diffusers folder, or one .safetensors checkpoint",
                files.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            _ => Err("several .safetensors files but no diffusers folder (no unet/config.json): pick the folder itself, or a single checkpoint".into()),
        }
    }

    /// A file picked by base name anywhere in the selection (tokenizer files
    /// beside a single checkpoint).
    pub fn find_by_name(&self, name: &str) -> Option<String> {
        let Source::Files(files) = self else {
            return None;
        };
        files
            .keys()
            .find(|p| p.rsplit('/').next() == Some(name))
            .cloned()
    }

    /// Where the model's parts are among the picked files or at the URL.
    pub fn layout(&self) -> Result<ModelLayout, String> {
        if let Some(root) = self.folder_root() {
            return Ok(ModelLayout::Folder { root });
        }
        let file = self.single_checkpoint()?;
        let vocab = || {
            self.find_by_name("vocab.json")
                .filter(|_| self.find_by_name("merges.txt").is_some())
        };
        let Some(tokenizer) = self.find_by_name("tokenizer.json").or_else(vocab) else {
            return Err(format!(
                "{file} is a single-file checkpoint, which carries no tokenizer: pick vocab.json and \
                 merges.txt (from the tokenizer/ folder of a diffusers copy of the same family) \
                 together with it, or pick a diffusers folder"
            ));
        };
        let dir = tokenizer
            .rsplit_once('/')
            .map_or("", |(d, _)| d)
            .to_string();
        Ok(ModelLayout::SingleFile {
            file,
            tokenizer_dir: Some(dir),
            config_dir: None,
        })
    }
}

impl FileSource for Source {
    async fn read(
        &self,
        rel: &str,
        progress: &mut ReadProgress<'_>,
    ) -> Result<Option<Vec<u8>>, String> {
        let what = self.describe(rel);
        match self {
            Source::Files(files) => match files.get(rel) {
                None => Ok(None),
                Some(blob) => read_blob(blob, &what, progress).await.map(Some),
            },
            Source::Url(_) => fetch(&what, "GET", progress).await,
        }
    }

    async fn exists(&self, rel: &str) -> Result<bool, String> {
        match self {
            Source::Files(files) => Ok(files.contains_key(rel)),
            Source::Url(_) => {
                let found = fetch(&self.describe(rel), "HEAD", &mut |_, _| {}).await?;
                Ok(found.is_some())
            }
        }
    }

    fn describe(&self, rel: &str) -> String {
        match self {
            Source::Files(_) => rel.to_string(),
            Source::Url(base) => format!("{}/{rel}", base.trim_end_matches('/')),
        }
    }
}

/// What to say when `n` bytes of `what` do not fit in the tab's memory.
fn no_room(n: usize, what: &str) -> String {
    format!(
        "{what} ({} MiB) does not fit in this tab's memory (wasm32 allows 4 GiB in all): use the fp16 weights",
        n >> 20
    )
}

/// Room for `n` bytes, or a message that says the tab has no room.
fn buffer(n: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| no_room(n, what))?;
    Ok(out)
}

async fn read_blob(
    blob: &Blob,
    what: &str,
    progress: &mut ReadProgress<'_>,
) -> Result<Vec<u8>, String> {
    let n = blob.size() as usize;
    let mut out = buffer(n, what)?;
    out.resize(n, 0);
    let mut at = 0;
    while at < n {
        let end = (at + CHUNK).min(n);
        let part = blob
            .slice_with_f64_and_f64(at as f64, end as f64)
            .map_err(js_text)?;
        let ab = JsFuture::from(part.array_buffer())
            .await
            .map_err(|e| format!("cannot read {what}: {}", js_text(e)))?;
        Uint8Array::new(&ab).copy_to(&mut out[at..end]);
        at = end;
        progress(at, n);
    }
    Ok(out)
}

/// `method` (GET or HEAD) `url`, the body streamed into one buffer; None on 404.
async fn fetch(
    url: &str,
    method: &str,
    progress: &mut ReadProgress<'_>,
) -> Result<Option<Vec<u8>>, String> {
    let fail = |e: JsValue| format!("cannot fetch {url}: {}", js_text(e));
    let init = RequestInit::new();
    init.set_method(method);
    // The page loads in its worker; the wasm-bindgen tests in a window.
    let global = js_sys::global();
    let request = match global.dyn_ref::<WorkerGlobalScope>() {
        Some(worker) => worker.fetch_with_str_and_init(url, &init),
        None => global
            .unchecked_into::<web_sys::Window>()
            .fetch_with_str_and_init(url, &init),
    };
    let resp: Response = JsFuture::from(request)
        .await
        .map_err(fail)?
        .dyn_into()
        .map_err(fail)?;
    if resp.status() == 404 {
        return Ok(None);
    }
    if !resp.ok() {
        return Err(format!(
            "cannot fetch {url}: HTTP {} {}",
            resp.status(),
            resp.status_text()
        ));
    }
    let total = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    if method == "HEAD" {
        return Ok(Some(Vec::new()));
    }
    let mut out = buffer(total, url)?;
    let Some(body) = resp.body() else {
        return Ok(Some(out));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(fail)?;
        if Reflect::get(&chunk, &"done".into())
            .map_err(fail)?
            .is_truthy()
        {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(fail)?
            .unchecked_into();
        let (at, len) = (out.len(), value.length() as usize);
        out.try_reserve(len).map_err(|_| no_room(at + len, url))?;
        out.resize(at + len, 0);
        value.copy_to(&mut out[at..]);
        progress(out.len(), total);
    }
    Ok(Some(out))
}
