//! Every kernel variant the ops really request parses and validates with
//! naga and translates to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12).
//!
//! The variants are not listed by hand: the test runs what requests them
//! (short translations of the tiny SD1.5 and SD2 models through both
//! feature-store paths, in every storage type the adapter has, and the
//! attention of the real SD1.5, SD2.1 and VAE head widths from their
//! presets), then asks the device's pipeline cache which keys were made.
//! The same again on devices forced to the small tiles (32 and 16, see
//! `GpuOptions::force_tile`), which only heavy dispatches on a large GPU
//! request otherwise.

mod common;

use common::*;
use pnp::gpu::{DType, Gpu, GpuOptions, INCLUDES, KernelKey, Tensor, shader_source};
use pnp::graph::Graph;
use pnp::models::files::Disk;
use pnp::models::loader::{ModelLayout, load_model};
use pnp::models::nn::Ctx;
use pnp::pipeline::scheduler::Ddim;
use pnp::pipeline::{Pipeline, PnpOptions, StoreMode};
use pnp::progress::Quiet;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Two sampling steps: the first injects features and q/k, the second nothing.
fn short_translation(gpu: &Arc<Gpu>, model: &str, dtype: DType, store: StoreMode) {
    let root = fixture_path("models").join(model);
    let layout = ModelLayout::Folder {
        root: root.to_str().expect("utf-8 path").into(),
    };
    let cx = Ctx { gpu, dtype };
    let m = pollster::block_on(load_model(&Disk, &layout, cx, &mut Quiet)).expect("model");
    let sched = Ddim::from_optional_config(m.scheduler_config.as_ref()).expect("scheduler");
    let mut pipe = Pipeline::new(gpu.clone(), &m.model, &m.tokenizer, sched, dtype);
    let opts = PnpOptions {
        steps: 2,
        inversion_steps: 2,
        pnp_f_t: 0.5,
        pnp_attn_t: 0.5,
        store,
        ..Default::default()
    };
    let pixels = pnp::rand::SplitMix64::new(1).signed_units(3 * 64 * 64);
    let pixels: Vec<f32> = pixels.iter().map(|v| 0.5 + 0.5 * v).collect();
    let mut quiet = Quiet;
    let run = pipe.translate(&pixels, [64, 64], &["a cat"], &opts, &mut quiet);
    pollster::block_on(run).unwrap_or_else(|e| panic!("{model} {dtype:?} {store:?}: {e}"));
}

/// Self-attention of `heads` heads over `width` channels, planned.
fn attention(gpu: &Arc<Gpu>, dtype: DType, width: usize, heads: usize) {
    let mut g = Graph::new(gpu.clone(), dtype);
    let x = Tensor::from_f32(gpu, "x", &vec![0.0; 16 * width], &[1, 16, width], dtype);
    let x = g.external("x", &x);
    let y = pnp::ops::attention(&mut g, &x, &x, &x, heads, false, None).expect("attention");
    g.output(&y);
    g.plan().expect("plan");
}

/// Every variant requested by the models and the real head widths.
fn requested_variants() -> Vec<KernelKey> {
    let mut keys = variants_on(&gpu(), &[StoreMode::Resident, StoreMode::Inline]);
    for tile in [32, 16] {
        let opts = GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            force_tile: Some(tile),
            ..Default::default()
        };
        let forced = pollster::block_on(Gpu::new(&opts)).expect("adapter");
        keys.extend(variants_on(&forced, &[StoreMode::Resident]));
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

fn variants_on(gpu: &Arc<Gpu>, stores: &[StoreMode]) -> Vec<KernelKey> {
    for dtype in dtypes_of(gpu) {
        for model in ["sd15-tiny", "sd2-tiny"] {
            for &store in stores {
                short_translation(gpu, model, dtype, store);
            }
        }
        for (_, unet, vae) in [
            pnp::models::presets::sd15(),
            pnp::models::presets::sd21_base(),
        ] {
            for (i, &c) in unet.block_out_channels.iter().enumerate() {
                attention(gpu, dtype, c, unet.heads(i));
            }
            // The VAE's mid-block attention: one head as wide as its channels.
            attention(
                gpu,
                dtype,
                *vae.block_out_channels.last().expect("channels"),
                1,
            );
        }
    }
    metric_networks(gpu);
    gpu.kernel_keys()
}

/// `pnp eval`'s networks (tiny DINO, CLIP and LPIPS, float32) on one small
/// image: their kernels (the max pool, the LPIPS distance) are requested too.
fn metric_networks(gpu: &Arc<Gpu>) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures/metrics");
    let img = pnp::metrics::Rgb8 {
        width: 40,
        height: 32,
        data: (0..40 * 32 * 3).map(|i| (i * 7 % 256) as u8).collect(),
    };
    let lpips =
        pnp::metrics::lpips::Lpips::open(gpu.clone(), &dir.join("lpips-squeeze-tiny.safetensors"))
            .expect("lpips");
    pollster::block_on(lpips.lpips(&img, &img, None)).expect("lpips");
    let dino = pnp::metrics::dino::Dino::open(gpu.clone(), &dir.join("dino-tiny")).expect("dino");
    pollster::block_on(dino.structure_distance(&img, &img)).expect("dino");
    let clip = pnp::metrics::clip::Clip::open(gpu.clone(), &dir.join("clip-tiny")).expect("clip");
    pollster::block_on(clip.image_embedding(&clip.preprocess(&img))).expect("clip image");
    pollster::block_on(clip.text_embedding("a cat")).expect("clip text");
}

#[test]
fn requested_shader_variants_validate_and_translate() {
    use naga::back::{hlsl, msl, spv};
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let keys = requested_variants();
    let derived = derived_variants(&keys);
    let families: BTreeSet<&str> = keys.iter().chain(&derived).map(|k| k.family).collect();
    eprintln!(
        "{} variants requested, of families {families:?}",
        keys.len()
    );

    // Every shader file is a family some op requested, or included in one.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(dir).expect("shaders/") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        let stem = name.trim_end_matches(".wgsl");
        let included = INCLUDES.iter().any(|(_, files)| files.contains(&stem));
        assert!(
            included || families.contains(stem),
            "shaders/{name}: no op requested it in the models or the real head widths"
        );
    }

    let mut failures = Vec::new();
    eprintln!(
        "{} f16-math and cooperative-matrix variants derived",
        derived.len()
    );
    for key in keys.into_iter().chain(derived) {
        let coop_side = key.consts.iter().find(|c| c.0 == "COOP").map(|c| c.1);
        let src = shader_source(&key);
        let what = format!("{} {:?} {:?}", key.family, key.dtype, key.consts);
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{what}: parse: {}", e.emit_to_string(&src)));
                continue;
            }
        };
        let info =
            match Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module) {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{what}: validate: {}", e.emit_to_string(&src)));
                    continue;
                }
            };
        match spv::write_vec(&module, &info, &spv::Options::default(), None) {
            Err(e) => failures.push(format!("{what}: SPIR-V: {e}")),
            // OpCapability (17, 2 words) CooperativeMatrixKHR (6022).
            Ok(words)
                if coop_side.is_some() && !words.windows(2).any(|w| w == [0x0002_0011, 6022]) =>
            {
                failures.push(format!(
                    "{what}: SPIR-V without the CooperativeMatrixKHR capability"
                ))
            }
            Ok(_) => {}
        }
        // Metal has 8x8 simdgroup matrices only (MSL 2.3); DX12 none.
        if coop_side.is_some_and(|side| side != 8) {
            continue;
        }
        let pipeline = msl::PipelineOptions::default();
        let msl_opts = msl::Options {
            lang_version: (2, 3),
            ..Default::default()
        };
        if let Err(e) = msl::write_string(&module, &info, &msl_opts, &pipeline) {
            failures.push(format!("{what}: MSL: {e}"));
        }
        if coop_side.is_some() {
            continue;
        }
        let mut out = String::new();
        let opts = hlsl::Options::default();
        let popts = hlsl::PipelineOptions::default();
        let mut w = hlsl::Writer::new(&mut out, &opts, &popts);
        if let Err(e) = w.write(&module, &info, None) {
            failures.push(format!("{what}: HLSL: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} shader variant(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The f16-arithmetic form of every GEMM and convolution variant requested,
/// and the cooperative-matrix form of every GEMM, convolution and attention
/// variant (f16 storage), at each configuration a device may pick: 8x8
/// tiles by subgroups of 8 (lavapipe) or 32 (Apple), 16x16 by subgroups of
/// 32 (NVIDIA), both block sides each (GEGLU's never below 32). The
/// requesting device need not have cooperative matrices.
fn derived_variants(keys: &[KernelKey]) -> Vec<KernelKey> {
    let mut out: Vec<KernelKey> = Vec::new();
    for key in keys.iter().filter(|k| k.family == "attention") {
        let Some(&(_, d)) = key.consts.iter().find(|c| c.0 == "HEAD_DIM") else {
            continue;
        };
        for (side, sg) in [(8, 8), (8, 32), (16, 32)] {
            let k = KernelKey {
                family: "attention_coop",
                dtype: DType::F16,
                consts: vec![("HEAD_DIM", d), ("COOP", side), ("SG", sg)],
                bindings: vec![
                    (1, pnp::gpu::Access::ReadWrite),
                    (3, pnp::gpu::Access::Read),
                    (4, pnp::gpu::Access::Read),
                    (5, pnp::gpu::Access::Read),
                ],
                ..key.clone()
            };
            if !keys.contains(&k) && !out.contains(&k) {
                out.push(k);
            }
        }
    }
    // The columns of every convolution, written out (f16, both forms).
    if keys.iter().any(|k| k.family == "conv") {
        for cat in [0, 1] {
            let mut bindings = vec![
                (1, pnp::gpu::Access::ReadWrite),
                (2, pnp::gpu::Access::Read),
            ];
            if cat == 1 {
                bindings.push((3, pnp::gpu::Access::Read));
            }
            let k = KernelKey {
                family: "im2col",
                entry: "main",
                dtype: DType::F16,
                consts: vec![("CAT", cat)],
                bindings,
            };
            if !keys.contains(&k) && !out.contains(&k) {
                out.push(k);
            }
        }
    }
    for key in keys.iter().filter(|k| matches!(k.family, "gemm" | "conv")) {
        // The f16-arithmetic form of the ALU tiles (F16_MATH).
        let mut consts: Vec<(&'static str, u32)> = key
            .consts
            .iter()
            .copied()
            .filter(|c| !matches!(c.0, "COOP" | "SG" | "F16_MATH" | "DIRECT_A" | "DIRECT_B"))
            .collect();
        consts.push(("F16_MATH", 1));
        let k = KernelKey {
            dtype: DType::F16,
            consts,
            ..key.clone()
        };
        if !keys.contains(&k) && !out.contains(&k) {
            out.push(k);
        }
        let geglu = key.consts.contains(&("ACT", 4));
        // Operands staged, and straight from storage where the family can
        // (both GEMM operands; the convolution's weight, and its columns
        // where written out, im2col.wgsl, which the IM2COL form reads).
        let directs: &[(u32, u32)] = match key.family {
            "gemm" => &[(0, 0), (1, 1)],
            _ => &[(0, 0), (1, 0), (1, 1)],
        };
        for ((side, sg), &(da, db)) in [(8, 8), (8, 32), (16, 32)]
            .into_iter()
            .flat_map(|c| directs.iter().map(move |d| (c, d)))
        {
            for tile in [4 * side, 2 * side] {
                if geglu && tile < 32 {
                    continue;
                }
                let mut consts: Vec<(&'static str, u32)> = key
                    .consts
                    .iter()
                    .copied()
                    .filter(|c| {
                        !matches!(
                            c.0,
                            "TILE" | "COOP" | "SG" | "F16_MATH" | "DIRECT_A" | "DIRECT_B"
                        )
                    })
                    .collect();
                consts.extend([
                    ("TILE", tile),
                    ("COOP", side),
                    ("SG", sg),
                    ("DIRECT_A", da),
                    ("DIRECT_B", db),
                ]);
                // A convolution reading its columns binds no second part.
                let cols = key.family == "conv" && db == 1;
                let mut bindings = key.bindings.clone();
                if cols {
                    for c in consts.iter_mut() {
                        match c.0 {
                            "IM2COL" => c.1 = 1,
                            "CAT" => c.1 = 0,
                            _ => {}
                        }
                    }
                    bindings.retain(|b| b.0 != 7);
                }
                let k = KernelKey {
                    dtype: DType::F16,
                    consts,
                    bindings,
                    ..key.clone()
                };
                if !keys.contains(&k) && !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// The performance model's arithmetic (`pnp bench plan`): a GEMM, a
/// convolution and an attention recorded for another device report the
/// FLOPs of their formulas, the bytes of their bindings, and the weights as
/// external bytes; recording for a large binding splits nothing that the
/// small one splits.
#[test]
fn the_performance_model_counts_flops_bytes_and_splits() {
    let gpu = gpu();
    let dt = DType::F32;
    let record = |max_binding: Option<u64>| {
        let mut g = Graph::new(gpu.clone(), dt);
        match max_binding {
            Some(b) => g.model_device(b, 132),
            None => g.set_max_binding(1 << 14),
        }
        let (m, k, n) = (96, 40, 72);
        let x = g.input("x", &[1, m, k], dt);
        let w = g.external("w", &Tensor::empty(&gpu, "w", &[n, k], dt));
        pnp::ops::linear(&mut g, &x, &w, pnp::ops::Epilogue::NONE).expect("linear");
        let img = g.input("img", &[1, 8, 32, 32], dt);
        let cw = g.external("cw", &Tensor::empty(&gpu, "cw", &[16, 8, 3, 3], dt));
        let cb = g.external("cb", &Tensor::empty(&gpu, "cb", &[16], dt));
        pnp::ops::conv2d(&mut g, &img, &cw, &cb, pnp::ops::Conv2d::same(1), None).expect("conv");
        let q = g.input("q", &[2, 50, 64], dt);
        pnp::ops::attention(&mut g, &q, &q, &q, 2, false, None).expect("attention");
        g
    };
    let g = record(Some(1 << 31));
    let d = g.dispatches();
    let flops = |family: &str| -> u64 {
        d.iter()
            .filter(|x| x.family == family)
            .map(|x| x.flops)
            .sum()
    };
    assert_eq!(flops("gemm"), 2 * 96 * 72 * 40);
    assert_eq!(flops("conv"), 2 * 16 * 32 * 32 * 8 * 9);
    // 2 batches, 2 heads of 32, 50 queries by 50 keys: q k^T and p v.
    assert_eq!(flops("attention"), 4 * 2 * 2 * 50 * 50 * 32);
    let gemm = d.iter().find(|x| x.family == "gemm").expect("gemm");
    assert_eq!(
        gemm.bytes,
        4 * (96 * 40 + 72 * 40 + 96 * 72),
        "A, B and C bound once"
    );
    assert_eq!(g.external_bytes(), 4 * (72 * 40 + 16 * 8 * 9 + 16));
    assert!(g.activation_bytes() >= 4 * (96 * 40 + 8 * 32 * 32 + 2 * 50 * 64));
    // The same ops under a 16 KiB binding split into more dispatches.
    let small = record(None);
    assert!(
        small.dispatches().len() > d.len(),
        "{} vs {}",
        small.dispatches().len(),
        d.len()
    );
}

/// Release builds create shader modules without wgpu's runtime checks;
/// `checked_shaders` (or PNP_CHECKED_SHADERS=1, as one CI run sets) keeps
/// them, and the adapter line says so.
#[test]
fn release_builds_drop_the_shader_runtime_checks_unless_asked() {
    let opts = |checked| pnp::gpu::GpuOptions {
        checked_shaders: checked,
        ..Default::default()
    };
    let checked = pollster::block_on(pnp::gpu::Gpu::new(&opts(true))).expect("gpu");
    assert!(checked.checked_shaders());
    assert!(checked.describe().contains("checked shaders"));
    let default = pollster::block_on(pnp::gpu::Gpu::new(&opts(false))).expect("gpu");
    let asked = std::env::var("PNP_CHECKED_SHADERS").is_ok_and(|v| v == "1");
    assert_eq!(default.checked_shaders(), cfg!(debug_assertions) || asked);
}

/// An error no scope catches (wgpu's default handler panics) is kept and
/// returned by the next read as a GpuError, once.
#[test]
fn uncaptured_device_errors_become_errors_not_panics() {
    let gpu = pollster::block_on(pnp::gpu::Gpu::new(&Default::default())).expect("gpu");
    let ok = Tensor::from_f32(&gpu, "ok", &[1.0, 2.0], &[2], DType::F32);
    let too_big = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too big"),
        size: gpu.limits.max_buffer_size + 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    drop(too_big);
    let err = pollster::block_on(ok.to_f32(&gpu)).expect_err("the error was lost");
    assert!(
        matches!(err, pnp::gpu::GpuError::Validation { .. }),
        "{err}"
    );
    assert_eq!(
        pollster::block_on(ok.to_f32(&gpu)).expect("read"),
        [1.0, 2.0]
    );
}

/// The tile rule (`Graph::tile_for`), at the SD shapes the H100 profile
/// found starved: no dispatch of at least 1 GFLOP launches fewer than twice
/// the 132 compute units, and each takes the largest tile that fills them
/// (a 64x64 latent's conv keeps its 64-tiles).
#[test]
fn heavy_dispatches_fill_the_modelled_gpu() {
    // The ALU tiles (a device with cooperative matrices would take its own
    // block sides for f16).
    let opts = GpuOptions {
        adapter_name: std::env::var("PNP_ADAPTER").ok(),
        disable_coop: true,
        ..Default::default()
    };
    let gpu = pollster::block_on(Gpu::new(&opts)).expect("adapter");
    let dt = DType::F16;
    if !gpu.caps.shader_f16 {
        eprintln!("skipped: no shader-f16");
        return;
    }
    let mut g = Graph::new(gpu.clone(), dt);
    g.model_device(1 << 31, 132);
    let weight = |g: &mut Graph, name: &str, shape: &[usize]| {
        g.external(name, &Tensor::empty(&gpu, name, shape, dt))
    };
    let conv = |g: &mut Graph, c: usize, side: usize, stride: usize| {
        let x = g.input("x", &[1, c, side, side], dt);
        let w = weight(g, "w", &[c, c, 3, 3]);
        let b = weight(g, "b", &[c]);
        let op = pnp::ops::Conv2d {
            stride,
            pad: [1; 4],
        };
        pnp::ops::conv2d(g, &x, &w, &b, op, None).expect("conv");
    };
    conv(&mut g, 1280, 8, 1); // the 8x8 ResNets: 80 workgroups at 32
    conv(&mut g, 640, 32, 2); // the 32 -> 16 downsampler: 160 at 32
    conv(&mut g, 320, 64, 1); // 320 at 64: stays
    // The 8x8 GEGLU projection: 160 workgroups at 64.
    let x = g.input("tokens", &[1, 64, 1280], dt);
    let w = weight(&mut g, "ff", &[2 * 5120, 1280]);
    let bias = weight(&mut g, "ff_b", &[2 * 5120]);
    let epi = pnp::ops::Epilogue {
        bias: Some(&bias),
        act: pnp::ops::Act::Geglu(5120),
        residual: None,
    };
    pnp::ops::linear(&mut g, &x, &w, epi).expect("geglu");
    // SD 1.5's self-attention at 32x32: 8 heads of 40, 256 workgroups at 32.
    let q = g.input("q", &[1, 1024, 320], dt);
    pnp::ops::attention(&mut g, &q, &q, &q, 8, false, None).expect("attention");
    let d = g.dispatches();
    let groups: Vec<(&str, u64, u64)> = d
        .iter()
        .map(|x| (x.family, x.flops / 100_000_000, x.workgroups))
        .collect();
    for x in &d {
        assert!(
            x.flops < 1_000_000_000 || x.workgroups >= 264,
            "a {} of {} MFLOP launches {} workgroups: {groups:?}",
            x.family,
            x.flops / 1_000_000,
            x.workgroups
        );
    }
    let wg: Vec<u64> = d.iter().map(|x| x.workgroups).collect();
    // 16-tiles, 16-tiles, 64-tiles, GEGLU at 32, 16 queries per workgroup.
    assert_eq!(wg, [80 * 4, 40 * 16, 5 * 64, 2 * 320, 64 * 8], "{groups:?}");
}
