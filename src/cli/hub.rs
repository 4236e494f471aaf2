//! Models from the Hugging Face Hub on first use.
//!
//! A `--model` that is a repo id ("stabilityai/stable-diffusion-2-1-base")
//! and not a path is listed on the Hub, and the files a run reads
//! ([`plan`]) are fetched into the cache layout `huggingface_hub` writes and
//! our offline lookup reads: `<cache>/models--org--name/` holding
//! `blobs/<hash>`, `snapshots/<commit>/<path>` (links to the blobs) and
//! `refs/main`. The transfers are `hf-hub`'s blocking client's: ranged
//! requests, an interrupted file resumed from its `<blob>.sync.part`, by the
//! client's retries within a run or by the next run. Each file fetched is
//! then checked against the size and hash the listing gives (SHA-256 for LFS
//! files, the git blob SHA-1 for the rest) and fetched once more if it does
//! not match. A file already in the snapshot with the listed size is used as
//! it is. Offline (`--offline`, `HF_HUB_OFFLINE=1`) nothing is requested.
//! What happens is said on stderr, whatever progress display the command has.

use anyhow::{Context, Result, anyhow, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use pnp::gpu::DType;
use pnp::models::locate::{self, ModelSource};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod plan;
pub use plan::plan;

/// Where the Hub is and what we may do with it, from the environment
/// variables `huggingface_hub` reads.
pub struct Hub {
    /// `HF_ENDPOINT`, else https://huggingface.co.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub.
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token` names
    /// (where `huggingface-cli login` writes it).
    pub token: Option<String>,
    /// `--offline` or `HF_HUB_OFFLINE` set to 1, true, yes or on.
    pub offline: bool,
}

impl Hub {
    pub fn from_env(offline: bool) -> Hub {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache").join("huggingface")));
        let token = var("HF_TOKEN").or_else(|| {
            let file = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join("token")))?;
            let t = std::fs::read_to_string(file).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let env_offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| ["1", "true", "yes", "on"].contains(&v.to_lowercase().trim()));
        Hub {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache: locate::hub_cache_dir(),
            token,
            offline: offline || env_offline,
        }
    }
}

/// Where `--model` points, fetching a repo id's files first when they are
/// not in the cache. `dtype` picks the weight variant ([`plan`]).
pub fn locate(model: &str, dtype: DType, offline: bool) -> Result<ModelSource> {
    if Path::new(model).exists() || !locate::is_repo_id(model) {
        return Ok(locate::resolve(model)?);
    }
    let hub = Hub::from_env(offline);
    Ok(ModelSource::Folder(fetch(&hub, model, dtype)?))
}

/// One file of a repo, as the Hub's listing with `blobs=true` gives it.
#[derive(Clone, Debug, Deserialize)]
pub struct Entry {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Lfs {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Entry>,
}

impl Entry {
    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }

    /// Checks `path` against the listed size and hash.
    fn check(&self, path: &Path) -> Result<(), String> {
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if let Some(want) = self.size()
            && len != want
        {
            return Err(format!("{len} bytes where the Hub lists {want}"));
        }
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let (algo, want, got) = match (&self.lfs, &self.blob_id) {
            (Some(lfs), _) => (
                "SHA-256",
                lfs.sha256.clone(),
                hash::<Sha256>(&mut file, None),
            ),
            // A git blob's id: SHA-1 of "blob <length>\0" and the bytes.
            (None, Some(id)) => ("git SHA-1", id.clone(), hash::<Sha1>(&mut file, Some(len))),
            (None, None) => return Ok(()),
        };
        let got = got.map_err(|e| e.to_string())?;
        if !got.eq_ignore_ascii_case(&want) {
            return Err(format!("{algo} {got} where the Hub lists {want}"));
        }
        Ok(())
    }
}

fn hash<D: Digest>(file: &mut std::fs::File, git_blob_len: Option<u64>) -> std::io::Result<String> {
    let mut d = D::new();
    if let Some(len) = git_blob_len {
        d.update(format!("blob {len}\0").as_bytes());
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    Ok(d.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The snapshot folder of `repo` holding every file [`plan`] names, fetched
/// where missing.
pub fn fetch(hub: &Hub, repo: &str, dtype: DType) -> Result<PathBuf> {
    if hub.offline {
        return offline_snapshot(hub, repo, dtype);
    }
    let api = ApiBuilder::from_cache(Cache::new(hub.cache.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(false)
        .with_retries(3)
        .build()
        .map_err(|e| api_error(hub, repo, None, e))?;
    let api = api.repo(Repo::new(repo.to_string(), RepoType::Model));
    let listing: Listing = match api.info_request().query("blobs", "true").call() {
        Ok(r) => r.into_json().with_context(|| {
            format!(
                "{}: the Hub's listing of {repo} is not the JSON expected",
                hub.endpoint
            )
        })?,
        Err(ureq::Error::Transport(t)) => {
            // As huggingface_hub does: no connection, a cached copy is used.
            if let Ok(dir) = offline_snapshot(hub, repo, dtype) {
                eprintln!(
                    "note: could not reach {} ({t}); using the cached snapshot {}",
                    hub.endpoint,
                    dir.display()
                );
                return Ok(dir);
            }
            bail!(
                "could not reach {} to download {repo} ({t}); check the connection (HF_ENDPOINT \
                 names a mirror), or pass a local diffusers folder",
                hub.endpoint
            )
        }
        Err(ureq::Error::Status(code, r)) => return Err(refused(hub, repo, None, code, &r)),
    };
    let names: Vec<&str> = listing
        .siblings
        .iter()
        .map(|e| e.rfilename.as_str())
        .collect();
    let files = plan(&names, dtype).map_err(|e| anyhow!("{repo}: {e}"))?;
    let snapshot = hub
        .cache
        .join(repo_folder(repo))
        .join("snapshots")
        .join(&listing.sha);
    let entry = |f: &str| {
        listing
            .siblings
            .iter()
            .find(|e| e.rfilename == f)
            .cloned()
            .ok_or_else(|| {
                anyhow!("{repo}: {f} is named by its shard index but is not in the repo")
            })
    };
    let mut todo: Vec<Entry> = files.iter().map(|f| entry(f)).collect::<Result<_>>()?;
    let mut got = Got::default();
    got.fetch(hub, repo, &api, &snapshot, &todo)?;
    // The shards a chosen index names, once the index is here.
    let mut shards = Vec::new();
    for index in todo.iter().filter(|e| e.rfilename.ends_with(".index.json")) {
        let path = snapshot.join(&index.rfilename);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{}: not JSON", path.display()))?;
        let dir = Path::new(&index.rfilename)
            .parent()
            .unwrap_or(Path::new(""));
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| anyhow!("{}: no weight_map object", path.display()))?;
        for shard in map.values().filter_map(|s| s.as_str()) {
            let f = dir.join(shard).to_string_lossy().replace('\\', "/");
            if !shards.iter().any(|e: &Entry| e.rfilename == f) {
                shards.push(entry(&f)?);
            }
        }
    }
    got.fetch(hub, repo, &api, &snapshot, &shards)?;
    todo.extend(shards);
    let refs = snapshot.join("../../refs");
    std::fs::create_dir_all(&refs)?;
    std::fs::write(refs.join("main"), &listing.sha)?;
    let total: u64 = todo.iter().filter_map(Entry::size).sum();
    if got.files > 0 {
        eprintln!(
            "{repo}: downloaded {} of {} files ({}) in {:.1} s into {}",
            got.files,
            todo.len(),
            HumanBytes(got.bytes),
            got.seconds,
            snapshot.display()
        );
    } else {
        eprintln!(
            "{repo}: all {} files ({}) in the cache, {}",
            todo.len(),
            HumanBytes(total),
            snapshot.display()
        );
    }
    Ok(snapshot)
}

/// What [`Got::fetch`] downloaded.
#[derive(Default)]
struct Got {
    files: usize,
    bytes: u64,
    seconds: f64,
}

impl Got {
    /// Fetches each of `entries` not already in `snapshot` with its listed size.
    fn fetch(
        &mut self,
        hub: &Hub,
        repo: &str,
        api: &ApiRepo,
        snapshot: &Path,
        entries: &[Entry],
    ) -> Result<()> {
        let missing: Vec<&Entry> = entries.iter().filter(|e| !cached(snapshot, e)).collect();
        if !missing.is_empty() {
            let size: u64 = missing.iter().filter_map(|e| e.size()).sum();
            eprintln!(
                "{repo}: fetching {} file{} ({}) from {} into {}",
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                HumanBytes(size),
                hub.endpoint,
                snapshot.display()
            );
        }
        for (i, e) in missing.iter().enumerate() {
            let file = &e.rfilename;
            let t0 = Instant::now();
            let _lock = lock(hub, repo, e)?;
            if cached(snapshot, e) {
                // Fetched by another process since the list was made.
                continue;
            }
            let bar = file_bar(file, i + 1, missing.len(), e.size());
            for attempt in 1..=2 {
                let path = api
                    .download_with_progress(file, FileBar(bar.clone()))
                    .map_err(|err| api_error(hub, repo, Some(file), err))?;
                if !path.starts_with(snapshot) {
                    bail!(
                        "{repo} changed while it was downloaded ({file} came from another \
                         commit than {}); run the command again",
                        snapshot.display()
                    );
                }
                // hf-hub leaves its <blob>.lock beside the blob; the cache
                // huggingface_hub keeps has none there.
                if let Ok(blob) = std::fs::canonicalize(&path) {
                    let _ = std::fs::remove_file(blob.with_extension("lock"));
                }
                match e.check(&path) {
                    Ok(()) => break,
                    Err(why) if attempt == 1 => {
                        eprintln!("note: {repo}: {file}: {why}; refused, fetching it again");
                        remove_download(&path)?;
                    }
                    Err(why) => bail!(
                        "{repo}: {file}: {why}, twice; the copy on {} may be damaged",
                        hub.endpoint
                    ),
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let bytes = e.size().unwrap_or(0);
            bar.finish();
            if bar.is_hidden() {
                eprintln!(
                    "downloaded {repo}/{file}: {} in {secs:.1} s ({}/s)",
                    HumanBytes(bytes),
                    HumanBytes((bytes as f64 / secs.max(1e-3)) as u64)
                );
            }
            self.files += 1;
            self.bytes += bytes;
            self.seconds += secs;
        }
        Ok(())
    }
}

/// Whether `snapshot` holds `e` with its listed size.
fn cached(snapshot: &Path, e: &Entry) -> bool {
    let have = std::fs::metadata(snapshot.join(&e.rfilename))
        .map(|m| m.len())
        .ok();
    have.is_some() && (e.size().is_none() || have == e.size())
}

/// Holds `<cache>/.locks/models--org--name/<blob>.lock`, where
/// huggingface_hub locks the same download, while a file is fetched: the
/// processes that fetch one model at once (`batch --shard` started N times,
/// say) take turns instead of writing one file together.
fn lock(hub: &Hub, repo: &str, e: &Entry) -> Result<std::fs::File> {
    let dir = hub.cache.join(".locks").join(repo_folder(repo));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let blob = match (&e.lfs, &e.blob_id) {
        (Some(lfs), _) => lfs.sha256.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => e.rfilename.replace('/', "--"),
    };
    let path = dir.join(format!("{blob}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "note: another process is downloading {repo}/{} (it holds {}); waiting for it",
                e.rfilename,
                path.display()
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::Error(err)) => {
            Err(anyhow!("cannot lock {}: {err}", path.display()))
        }
    }
}

fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// A snapshot in the cache, without the network.
fn offline_snapshot(hub: &Hub, repo: &str, dtype: DType) -> Result<PathBuf> {
    let Ok(ModelSource::Folder(dir)) = locate::resolve_with_hub(repo, &hub.cache) else {
        bail!(
            "offline (--offline or HF_HUB_OFFLINE): {repo} is not in the Hugging Face cache {}; \
             run once without offline mode to download it, or pass a local folder",
            hub.cache.display()
        )
    };
    // What a run reads must be there: a download cut short leaves a
    // snapshot without its later files.
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let p = e?.path();
            // Follows the links: one whose blob is gone does not count.
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(_) => files.push(p.strip_prefix(&dir)?.to_string_lossy().replace('\\', "/")),
                Err(_) => {}
            }
        }
    }
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    if let Err(e) = plan(&names, dtype) {
        bail!(
            "offline (--offline or HF_HUB_OFFLINE): {repo}: {e} in the cached snapshot {}; run \
             once without offline mode to fetch it",
            dir.display()
        )
    }
    Ok(dir)
}

/// Removes a download that failed its check: the snapshot's link and the
/// blob it points to.
fn remove_download(path: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(path)?;
    std::fs::remove_file(&blob)?;
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn file_bar(file: &str, k: usize, n: usize, size: Option<u64>) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(size.unwrap_or(0))
        .with_style(style)
        .with_prefix(format!("[{k}/{n}]"))
        .with_message(file.to_string())
}

/// `hf-hub`'s progress callbacks on an indicatif bar. `init` comes again on
/// each retry, followed by the bytes already on disk.
struct FileBar(ProgressBar);

impl hf_hub::api::Progress for FileBar {
    fn init(&mut self, size: usize, _file: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
    }
    fn update(&mut self, n: usize) {
        self.0.inc(n as u64);
    }
    fn finish(&mut self) {}
}

/// A refused request, in words that say what to do.
fn refused(
    hub: &Hub,
    repo: &str,
    file: Option<&str>,
    code: u16,
    r: &ureq::Response,
) -> anyhow::Error {
    let page = format!("{}/{repo}", hub.endpoint);
    let url = r.get_url().to_string();
    let kind = r.header("x-error-code").unwrap_or("");
    let tokens = format!("{}/settings/tokens", hub.endpoint);
    match (code, kind, file) {
        (_, "RepoNotFound", _) | (404, "", None) => anyhow!(
            "{repo}: no such model repo on {} (HTTP {code}); check the id, and for a private repo \
             pass a token with access (HF_TOKEN)",
            hub.endpoint
        ),
        (_, "EntryNotFound", Some(f)) | (404, "", Some(f)) => {
            anyhow!("{repo}: the repo has no file {f} (HTTP {code} for {url})")
        }
        (_, "RevisionNotFound", _) => {
            anyhow!("{repo}: the repo has no revision main (HTTP {code})")
        }
        (401, _, _) if hub.token.is_none() => anyhow!(
            "{repo} is gated or private (HTTP 401): accept its conditions at {page}, then pass a \
             read token: HF_TOKEN=hf_... (made at {tokens}) or `huggingface-cli login`"
        ),
        (401, _, _) => anyhow!(
            "{repo}: the Hub refused the token (HTTP 401): it is wrong or expired; make a new one \
             at {tokens} and set HF_TOKEN"
        ),
        (403, _, _) => anyhow!(
            "{repo} is gated (HTTP 403): the token's account has no access yet; accept the \
             model's conditions at {page} while logged in as that account, then run again"
        ),
        _ => anyhow!("{url}: HTTP {code} {}", r.status_text()),
    }
}

/// An `hf-hub` error, in words that name the repo and file.
fn api_error(hub: &Hub, repo: &str, file: Option<&str>, e: ApiError) -> anyhow::Error {
    let what = match file {
        Some(f) => format!("{repo}/{f}"),
        None => repo.to_string(),
    };
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(code, r) => refused(hub, repo, file, code, &r),
            ureq::Error::Transport(t) => anyhow!(
                "could not download {what} from {} ({t}); what arrived is kept, and the next run \
                 resumes from it",
                hub.endpoint
            ),
        },
        ApiError::TooManyRetries(e) => anyhow!(
            "{what}: the download broke off, and again on each retry (last: {}); what arrived \
             is kept, and the next run resumes from it",
            api_error(hub, repo, file, *e)
        ),
        ApiError::MissingHeader(h) => anyhow!(
            "{what}: the reply from {} lacks the {h} header Hub downloads carry (is HF_ENDPOINT a \
             Hugging Face Hub?)",
            hub.endpoint
        ),
        ApiError::LockAcquisition(p) => anyhow!(
            "{what}: another program holds {}: it is downloading the same file; run again once \
             it is done",
            p.display()
        ),
        ApiError::IoError(io) => anyhow!(
            "{what}: writing into the cache {}: {io}",
            hub.cache.display()
        ),
        e => anyhow!("{what}: {e}"),
    }
}
