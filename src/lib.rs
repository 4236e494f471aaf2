//! Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) on
//! hand-written WGSL compute shaders through wgpu.
//!
//! Layers: [`gpu`] (the only module that knows wgpu's device API), [`graph`]
//! (ops are recorded into a graph, planned once and replayed), [`ops`] (one
//! file per kernel family, beside `shaders/<family>.wgsl`).

// wgpu's WebGPU handles are !Send on wasm32 (one thread); `Arc` keeps one
// type for the device on every target.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench_pipeline;
pub mod gpu;
pub mod graph;
pub mod models;
pub mod ops;
pub mod picture;
pub mod pnp;
