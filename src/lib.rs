//! Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) on
//! hand-written WGSL compute shaders through wgpu.
//!
//! Layers, each using only those before it: [`gpu`] (the only module that
//! knows wgpu's device API), [`graph`] (ops are recorded into a graph,
//! planned once and replayed), [`ops`] (one file per kernel family, beside
//! `shaders/<family>.wgsl`), [`models`] (CLIP, UNet and VAE of SD 1.x/2.x,
//! and the one loader), [`pipeline`] (the scheduler, the feature store and
//! the translation). The `pnp` command line (`src/cli/`) and the browser
//! crate (`web/`) sit on top. The algorithm is written out in
//! `docs/ALGORITHM.md`.
//!
//! A translation from a diffusers folder on disk:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pnp::gpu::{DType, Gpu, GpuOptions};
//! use pnp::models::{files::Disk, loader, locate::resolve, nn::Ctx};
//! use pnp::pipeline::{Pipeline, PnpOptions, scheduler::Ddim};
//! use pnp::progress::Quiet;
//!
//! let gpu = pollster::block_on(Gpu::new(&GpuOptions::default()))?;
//! let dtype = DType::F32;
//! let layout = resolve("stable-diffusion-v1-5")?.layout(None);
//! let cx = Ctx { gpu: &gpu, dtype };
//! let m = pollster::block_on(loader::load_model(&Disk, &layout, cx, &mut Quiet))?;
//! let scheduler = Ddim::from_optional_config(m.scheduler_config.as_ref())?;
//! let mut pipe = Pipeline::new(gpu.clone(), &m.model, &m.tokenizer, scheduler, dtype);
//!
//! let bytes = std::fs::read("photo.jpg")?;
//! let (px, _notes) = pnp::picture::decode("photo.jpg", &bytes, None, None)?;
//! let size = [px.height, px.width];
//! let opts = PnpOptions::default();
//! let out = pollster::block_on(pipe.translate(&px.data, size, &["a photo of a bronze statue"], &opts, &mut Quiet))?;
//! std::fs::write("statue.png", pnp::picture::encode_png(&out.images[0], px.height, px.width)?)?;
//! # Ok(())
//! # }
//! ```

// wgpu's WebGPU handles are !Send on wasm32 (one thread); `Arc` keeps one
// type for the device on every target.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod edits;
#[doc(hidden)]
pub mod fuzz;
pub mod gpu;
pub mod graph;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod picture;
pub mod piebench;
pub mod pipeline;
pub mod progress;
pub mod rand;
