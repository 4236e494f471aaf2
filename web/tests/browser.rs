//! The browser tests: run by `wasm-bindgen-test-runner` in headless Chromium
//! on WebGPU (SwiftShader on a machine without a GPU; see `.ci/run`).
//!
//! - Every kernel against the same PyTorch fixtures and tolerances as the
//!   native tests (`kernels-tests/kernel_cases.rs`).
//! - One end-to-end PnP translation of the tiny SD1.5 model through the
//!   page's own code path (`app::load` from Blobs, `app::translate` from PNG
//!   bytes), against tools/reference_pnp.py's latents and image.
#![cfg(target_arch = "wasm32")]

#[path = "../../kernels-tests/common/check.rs"]
pub mod check;
/// The path `kernel_cases.rs` imports its helpers by, as in the native tests.
mod common {
    pub use super::check;
}
#[path = "../../kernels-tests/kernel_cases.rs"]
mod cases;

use std::collections::BTreeMap;
use std::sync::Arc;

use check::*;
use js_sys::{Array, Uint8Array};
use pnp::gpu::Gpu;
use pnp::progress::{Progress, Quiet};
use pnp_web::app::{self, WebOptions};
use pnp_web::source::Source;
use serde_json::Value as Json;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Fixture bytes compiled into the test module (the browser has no files).
macro_rules! fixture {
    ($rel:literal) => {
        include_bytes!(concat!("../../kernels-tests/fixtures/", $rel))
    };
}

async fn gpu() -> Arc<Gpu> {
    let g = app::open(false).await.expect("WebGPU adapter");
    web_sys::console::log_1(&format!("adapter: {}", g.describe()).into());
    g
}

async fn kernel(
    name: &str,
    bytes: &[u8],
    case: impl AsyncFnOnce(&Arc<Gpu>, &Fixture, &[pnp::gpu::DType]) -> Failures,
) {
    let g = gpu().await;
    let f = Fixture::from_bytes(name, bytes);
    case(&g, &f, &dtypes_of(&g)).await.finish(name);
}

#[wasm_bindgen_test]
async fn gemm_matches_torch() {
    kernel("gemm", fixture!("gemm.safetensors"), cases::gemm).await;
}

#[wasm_bindgen_test]
async fn conv2d_matches_torch() {
    kernel("conv2d", fixture!("conv2d.safetensors"), cases::conv2d).await;
}

#[wasm_bindgen_test]
async fn group_norm_matches_torch() {
    kernel(
        "group_norm",
        fixture!("groupnorm.safetensors"),
        cases::group_norm,
    )
    .await;
}

#[wasm_bindgen_test]
async fn layer_norm_matches_torch() {
    kernel(
        "layer_norm",
        fixture!("layernorm.safetensors"),
        cases::layer_norm,
    )
    .await;
}

#[wasm_bindgen_test]
async fn softmax_matches_torch() {
    kernel("softmax", fixture!("softmax.safetensors"), cases::softmax).await;
}

#[wasm_bindgen_test]
async fn attention_matches_torch() {
    kernel(
        "attention",
        fixture!("attention.safetensors"),
        cases::attention,
    )
    .await;
}

#[wasm_bindgen_test]
async fn elementwise_matches_torch() {
    kernel(
        "elementwise",
        fixture!("elementwise.safetensors"),
        cases::elementwise,
    )
    .await;
}

#[wasm_bindgen_test]
async fn layout_and_timestep_match_torch() {
    kernel(
        "misc",
        fixture!("misc.safetensors"),
        cases::layout_and_timestep,
    )
    .await;
}

#[wasm_bindgen_test]
async fn tensors_larger_than_a_binding_are_split() {
    let g = gpu().await;
    cases::split_bindings(&g, &dtypes_of(&g))
        .await
        .finish("split bindings");
}

/// A Blob holding `bytes`, as a file input would give.
fn blob(bytes: &[u8]) -> web_sys::Blob {
    let parts = Array::of1(&Uint8Array::from(bytes));
    web_sys::Blob::new_with_u8_array_sequence(&parts).expect("blob")
}

/// Counts what the loader and the pipeline report.
#[derive(Default)]
struct Counted {
    phases: Vec<String>,
    bytes: usize,
}
impl Progress for Counted {
    fn phase(&mut self, name: &str, _: usize) {
        self.phases.push(name.to_string());
    }
    fn tick(&mut self) {}
    fn note(&mut self, _: &str) {}
    fn bytes(&mut self, _: &str, done: usize, total: usize) {
        if done == total {
            self.bytes += total;
        }
    }
}

/// The tiny SD1.5 folder as a folder pick gives it (paths under "sd15-tiny/").
fn sd15_tiny_folder() -> Source {
    macro_rules! file {
        ($rel:literal) => {
            (
                concat!("sd15-tiny/", $rel).to_string(),
                blob(include_bytes!(concat!(
                    "../../kernels-tests/fixtures/models/sd15-tiny/",
                    $rel
                ))),
            )
        };
    }
    let files: BTreeMap<String, web_sys::Blob> = [
        file!("model_index.json"),
        file!("scheduler/scheduler_config.json"),
        file!("text_encoder/config.json"),
        file!("text_encoder/model.safetensors"),
        file!("tokenizer/merges.txt"),
        file!("tokenizer/special_tokens_map.json"),
        file!("tokenizer/tokenizer_config.json"),
        file!("tokenizer/vocab.json"),
        file!("unet/config.json"),
        file!("unet/diffusion_pytorch_model.safetensors"),
        file!("vae/config.json"),
        file!("vae/diffusion_pytorch_model.safetensors"),
    ]
    .into_iter()
    .collect();
    Source::Files(files)
}

/// Same case and tolerance as kernels-tests/pnp.rs: |got - want| <=
/// 1e-4 max|want| + 1e-4 |want| on the final latents; the PNG's 8-bit
/// pixels within half a step (plus 1e-3) of the reference image.
#[wasm_bindgen_test]
async fn pnp_translation_matches_reference_sd15_square() {
    let g = gpu().await;
    let f = Fixture::from_bytes("sd15_square", fixture!("pnp/sd15_square.safetensors"));
    let c: Json = serde_json::from_str(&f.meta["case"]).expect("case metadata");
    assert_eq!(p_str(&c, "model"), "sd15-tiny");
    let mut rep = Counted::default();
    let dtype = pnp::gpu::DType::F32;
    let loaded = app::load(&g, &sd15_tiny_folder(), dtype, &mut rep)
        .await
        .expect("load the tiny model from blobs");
    assert!(rep.bytes > 15 << 20, "read {} bytes of weights", rep.bytes);

    // The fixture image is already 64x64; give the size so no resize happens.
    let png = fixture!("pnp/square.png");
    let size = image_size(png);
    let opts = WebOptions {
        prompts: case_prompts(&c),
        width: Some(size.0),
        height: Some(size.1),
        pnp: case_options(&c),
    };
    let out = app::translate(&g, &loaded, "square.png", png, &opts, &mut Quiet)
        .await
        .expect("translate");
    let mut fails = Failures::default();
    let (_, want) = f.get("final");
    let per = want.len() / opts.prompts.len();
    for (i, got) in out.translation.finals.iter().enumerate() {
        let w = &want[i * per..(i + 1) * per];
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        fails.check(compare(
            &format!("final[{i}]"),
            got,
            w,
            Tol {
                atol: 1e-4 * max,
                rtol: 1e-4,
            },
        ));
    }
    let (_, want_img) = f.get("image");
    let per_img = want_img.len() / opts.prompts.len();
    for (i, png) in out.pngs.iter().enumerate() {
        let got = planar_from_png(png);
        fails.check(compare(
            &format!("image[{i}] (8-bit PNG)"),
            &got,
            &want_img[i * per_img..(i + 1) * per_img],
            Tol {
                atol: 0.5 / 255.0 + 1e-3,
                rtol: 0.0,
            },
        ));
    }
    fails.finish("sd15_square in the browser");
    web_sys::console::log_1(&format!("phases: {:?}", out.stats.phases).into());
}

/// (width, height) from a PNG's IHDR chunk.
fn image_size(png: &[u8]) -> (usize, usize) {
    let w = u32::from_be_bytes(png[16..20].try_into().expect("IHDR")) as usize;
    let h = u32::from_be_bytes(png[20..24].try_into().expect("IHDR")) as usize;
    (w, h)
}

/// A PNG decoded to (3, H, W) floats in [0, 1] (no resize: its own size).
fn planar_from_png(png: &[u8]) -> Vec<f32> {
    let (w, h) = image_size(png);
    pnp::picture::decode("output", png, Some(w), Some(h))
        .expect("our own PNG decodes")
        .0
        .data
}
