//! Every kernel against PyTorch references (kernels-tests/fixtures, written by
//! tools/make_kernel_fixtures.py), in f32 and, where the adapter has
//! SHADER_F16, f16 storage. The cases and their tolerances are in
//! `kernel_cases.rs`, shared with the browser tests.

#[path = "kernel_cases.rs"]
mod cases;
mod common;

use common::*;

#[test]
fn gemm_matches_torch() {
    let f = Fixture::load("gemm.safetensors");
    pollster::block_on(cases::gemm(&gpu(), &f, &dtypes())).finish("gemm");
}

#[test]
fn conv2d_matches_torch() {
    let f = Fixture::load("conv2d.safetensors");
    pollster::block_on(cases::conv2d(&gpu(), &f, &dtypes())).finish("conv2d");
}

#[test]
fn group_norm_matches_torch() {
    let f = Fixture::load("groupnorm.safetensors");
    pollster::block_on(cases::group_norm(&gpu(), &f, &dtypes())).finish("group_norm");
}

#[test]
fn layer_norm_matches_torch() {
    let f = Fixture::load("layernorm.safetensors");
    pollster::block_on(cases::layer_norm(&gpu(), &f, &dtypes())).finish("layer_norm");
}

#[test]
fn softmax_matches_torch() {
    let f = Fixture::load("softmax.safetensors");
    pollster::block_on(cases::softmax(&gpu(), &f, &dtypes())).finish("softmax");
}

#[test]
fn attention_matches_torch() {
    let f = Fixture::load("attention.safetensors");
    pollster::block_on(cases::attention(&gpu(), &f, &dtypes())).finish("attention");
}

#[test]
fn elementwise_matches_torch() {
    let f = Fixture::load("elementwise.safetensors");
    pollster::block_on(cases::elementwise(&gpu(), &f, &dtypes())).finish("elementwise");
}

#[test]
fn layout_and_timestep_match_torch() {
    let f = Fixture::load("misc.safetensors");
    pollster::block_on(cases::layout_and_timestep(&gpu(), &f, &dtypes()))
        .finish("layout_and_timestep");
}

#[test]
fn tensors_larger_than_a_binding_are_split() {
    pollster::block_on(cases::split_bindings(&gpu(), &dtypes())).finish("split bindings");
}

#[test]
fn ddim_update_matches_diffusers() {
    let f = Fixture::load("scheduler.safetensors");
    pollster::block_on(cases::ddim_update(&gpu(), &f, &dtypes())).finish("ddim_update");
}

#[test]
fn latent_rows_follow_the_step() {
    pollster::block_on(cases::latent_rows(&gpu(), &dtypes())).finish("latent_rows");
}

#[test]
fn channel_major_linears_match_the_transposing_passes() {
    pollster::block_on(cases::channel_linears(&gpu(), &dtypes())).finish("channel linears");
}

#[test]
fn a_layer_norm_fused_into_the_gemm_matches_the_two_passes() {
    pollster::block_on(cases::normed_linear(&gpu(), &dtypes())).finish("normed linear");
}

#[test]
fn concat_readers_match_concat_then_the_op() {
    pollster::block_on(cases::concat_readers(&gpu(), &dtypes())).finish("concat readers");
}

/// Plans made in one arena share their intermediate buffers (the larger
/// plan first: the arena then holds exactly its intermediates), and still
/// compute their own results when replayed alternately.
#[test]
fn plans_in_one_arena_share_intermediates() {
    use pnp::gpu::DType;
    use pnp::graph::{Arena, Graph};
    use pnp::ops;
    let gpu = gpu();
    let mut arena = Arena::default();
    let mut plans = Vec::new();
    let mut own = Vec::new();
    for n in [5000usize, 3000] {
        let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
        let mut g = Graph::new(gpu.clone(), DType::F32);
        // An input (written before each run), so nothing is hoisted.
        let x = g.input("x", &[n], DType::F32);
        let a = ops::unary(&mut g, &x, ops::Unary::Silu);
        let b = ops::add(&mut g, &a, &x).expect("add");
        let c = ops::mul(&mut g, &b, &b).expect("mul");
        g.output(&c);
        own.push(g.plan().expect("plan").intermediate_bytes);
        let plan = g.plan_in(&mut arena).expect("plan");
        let want: Vec<f32> = (data.iter())
            .map(|&v| {
                let s = v / (1.0 + (-v).exp()) + v;
                s * s
            })
            .collect();
        plan.write(&x, &data);
        plans.push((plan, c, want));
    }
    assert!(own[0] > own[1] && own[1] > 0, "intermediates {own:?}");
    assert_eq!(
        arena.bytes(),
        own[0],
        "the arena holds more than the larger plan's"
    );
    for i in [0, 1, 0, 1] {
        let (plan, c, want) = &plans[i];
        plan.run();
        let got = pollster::block_on(plan.read(c)).expect("read");
        let mut fails = Failures::default();
        fails.check(compare(
            &format!("arena plan {i}"),
            &got,
            want,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
        ));
        fails.finish("plans in one arena");
    }
}

/// Work that reads only constant externals is hoisted out of the replay:
/// it runs on the first replay and after `refresh`, not every time (so a
/// rewritten external is seen only after a refresh), while work on inputs
/// runs every replay.
#[test]
fn constant_work_runs_once_per_refresh() {
    use pnp::gpu::{DType, Tensor};
    use pnp::graph::Graph;
    use pnp::ops;
    let gpu = gpu();
    let n = 300;
    let c = Tensor::from_f32(&gpu, "c", &vec![1.0; n], &[n], DType::F32);
    let mut g = Graph::new(gpu.clone(), DType::F32);
    let cv = g.external("c", &c);
    let x = g.input("x", &[n], DType::F32);
    let twice = ops::add(&mut g, &cv, &cv).expect("add"); // constant
    let y = ops::add(&mut g, &twice, &x).expect("add"); // every replay
    g.output(&y);
    let plan = g.plan().expect("plan");
    assert_eq!(plan.dispatch_counts(), (1, 1), "(replay, hoisted)");
    let run = |xv: f32| {
        plan.write(&x, &vec![xv; n]);
        plan.run();
        pollster::block_on(plan.read(&y)).expect("read")[0]
    };
    assert_eq!(run(0.5), 2.5);
    c.write_f32(&gpu, &vec![3.0; n]);
    assert_eq!(
        run(1.0),
        3.0,
        "the hoisted work ran again without a refresh"
    );
    plan.refresh();
    assert_eq!(run(1.0), 7.0, "the refresh did not rerun the hoisted work");
}

/// The GEMM and convolution fixtures and the fused matmul cases (LayerNorm
/// in the GEMM, channel-major linears, concatenated readers) on `gpu` in
/// `d`, each failure list named by `what`.
fn matmul_cases(
    gpu: &std::sync::Arc<pnp::gpu::Gpu>,
    d: &[pnp::gpu::DType],
    what: &dyn Fn(&str) -> String,
) {
    let f = Fixture::load("gemm.safetensors");
    pollster::block_on(cases::gemm(gpu, &f, d)).finish(&what("gemm"));
    let f = Fixture::load("conv2d.safetensors");
    pollster::block_on(cases::conv2d(gpu, &f, d)).finish(&what("conv2d"));
    pollster::block_on(cases::normed_linear(gpu, d)).finish(&what("normed linear"));
    pollster::block_on(cases::channel_linears(gpu, d)).finish(&what("channel linears"));
    pollster::block_on(cases::concat_readers(gpu, d)).finish(&what("concat readers"));
}

/// The 32- and 16-wide tiles (chosen where 64-tiles would starve the GPU)
/// against the same references: on a device forced to them, the GEMM,
/// convolution, attention (32 or 16 query rows a workgroup) and fused cases
/// pass at their tolerances, and the small-tile variants really ran.
#[test]
fn small_tiles_match_torch() {
    for tile in [32, 16] {
        let opts = pnp::gpu::GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            force_tile: Some(tile),
            ..Default::default()
        };
        let gpu = pollster::block_on(pnp::gpu::Gpu::new(&opts)).expect("adapter");
        let d = dtypes();
        let what = |op: &str| format!("{op}, {tile}-tiles");
        matmul_cases(&gpu, &d, &what);
        let f = Fixture::load("attention.safetensors");
        pollster::block_on(cases::attention(&gpu, &f, &d)).finish(&what("attention"));
        let keys = gpu.kernel_keys();
        let ran = |family: &str, name: &str, value: u32| {
            keys.iter()
                .any(|k| k.family == family && k.consts.contains(&(name, value)))
        };
        let t = tile as u32;
        for (family, name) in [("gemm", "TILE"), ("conv", "TILE"), ("attention", "BQ")] {
            assert!(ran(family, name, t), "no {family} ran with {name} = {tile}");
            assert!(
                !ran(family, name, 64),
                "a {family} ran with {name} = 64 although {tile} was forced"
            );
        }
        // GEGLU never runs at 16 (its thread holds both columns of a pair
        // only at 64 and 32): forcing 16 gives it 32.
        assert!(
            keys.iter().any(|k| k.family == "gemm"
                && k.consts.contains(&("ACT", 4))
                && k.consts.contains(&("TILE", 32))),
            "no GEGLU ran with 32-tiles"
        );
    }
}

/// The cooperative-matrix main loop (`coop_core.wgsl`: f16 inputs, f32
/// accumulators) against the PyTorch fixtures at the f16 tolerances, at both
/// of its block sides, through every epilogue and loader the models use
/// (GEGLU, the fused LayerNorm, channel-major A, concatenated inputs, the
/// time-row bias), asserting that the coop variants ran and no f16 GEMM or
/// convolution fell back; and the fused attention's coop kernel
/// (`attention_coop.wgsl`) on the attention fixtures. Where `PNP_EXPECT_COOP=1` (CI's run under the
/// cooperative-matrix lavapipe) an adapter without them fails the test.
#[test]
fn coop_kernels_match_torch() {
    let expect = std::env::var("PNP_EXPECT_COOP").is_ok_and(|v| v == "1");
    // The convolutions' columns written out (im2col.wgsl) at both block
    // sides, then gathered in the kernel.
    for (forced, no_im2col) in [(None, false), (Some(16), false), (None, true)] {
        let opts = pnp::gpu::GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            force_tile: forced,
            no_im2col,
            ..Default::default()
        };
        let gpu = pollster::block_on(pnp::gpu::Gpu::new(&opts)).expect("adapter");
        let Some(coop) = gpu.caps.coop else {
            assert!(
                !expect,
                "PNP_EXPECT_COOP=1 but {} has no cooperative matrices",
                gpu.describe()
            );
            eprintln!("skipped: {} has no cooperative matrices", gpu.describe());
            return;
        };
        let side = coop.side;
        let tile = if forced.is_some() { 2 * side } else { 4 * side };
        let d = [pnp::gpu::DType::F16];
        let what = |op: &str| format!("{op}, coop {side}, {tile}-blocks, im2col {}", !no_im2col);
        matmul_cases(&gpu, &d, &what);
        let f = Fixture::load("attention.safetensors");
        pollster::block_on(cases::attention(&gpu, &f, &d)).finish(&what("attention"));
        let keys = gpu.kernel_keys();
        // The attention cases on cooperative matrices: every head width the
        // models use that fits (on llvmpipe the longest key loops do not and
        // stay on the ALU kernel), causal (CLIP) among them.
        let coop_heads: Vec<u32> = keys
            .iter()
            .filter(|k| k.family == "attention_coop" && k.consts.contains(&("COOP", side)))
            .filter_map(|k| k.consts.iter().find(|c| c.0 == "HEAD_DIM").map(|c| c.1))
            .collect();
        // Widths off the tile side (40 at 16x16) take the ALU kernel.
        for head in [40, 64, 80] {
            assert_eq!(
                coop_heads.contains(&head),
                head % side == 0,
                "coop attention with heads of {head} at {side}x{side}: {coop_heads:?}"
            );
        }
        assert!(coop_heads.iter().all(|d| d % side == 0), "{coop_heads:?}");
        let coop_ran = |family: &str, with: (&str, u32)| {
            keys.iter().any(|k| {
                k.family == family
                    && k.consts.contains(&("COOP", side))
                    && k.consts.contains(&with)
                    && (with.0 == "ACT" && with.1 == 4 || k.consts.contains(&("TILE", tile)))
            })
        };
        for (family, with) in [
            ("gemm", ("TILE", tile)),
            ("gemm", ("ACT", 4)),
            ("gemm", ("LN_A", 1)),
            ("gemm", ("A_M_FAST", 1)),
            ("conv", ("TILE", tile)),
            ("conv", ("CAT", no_im2col as u32)),
        ] {
            assert!(coop_ran(family, with), "no coop {family} ran with {with:?}");
        }
        // Operands straight from storage where the layout allows (A and B
        // of plain GEMMs in both B layouts, A channel-major, the
        // convolution's weights) and staged where it does not (A through
        // the fused LayerNorm, the convolution's gathered input, sides off
        // the tile).
        let coop_with = |family: &str, all: &[(&str, u32)]| {
            keys.iter().any(|k| {
                k.family == family
                    && k.consts.contains(&("COOP", side))
                    && all.iter().all(|c| k.consts.contains(c))
            })
        };
        for (family, with) in [
            (
                "gemm",
                &[("DIRECT_A", 1), ("DIRECT_B", 1), ("B_N_FAST", 1)][..],
            ),
            ("gemm", &[("DIRECT_A", 1), ("DIRECT_B", 1), ("B_N_FAST", 0)]),
            ("gemm", &[("DIRECT_A", 1), ("A_M_FAST", 1)]),
            ("gemm", &[("DIRECT_A", 0), ("LN_A", 1)]),
            ("gemm", &[("DIRECT_A", 0), ("DIRECT_B", 0)]),
            ("conv", &[("DIRECT_A", 0), ("DIRECT_B", 0), ("IM2COL", 0)]),
        ] {
            // Row-major B (B_N_FAST) on tile multiples comes from a fixture
            // at 8-tiles only.
            if side == 16 && with.contains(&("B_N_FAST", 1)) {
                continue;
            }
            assert!(
                coop_with(family, with),
                "no coop {family} ran with {with:?}"
            );
        }
        // The columns written out (concatenated inputs too) or the input
        // itself as the columns (1x1), both operands then read whole; or,
        // with im2col off, the gather with the weight read whole.
        let im2col_ran = |cat: u32| {
            keys.iter()
                .any(|k| k.family == "im2col" && k.consts.contains(&("CAT", cat)))
        };
        let conv_cols = coop_with("conv", &[("DIRECT_A", 1), ("DIRECT_B", 1), ("IM2COL", 1)]);
        let gathered = coop_with("conv", &[("DIRECT_A", 1), ("DIRECT_B", 0), ("IM2COL", 0)]);
        if no_im2col {
            assert!(gathered && !conv_cols && !im2col_ran(0) && !im2col_ran(1));
        } else {
            assert!(conv_cols, "no conv read its columns as whole tiles");
            assert!(
                im2col_ran(0) && im2col_ran(1),
                "im2col did not run with and without CAT"
            );
        }
        let fell_back: Vec<_> = keys
            .iter()
            .filter(|k| {
                matches!(k.family, "gemm" | "conv")
                    && k.dtype == pnp::gpu::DType::F16
                    && !k.consts.contains(&("COOP", side))
            })
            .collect();
        assert!(
            fell_back.is_empty(),
            "f16 kernels without coop: {fell_back:?}"
        );
    }
}

/// The f16 arithmetic of the ALU tiles (`F16_MATH`: f16 tiles, f16
/// multiply-adds over a K slice, f32 accumulation across slices), which
/// adapters with shader-f16 and no cooperative matrices use, against the
/// PyTorch fixtures at the f16 tolerances, at 64- and 16-tiles; forced on
/// here (a CPU driver does not choose it), with the variants asserted.
#[test]
fn f16_math_matches_torch() {
    for forced in [None, Some(16)] {
        let opts = pnp::gpu::GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            disable_coop: true,
            f16_math: Some(true),
            force_tile: forced,
            ..Default::default()
        };
        let gpu = pollster::block_on(pnp::gpu::Gpu::new(&opts)).expect("adapter");
        if !gpu.caps.shader_f16 {
            eprintln!("skipped: {} has no shader-f16", gpu.describe());
            return;
        }
        assert!(gpu.caps.f16_math && gpu.describe().contains("f16 math"));
        let d = [pnp::gpu::DType::F16];
        let tile = forced.unwrap_or(64) as u32;
        let what = |op: &str| format!("{op}, f16 math, {tile}-tiles");
        matmul_cases(&gpu, &d, &what);
        long_sums_accumulate_in_f32(&gpu);
        let keys = gpu.kernel_keys();
        for family in ["gemm", "conv"] {
            let ran = keys.iter().any(|k| {
                k.family == family
                    && k.consts.contains(&("F16_MATH", 1))
                    && k.consts.contains(&("TILE", tile))
            });
            assert!(ran, "no {family} ran with f16 math at {tile}-tiles");
            let without = keys
                .iter()
                .any(|k| k.family == family && !k.consts.contains(&("F16_MATH", 1)));
            assert!(!without, "an f16 {family} ran without f16 math");
        }
    }
}

/// Autotune: a device with it on times the variants of every distinct
/// GEMM, convolution and attention dispatch of the fixture cases (which
/// pass at their tolerances with the winners), keeps the fastest of each in
/// its cache file, and a second device reading that file times nothing and
/// plans what the file says: with every winner rewritten to the smallest
/// tile, only small tiles are compiled and the cases still pass. An
/// unreadable file is reported and replaced.
#[test]
fn autotune_plans_the_timed_winners() {
    use pnp::gpu::{Autotune, Gpu, GpuOptions};
    let dir = std::env::temp_dir().join(format!("pnp-autotune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || {
        let opts = GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            autotune: Some(Autotune {
                cache_dir: Some(dir.clone()),
                on_cpu: true,
            }),
            ..Default::default()
        };
        pollster::block_on(Gpu::new(&opts)).expect("adapter")
    };
    let attention = Fixture::load("attention.safetensors");
    let run_cases = |gpu: &std::sync::Arc<Gpu>, what: &str| {
        let d = dtypes_of(gpu);
        matmul_cases(gpu, &d, &|op| format!("{op}, {what}"));
        pollster::block_on(cases::attention(gpu, &attention, &d))
            .finish(&format!("attention, {what}"));
    };

    let gpu = open();
    run_cases(&gpu, "autotuned");
    let s = gpu.tuner.as_ref().expect("a tuner").summary();
    assert!(s.warning.is_none(), "{:?}", s.warning);
    assert!(s.timed >= 10, "only {} shapes timed", s.timed);
    for family in ["gemm", "conv"] {
        assert!(
            s.chosen.keys().any(|k| k.starts_with(family)),
            "no {family} was tuned: {:?}",
            s.chosen
        );
    }
    let file = s.cache_file.expect("a cache file");
    let mut cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("the cache file")).expect("json");
    let choices = cache["choices"].as_object_mut().expect("choices");
    assert_eq!(choices.len(), s.timed);
    for (key, c) in choices.iter_mut() {
        let timings = c["timings"].as_array().expect("timings").clone();
        assert!(timings.len() >= 2, "{key}: {timings:?}");
        let fastest = (timings.iter())
            .min_by(|a, b| a[1].as_f64().unwrap().total_cmp(&b[1].as_f64().unwrap()))
            .unwrap();
        assert_eq!(
            c["variant"], fastest[0],
            "{key}: the winner is not the fastest"
        );
        // The candidates run largest tile first: the last is the smallest.
        c["variant"] = timings.last().unwrap()[0].clone();
    }
    std::fs::write(&file, serde_json::to_vec(&cache).unwrap()).unwrap();
    drop(gpu);

    let gpu = open();
    run_cases(&gpu, "smallest tiles from the cache");
    let s = gpu.tuner.as_ref().unwrap().summary();
    assert_eq!(s.timed, 0, "shapes timed again despite the cache");
    assert!(s.reused >= 10, "only {} winners reused", s.reused);
    let keys = gpu.kernel_keys();
    let tile = |k: &pnp::gpu::KernelKey, name: &str| {
        k.consts.iter().find(|(n, _)| *n == name).map(|c| c.1)
    };
    for k in &keys {
        let small = match k.family {
            "gemm" | "conv" => tile(k, "TILE").is_some_and(|t| t <= 32),
            "attention" => tile(k, "BQ") == Some(16),
            _ => true,
        };
        assert!(
            small,
            "a cached smallest-tile winner was not planned: {k:?}"
        );
    }
    assert!(
        keys.iter().any(|k| tile(k, "TILE") == Some(16)),
        "no 16-tile ran"
    );

    // The same linear at batch 1 and 2 (the batch is in no uniform word,
    // only in the buffers' sizes) is two shapes, each timed on first use.
    let timed = |gpu: &std::sync::Arc<Gpu>| gpu.tuner.as_ref().unwrap().summary().timed;
    let before = timed(&gpu);
    for batch in [1, 2, 1] {
        let dtype = pnp::gpu::DType::F32;
        let mut g = pnp::graph::Graph::new(gpu.clone(), dtype);
        let t = |n: usize| vec![0.5f32; n];
        let x = pnp::gpu::Tensor::from_f32(&gpu, "x", &t(batch * 40 * 24), &[batch, 40, 24], dtype);
        let w = pnp::gpu::Tensor::from_f32(&gpu, "w", &t(24 * 24), &[24, 24], dtype);
        let (x, w) = (g.external("x", &x), g.external("w", &w));
        let y = pnp::ops::linear(&mut g, &x, &w, pnp::ops::Epilogue::NONE).expect("graph");
        g.output(&y);
        pollster::block_on(g.tune()).expect("tune");
    }
    assert_eq!(
        timed(&gpu),
        before + 2,
        "batch 1 and 2 of one linear are not two shapes"
    );
    drop(gpu);

    std::fs::write(&file, "{ not json").unwrap();
    let gpu = open();
    let warning = gpu
        .tuner
        .as_ref()
        .unwrap()
        .summary()
        .warning
        .unwrap_or_default();
    assert!(
        warning.contains("not a readable autotune cache"),
        "{warning}"
    );
    let f = Fixture::load("gemm.safetensors");
    pollster::block_on(cases::gemm(&gpu, &f, &dtypes_of(&gpu))).finish("gemm, retuned");
    let text = std::fs::read(&file).unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&text).is_ok(),
        "the file was not rewritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GEMM whose sums are long and large (K = 4096 positive terms, sums near
/// 1000): with f16 sums over one K slice and f32 across slices the result
/// is the f16 rounding of the exact sum (of the f16 inputs); an f16 sum
/// over all of K would be off by far more (its spacing reaches 0.5).
fn long_sums_accumulate_in_f32(gpu: &std::sync::Arc<pnp::gpu::Gpu>) {
    use pnp::gpu::{DType, Tensor};
    let (m, k, n) = (8, 4096, 8);
    let mut rng = pnp::rand::SplitMix64::new(7);
    let a: Vec<f32> = rng
        .signed_units(m * k)
        .iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let b: Vec<f32> = rng
        .signed_units(k * n)
        .iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let at = Tensor::from_f32(gpu, "a", &a, &[1, m, k], DType::F16);
    let bt = Tensor::from_f32(gpu, "b", &b, &[k, n], DType::F16);
    // The inputs as f16 holds them.
    let a = pollster::block_on(at.to_f32(gpu)).expect("read a");
    let b = pollster::block_on(bt.to_f32(gpu)).expect("read b");
    let mut g = pnp::graph::Graph::new(gpu.clone(), DType::F16);
    let (av, bv) = (g.external("a", &at), g.external("b", &bt));
    let y = pnp::ops::gemm(&mut g, &av, &bv, false, pnp::ops::Epilogue::NONE).expect("gemm");
    let got = run_graph(&mut g, &y);
    let mut worst = 0f64;
    for r in 0..m {
        for c in 0..n {
            let want: f64 = (0..k)
                .map(|i| a[r * k + i] as f64 * b[i * n + c] as f64)
                .sum();
            worst = worst.max((got[r * n + c] as f64 - want).abs() / want);
        }
    }
    // f16 output rounding is 4.9e-4 relative; the f16 products of one
    // slice add a little.
    assert!(worst < 1.5e-3, "long sums: relative error {worst:.2e}");
    eprintln!("long sums (K = {k}) in f16 math: relative error {worst:.2e}");
}

/// Two plans in one arena with the same constant work (a phase's variants
/// all project the same text) keep its result in one buffer: the second
/// plan allocates nothing for it, and both compute correctly.
#[test]
fn plans_in_one_arena_share_hoisted_work() {
    use pnp::gpu::{DType, Tensor};
    use pnp::graph::{Arena, Graph};
    use pnp::ops;
    let gpu = gpu();
    let n = 1000;
    let c = Tensor::from_f32(&gpu, "c", &vec![1.5; n], &[n], DType::F32);
    let mut arena = Arena::default();
    let mut made = Vec::new();
    for scale in [1.0f32, 2.0] {
        let mut g = Graph::new(gpu.clone(), DType::F32);
        let cv = g.external("c", &c);
        let x = g.input("x", &[n], DType::F32);
        let twice = ops::add(&mut g, &cv, &cv).expect("add"); // hoisted, shared
        let y = ops::add(&mut g, &twice, &x).expect("add");
        let y = ops::scale(&mut g, &y, scale);
        g.output(&y);
        let plan = g.plan_in(&mut arena).expect("plan");
        plan.write(&x, &vec![1.0; n]);
        made.push((plan, y, 4.0 * scale));
    }
    let (a, b) = (made[0].0.io_bytes, made[1].0.io_bytes);
    assert_eq!(
        a - b,
        (n * 4) as u64,
        "the second plan holds its own copy ({a} vs {b} bytes)"
    );
    for (plan, y, want) in [&made[1], &made[0], &made[1]] {
        plan.run();
        let got = pollster::block_on(plan.read(y)).expect("read");
        assert!(got.iter().all(|v| v == want), "got {} want {want}", got[0]);
    }
}
