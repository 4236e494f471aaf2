//! Kernel variants chosen by timing them on the device (autotune).
//!
//! A GEMM, convolution or attention dispatch can run as several variants of
//! one kernel (cooperative matrices or ALU tiles, tile sides, queries per
//! workgroup) that compute the same thing; which is fastest depends on the
//! adapter and the shape, and no rule written for one GPU holds on the next.
//! [`Graph::tune`](crate::graph::Graph::tune) times each variant of each
//! distinct dispatch once and keeps the fastest here; plans made afterwards
//! use it. The winners persist in a JSON file per adapter, driver and crate
//! version in the user's cache directory, so a shape is timed once per
//! machine; the browser keeps them in memory for the session.
//!
//! The choice is keyed by the dispatch's kernel family, storage type, its
//! non-variant constants (epilogue, head dimension) and its uniform words
//! (shapes, strides, offsets): two dispatches with the same key do the same
//! work on buffers of the same sizes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Autotune settings for [`GpuOptions`](super::GpuOptions).
#[derive(Clone, Debug, Default)]
pub struct Autotune {
    /// The folder of the cache file ([`Autotune::file_in`]: one per adapter,
    /// driver and version); `None` keeps the winners in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Also on a CPU adapter (lavapipe, SwiftShader), where timing every
    /// variant costs more than it gains; off, such a device has no tuner.
    pub on_cpu: bool,
}

impl Autotune {
    /// The cache file for an adapter: `autotune-<version>-<hash>.json` in
    /// `dir`, the hash over the adapter's name, vendor and device ids,
    /// driver, driver info and backend.
    pub fn file_in(dir: &Path, info: &wgpu::AdapterInfo) -> PathBuf {
        dir.join(format!(
            "autotune-{}-{:016x}.json",
            env!("CARGO_PKG_VERSION"),
            fnv1a(adapter_id(info).as_bytes())
        ))
    }
}

/// The user's cache directory for this program, where one exists:
/// `$PNP_CACHE_DIR`, else `$XDG_CACHE_HOME/pnp`, else the platform's
/// (`~/.cache/pnp`, `~/Library/Caches/pnp`, `%LOCALAPPDATA%\pnp\cache`).
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("PNP_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(dir.join("pnp"));
    }
    if cfg!(target_os = "windows") {
        return var("LOCALAPPDATA").map(|d| d.join("pnp").join("cache"));
    }
    let home = var("HOME")?;
    if cfg!(target_os = "macos") {
        Some(home.join("Library/Caches/pnp"))
    } else {
        Some(home.join(".cache/pnp"))
    }
}

fn adapter_id(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} | vendor {:#x} device {:#x} | {} | {} | {:?}",
        info.name, info.vendor, info.device, info.driver, info.driver_info, info.backend
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The timed variants of one dispatch and the winner.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    /// The winner, as its constants read ("TILE=64 COOP=16").
    pub variant: String,
    /// Each variant timed, with its microseconds per dispatch.
    pub timings: Vec<(String, f64)>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    pnp: String,
    adapter: String,
    choices: BTreeMap<String, Choice>,
}

/// What autotune did so far on a device, for the run's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TuneSummary {
    pub cache_file: Option<PathBuf>,
    /// Distinct dispatches timed on this run.
    pub timed: usize,
    /// Distinct dispatches whose winner came from the cache file or an
    /// earlier graph of this run.
    pub reused: usize,
    /// Seconds spent timing.
    pub seconds: f64,
    /// The first problem: a cache file that could not be read or written,
    /// a kernel variant the driver refused, a failed measurement; the run
    /// goes on without it.
    pub warning: Option<String>,
    /// Variant chosen per kernel family and variant, with the number of
    /// distinct dispatches that took it ("conv TILE=64 COOP=16": 12).
    pub chosen: BTreeMap<String, usize>,
}

impl TuneSummary {
    /// Counts one distinct dispatch of family `label` that runs `c`'s winner.
    fn count(&mut self, label: &str, c: &Choice) {
        *self
            .chosen
            .entry(format!("{label} {}", c.variant))
            .or_default() += 1;
    }
}

#[derive(Default)]
struct State {
    choices: BTreeMap<String, Choice>,
    dirty: bool,
    summary: TuneSummary,
    /// Keys used by this run's graphs (each counted once in `chosen`).
    used: BTreeSet<String>,
}

/// The winners known on one device; see the module documentation.
pub struct Tuner {
    adapter: String,
    file: Option<PathBuf>,
    state: Mutex<State>,
}

impl Tuner {
    /// A tuner for the adapter `info`, with the winners of its cache file
    /// where it exists and was written for this adapter and version. A file
    /// that cannot be parsed is noted in the summary and replaced on save.
    pub fn new(opts: &Autotune, info: &wgpu::AdapterInfo) -> Tuner {
        let adapter = adapter_id(info);
        let file = opts.cache_dir.as_ref().map(|d| Autotune::file_in(d, info));
        let mut state = State::default();
        state.summary.cache_file = file.clone();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<CacheFile>(&bytes) {
                    Ok(f) if f.adapter == adapter && f.pnp == env!("CARGO_PKG_VERSION") => {
                        state.choices = f.choices;
                    }
                    Ok(_) => {
                        state.summary.warning = Some(format!(
                            "{} was written for another adapter or version; timing again",
                            path.display()
                        ))
                    }
                    Err(e) => {
                        state.summary.warning = Some(format!(
                            "{} is not a readable autotune cache ({e}); timing again",
                            path.display()
                        ))
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    state.summary.warning = Some(format!("cannot read {}: {e}", path.display()))
                }
            }
        }
        Tuner {
            adapter,
            file,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The winner for `key`, if known.
    pub fn choice(&self, key: &str) -> Option<Choice> {
        self.state().choices.get(key).cloned()
    }

    /// Notes that a graph uses the known winner of `key` (`label`: its
    /// family), for the summary.
    pub(crate) fn reuse(&self, key: &str, label: &str) {
        let mut s = self.state();
        if let Some(c) = s.choices.get(key).cloned()
            && s.used.insert(key.to_string())
        {
            s.summary.reused += 1;
            s.summary.count(label, &c);
        }
    }

    /// Keeps a newly timed winner.
    pub(crate) fn record(&self, key: String, label: &str, choice: Choice, seconds: f64) {
        let mut s = self.state();
        s.summary.timed += 1;
        s.summary.seconds += seconds;
        s.summary.count(label, &choice);
        s.used.insert(key.clone());
        s.choices.insert(key, choice);
        s.dirty = true;
    }

    /// Writes the winners to the cache file when new ones were timed
    /// (through a temporary file and a rename, so a reader never sees half
    /// a file). A failure is noted in the summary, never an error: the
    /// run has its winners either way.
    pub fn save(&self) {
        let mut s = self.state();
        let Some(path) = &self.file else { return };
        if !s.dirty {
            return;
        }
        let file = CacheFile {
            pnp: env!("CARGO_PKG_VERSION").to_string(),
            adapter: self.adapter.clone(),
            choices: s.choices.clone(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        match write() {
            Ok(()) => s.dirty = false,
            Err(e) => {
                s.summary.warning = Some(format!("cannot write {}: {e}", path.display()));
            }
        }
    }

    /// Notes a variant the driver refused or a measurement that failed; the
    /// run goes on without it.
    pub(crate) fn warn(&self, what: String) {
        let mut s = self.state();
        s.summary.warning.get_or_insert(what);
    }

    pub fn summary(&self) -> TuneSummary {
        self.state().summary.clone()
    }
}
