//! Shared native test helpers: one device for the whole test binary and
//! fixture files written by tools/*.py. What the browser tests share with
//! these lives in `check.rs`.
#![allow(dead_code)]

pub mod check;
pub use check::*;

use pnp::gpu::{DType, Gpu, GpuOptions};
use pnp::graph::{Graph, Value};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(own_gpu).clone()
}

/// A device of its own, for a test that counts the device's submits and
/// reads (the shared one counts every test's running beside it).
pub fn own_gpu() -> Arc<Gpu> {
    let opts = GpuOptions {
        adapter_name: std::env::var("PNP_ADAPTER").ok(),
        ..Default::default()
    };
    let g = pollster::block_on(Gpu::new(&opts))
        .unwrap_or_else(|e| panic!("tests need a GPU adapter: {e}"));
    eprintln!("adapter: {}", g.describe());
    g
}

/// The dtypes the kernels are tested in on this adapter.
pub fn dtypes() -> Vec<DType> {
    dtypes_of(&gpu())
}

/// Marks `y` as the graph's output, plans, runs once and reads `y` back.
pub fn run_graph(g: &mut Graph, y: &Value) -> Vec<f32> {
    pollster::block_on(read_graph(g, y))
}

pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("kernels-tests/fixtures")
        .join(rel)
}

impl Fixture {
    pub fn load(rel: &str) -> Fixture {
        let path = fixture_path(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture::from_bytes(&path.display().to_string(), &bytes)
    }
}
