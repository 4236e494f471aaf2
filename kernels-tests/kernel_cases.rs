//! The kernel checks against PyTorch references, as async functions over a
//! device and a parsed fixture, so the native tests (`kernels.rs`, on
//! lavapipe or a GPU) and the browser tests (`web/tests/browser.rs`, on
//! WebGPU) run the same cases with the same tolerances.
//!
//! References: tools/make_kernel_fixtures.py (float64 math on float32
//! inputs). Each case is a one-node (or few-node) graph, the same path the models use, run in f32 and,
//! where the adapter has SHADER_F16, with f16 storage.
//!
//! Tolerances, |got - want| <= atol + rtol |want|:
//! - f32: 1e-4 + 1e-4 rel for reductions over K (gemm, conv, attention, norms);
//!   1e-5 + 1e-5 rel for elementwise and layout ops (exact up to libm ulps);
//!   timestep embedding 1.5e-4 absolute against diffusers' own float32 values
//!   (two ulps of a sin argument near t = 1000).
//! - f16 storage (inputs rounded to f16 on upload, f32 accumulation): 3e-2 + 2e-2 rel,
//!   about 30 f16 ulps at O(1) values.

use crate::common::check::*;
use pnp::gpu::{DType, Gpu, Tensor};
use pnp::graph::{Graph, ShapeError, Value};
use pnp::ops;
use std::sync::Arc;

fn tol(dtype: DType, f32_tol: Tol) -> Tol {
    match dtype {
        DType::F32 => f32_tol,
        DType::F16 => Tol {
            atol: 3e-2,
            rtol: 2e-2,
        },
    }
}

const REDUCE: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};
const EXACTISH: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

/// Uploads `inputs` in `dtype`, records `build` on them, runs once and reads the result.
async fn run_on(
    gpu: &Arc<Gpu>,
    dtype: DType,
    inputs: &[(&[usize], &[f32])],
    build: impl FnOnce(&mut Graph, &[Value]) -> Result<Value, ShapeError>,
) -> Vec<f32> {
    let mut g = Graph::new(gpu.clone(), dtype);
    let vals: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (shape, data))| {
            let t = Tensor::from_f32(gpu, "input", data, shape, dtype);
            g.external(&format!("input{i}"), &t)
        })
        .collect();
    let y = build(&mut g, &vals).expect("graph construction");
    read_graph(&mut g, &y).await
}

/// `run!(gpu, dtype, inputs, build)`: [`run_on`], awaited.
macro_rules! run {
    ($($args:tt)*) => {
        run_on($($args)*).await
    };
}

fn t<'a>(f: &'a Fixture, case: &str, name: &str) -> (&'a [usize], &'a [f32]) {
    let (s, d) = f.get(&format!("{case}/{name}"));
    (s.as_slice(), d.as_slice())
}

pub async fn gemm(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let n = p_usize(&c, "n");
            let k = p_usize(&c, "k");
            let trans = p_str(&c, "b_layout") == "nk";
            let act = match p_str(&c, "act") {
                "none" => ops::Act::None,
                "gelu" => ops::Act::Gelu,
                "quick_gelu" => ops::Act::QuickGelu,
                "silu" => ops::Act::Silu,
                "geglu" => ops::Act::Geglu(n),
                other => panic!("unknown act {other}"),
            };
            let a = t(f, name, "a");
            let (mut bs, mut bd) = (t(f, name, "b").0.to_vec(), t(f, name, "b").1.to_vec());
            let has_bias = p_bool(&c, "bias");
            let mut bias = if has_bias {
                t(f, name, "bias").1.to_vec()
            } else {
                vec![]
            };
            if let ops::Act::Geglu(n_out) = act {
                assert!(trans && has_bias, "geglu fixtures are Linear-shaped");
                let (w, b) = ops::geglu_interleave(&bd, &bias, n_out, k);
                bs = vec![w.len() / k, k];
                bd = w;
                bias = b;
            }
            let mut inputs: Vec<(&[usize], &[f32])> = vec![a, (&bs, &bd)];
            let bias_shape = [bias.len()];
            if has_bias {
                inputs.push((&bias_shape, &bias));
            }
            let has_res = p_bool(&c, "residual");
            if has_res {
                inputs.push(t(f, name, "residual"));
            }
            let got = run!(gpu, dtype, &inputs, |g, v| {
                let mut i = 2;
                let bias = has_bias.then(|| {
                    i += 1;
                    &v[2]
                });
                let residual = has_res.then(|| &v[i]);
                ops::gemm(
                    g,
                    &v[0],
                    &v[1],
                    trans,
                    ops::Epilogue {
                        bias,
                        act,
                        residual,
                    },
                )
            });
            if let Some(r) = fails.check(compare(
                &format!("gemm {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tol(dtype, REDUCE),
            )) {
                eprintln!("gemm {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn conv2d(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let pad = p_shape(&c, "pad");
            let geo = ops::Conv2d {
                stride: p_usize(&c, "stride"),
                pad: [pad[0], pad[1], pad[2], pad[3]],
            };
            let has_res = p_bool(&c, "residual");
            let mut inputs = vec![t(f, name, "x"), t(f, name, "weight"), t(f, name, "bias")];
            if has_res {
                inputs.push(t(f, name, "residual"));
            }
            let got = run!(gpu, dtype, &inputs, |g, v| {
                ops::conv2d(g, &v[0], &v[1], &v[2], geo, v.get(3))
            });
            if let Some(r) = fails.check(compare(
                &format!("conv2d {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tol(dtype, REDUCE),
            )) {
                eprintln!("conv2d {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn group_norm(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let (groups, eps, silu) = (p_usize(&c, "groups"), p_f32(&c, "eps"), p_bool(&c, "silu"));
            let inputs = [t(f, name, "x"), t(f, name, "weight"), t(f, name, "bias")];
            let got = run!(gpu, dtype, &inputs, |g, v| {
                ops::group_norm(g, &v[0], &v[1], &v[2], groups, eps, silu)
            });
            if let Some(r) = fails.check(compare(
                &format!("group_norm {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tol(dtype, REDUCE),
            )) {
                eprintln!("group_norm {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn layer_norm(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let eps = p_f32(&c, "eps");
            let inputs = [t(f, name, "x"), t(f, name, "weight"), t(f, name, "bias")];
            let got = run!(gpu, dtype, &inputs, |g, v| {
                ops::layer_norm(g, &v[0], &v[1], &v[2], eps)
            });
            if let Some(r) = fails.check(compare(
                &format!("layer_norm {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tol(dtype, REDUCE),
            )) {
                eprintln!("layer_norm {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn softmax(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let got = run!(gpu, dtype, &[t(f, name, "x")], |g, v| ops::softmax(
                g, &v[0]
            ));
            // f16 inputs of magnitude ~100 carry absolute rounding of ~0.03 in the logits.
            let tl = match dtype {
                DType::F32 => Tol {
                    atol: 1e-6,
                    rtol: 1e-4,
                },
                DType::F16 => Tol {
                    atol: 3e-2,
                    rtol: 5e-2,
                },
            };
            if let Some(r) = fails.check(compare(
                &format!("softmax {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tl,
            )) {
                eprintln!("softmax {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn attention(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let (heads, causal, scale) = (
                p_usize(&c, "heads"),
                p_bool(&c, "causal"),
                p_f32(&c, "scale"),
            );
            let inputs = [t(f, name, "q"), t(f, name, "k"), t(f, name, "v")];
            let got = run!(gpu, dtype, &inputs, |g, v| {
                ops::attention(g, &v[0], &v[1], &v[2], heads, causal, Some(scale))
            });
            if let Some(r) = fails.check(compare(
                &format!("attention {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tol(dtype, REDUCE),
            )) {
                eprintln!("attention {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn elementwise(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let op = p_str(&c, "op").to_string();
            let a = t(f, name, "a");
            let got = match op.as_str() {
                "add" | "mul" => run!(gpu, dtype, &[a, t(f, name, "b")], |g, v| {
                    if op == "add" {
                        ops::add(g, &v[0], &v[1])
                    } else {
                        ops::mul(g, &v[0], &v[1])
                    }
                }),
                "scale" => {
                    let alpha = p_f32(&c, "alpha");
                    run!(gpu, dtype, &[a], |g, v| Ok(ops::scale(g, &v[0], alpha)))
                }
                unary => {
                    let u = match unary {
                        "silu" => ops::Unary::Silu,
                        "gelu" => ops::Unary::Gelu,
                        "quick_gelu" => ops::Unary::QuickGelu,
                        other => panic!("unknown op {other}"),
                    };
                    run!(gpu, dtype, &[a], |g, v| Ok(ops::unary(g, &v[0], u)))
                }
            };
            let tl = match dtype {
                DType::F32 => Tol {
                    atol: 1e-6,
                    rtol: 2e-6,
                },
                DType::F16 => Tol {
                    atol: 2e-3,
                    rtol: 2e-3,
                },
            };
            if let Some(r) = fails.check(compare(
                &format!("{op} {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tl,
            )) {
                eprintln!("elementwise {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

pub async fn layout_and_timestep(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = p_str(&c, "name");
            let op = p_str(&c, "op");
            let (got, tl) = match op {
                "upsample2x" => (
                    run!(gpu, dtype, &[t(f, name, "x")], |g, v| {
                        ops::upsample_nearest2x(g, &v[0])
                    }),
                    EXACTISH,
                ),
                "concat" => (
                    run!(gpu, dtype, &[t(f, name, "a"), t(f, name, "b")], |g, v| {
                        ops::concat(g, &[&v[0], &v[1]], 1)
                    }),
                    EXACTISH,
                ),
                "transpose" => (
                    run!(gpu, dtype, &[t(f, name, "x")], |g, v| {
                        ops::transpose_last2(g, &v[0])
                    }),
                    EXACTISH,
                ),
                "timestep" => {
                    let (dim, flip, shift) = (
                        p_usize(&c, "dim"),
                        p_bool(&c, "flip_sin_to_cos"),
                        p_f32(&c, "freq_shift"),
                    );
                    let (ts, td) = t(f, name, "t");
                    let mut g = Graph::new(gpu.clone(), dtype);
                    let tt = Tensor::from_f32(gpu, "t", td, ts, DType::F32);
                    let tv = g.external("t", &tt);
                    let y = ops::timestep_embedding(&mut g, &tv, dim, flip, shift).expect("graph");
                    // PyTorch's vectorised float32 exp is within 1 ulp, not correctly
                    // rounded, so a frequency may differ by an ulp; at t ~ 1000 an
                    // ulp of the argument (6e-5) moves sin/cos by as much.
                    (
                        read_graph(&mut g, &y).await,
                        Tol {
                            atol: 1.5e-4,
                            rtol: 0.0,
                        },
                    )
                }
                other => panic!("unknown op {other}"),
            };
            // Exact copies stay exact in f16 up to the input rounding.
            let tl = match dtype {
                DType::F32 => tl,
                DType::F16 => Tol {
                    atol: 1e-3,
                    rtol: 1e-3,
                },
            };
            if let Some(r) = fails.check(compare(
                &format!("{op} {name} {dtype:?}"),
                &got,
                t(f, name, "out").1,
                tl,
            )) {
                eprintln!("misc {name} {dtype:?}: max abs {:.2e}", r.max_abs);
            }
        }
    }
    fails
}

/// Tensors larger than the binding limit: each op runs once with every tensor
/// bound whole (the path the fixtures check against PyTorch) and once with
/// the graph's binding limit lowered so that the op splits its work over
/// windows (batch rows, row, channel and group chunks, input-channel
/// accumulation, copies by blocks, attention scores by query rows;
/// odd sizes, so windows start off the device's binding alignment and the
/// kernels skip a lead). The two must agree, and the split graph must really
/// have split.
pub async fn split_bindings(gpu: &Arc<Gpu>, dtypes: &[DType]) -> Failures {
    type Build = fn(&mut Graph, &[Value]) -> Result<Value, ShapeError>;
    let conv3: Build =
        |g, v| ops::conv2d(g, &v[0], &v[1], &v[2], ops::Conv2d::same(1), Some(&v[3]));
    let conv_s2: Build = |g, v| {
        let geo = ops::Conv2d {
            stride: 2,
            pad: [0, 1, 0, 1],
        };
        ops::conv2d(g, &v[0], &v[1], &v[2], geo, None)
    };
    let conv1: Build = |g, v| ops::conv2d(g, &v[0], &v[1], &v[2], ops::Conv2d::same(0), None);
    let gn: Build = |g, v| ops::group_norm(g, &v[0], &v[1], &v[2], 8, 1e-6, true);
    let ln: Build = |g, v| ops::layer_norm(g, &v[0], &v[1], &v[2], 1e-5);
    let up: Build = |g, v| ops::upsample_nearest2x(g, &v[0]);
    let add: Build = |g, v| ops::add(g, &v[0], &v[1]);
    let add_bias: Build = |g, v| {
        let b = g.reshape(&v[1], &[1, v[1].numel(), 1, 1])?;
        ops::add(g, &v[0], &b)
    };
    let silu: Build = |g, v| Ok(ops::unary(g, &v[0], ops::Unary::Silu));
    let linear: Build = |g, v| {
        let epi = ops::Epilogue {
            bias: Some(&v[2]),
            act: ops::Act::Gelu,
            residual: Some(&v[3]),
        };
        ops::linear(g, &v[0], &v[1], epi)
    };
    let bmm: Build = |g, v| ops::gemm(g, &v[0], &v[1], false, ops::Epilogue::NONE);
    let cat: Build = |g, v| ops::concat(g, &[&v[0], &v[1]], 1);
    let transpose: Build = |g, v| ops::transpose_last2(g, &v[0]);
    let attn512: Build = |g, v| ops::attention(g, &v[0], &v[1], &v[2], 1, false, None);
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Vec<usize>>, Build, u64)> = vec![
        ("conv3x3 +res", vec![vec![2, 24, 19, 19], vec![16, 24, 3, 3], vec![16], vec![2, 16, 19, 19]], conv3, 16 << 10),
        ("conv3x3 stride 2", vec![vec![1, 20, 21, 21], vec![12, 20, 3, 3], vec![12]], conv_s2, 12 << 10),
        ("conv1x1", vec![vec![2, 40, 17, 17], vec![24, 40, 1, 1], vec![24]], conv1, 8 << 10),
        ("group_norm+silu", vec![vec![2, 24, 13, 13], vec![24], vec![24]], gn, 6 << 10),
        ("layer_norm", vec![vec![3, 50, 37], vec![37], vec![37]], ln, 2 << 10),
        ("upsample2x", vec![vec![2, 6, 9, 9]], up, 2 << 10),
        ("add", vec![vec![3, 5000], vec![3, 5000]], add, 8 << 10),
        ("add per-channel", vec![vec![2, 12, 30, 30], vec![12]], add_bias, 4 << 10),
        ("silu", vec![vec![7, 3001]], silu, 8 << 10),
        ("linear +bias +gelu +res", vec![vec![1, 301, 41], vec![56, 41], vec![56], vec![1, 301, 56]], linear, 16 << 10),
        ("concat channels", vec![vec![2, 5, 13, 13], vec![2, 7, 13, 13]], cat, 2 << 10),
        ("transpose", vec![vec![4, 30, 19]], transpose, 3 << 10),
        ("batched gemm", vec![vec![3, 70, 21], vec![3, 21, 33]], bmm, 4 << 10),
        // One 512-wide head: its 600x600 scores outgrow the limit, q, k, v do not.
        ("attention d512 by query rows", vec![vec![1, 600, 512]; 3], attn512, 1_300_000),
    ];
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for (name, shapes, build, limit) in &cases {
            // The same elements per window in either type: f16 halves the bytes.
            let limit = &(limit * dtype.size() as u64 / 4);
            let data: Vec<Vec<f32>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| pnp::rand::gaussian(i as u64 + 1, s.iter().product()))
                .collect();
            let mut outs = Vec::new();
            let mut whole_nodes = 0;
            for split in [false, true] {
                let mut g = Graph::new(gpu.clone(), dtype);
                if split {
                    g.set_max_binding(*limit);
                }
                let vals: Vec<Value> = shapes
                    .iter()
                    .zip(&data)
                    .enumerate()
                    .map(|(i, (s, d))| {
                        let t = Tensor::from_f32(gpu, "input", d, s, dtype);
                        g.external(&format!("input{i}"), &t)
                    })
                    .collect();
                let y = build(&mut g, &vals).expect("graph construction");
                let nodes = g.len();
                if !split {
                    whole_nodes = nodes;
                } else if nodes <= whole_nodes {
                    fails.0.push(format!(
                        "{name} {dtype:?}: did not split under a {limit}-byte limit ({nodes} dispatches, {whole_nodes} unsplit)"
                    ));
                }
                outs.push(read_graph(&mut g, &y).await);
                if split {
                    eprintln!("{name} {dtype:?}: {nodes} dispatches under a {limit}-byte limit");
                }
            }
            let tl = match dtype {
                DType::F32 => Tol {
                    atol: 1e-5,
                    rtol: 1e-5,
                },
                // f16 storage: input-channel chunks accumulate through f16 y.
                DType::F16 => Tol {
                    atol: 1e-2,
                    rtol: 1e-2,
                },
            };
            fails.check(compare(
                &format!("{name} {dtype:?} split vs whole"),
                &outs[1],
                &outs[0],
                tl,
            ));
        }
    }
    fails
}

/// The loop's update (`ops::ddim_update`) against diffusers' DDIM step and
/// the authors' inversion step (the scheduler fixture, made by
/// tools/make_scheduler_fixtures.py), with the coefficients the pipeline
/// uses. f32: 1e-5 + 1e-5 rel (the GPU's f32 arithmetic against diffusers'
/// f32 and the authors' step in f64); f16: eps stored in f16.
pub async fn ddim_update(gpu: &Arc<Gpu>, f: &Fixture, dtypes: &[DType]) -> Failures {
    use pnp::ops::Guidance;
    use pnp::pipeline::scheduler::Ddim;
    let d = Ddim::sd();
    let mut fails = Failures::default();
    for &dtype in dtypes {
        for c in f.cases() {
            let name = c["name"].as_str().expect("name");
            let n = c["n"].as_u64().expect("n") as usize;
            let t = c["t"].as_u64().expect("t") as usize;
            let x = &f.get(&format!("step/{n}/x")).1;
            let eps = &f.get(&format!("step/{n}/eps")).1;
            let update = match c["kind"].as_str().expect("kind") {
                "step" => d.step_coefficients(t, n),
                _ => {
                    let t_prev = c["t_prev"].as_u64().map(|v| v as usize);
                    d.invert_coefficients(t, t_prev)
                }
            };
            let [a, b, cc, dd] = update;
            let coef = [0.0, 0.0, 1.0, 0.0, a, b, cc, dd];
            let guidance = Guidance {
                row0: 0,
                rows: 1,
                v_prediction: false,
            };
            let got = run_update(gpu, dtype, x, &[eps], guidance, &coef).await;
            fails.check(compare(
                &format!("ddim_update {name} {dtype:?}"),
                &got,
                &f.get(name).1,
                tol(dtype, EXACTISH),
            ));
        }
        // Guidance over two rows after an (ignored) inline source row, and
        // over three rows with the negative-prompt mix and v-prediction,
        // against the host's arithmetic.
        let lat = 256;
        let wave = |k: f32| -> Vec<f32> {
            (0..lat)
                .map(|i| (i as f32 * 0.37 + k).sin() * 1.5)
                .collect()
        };
        let (x, src, u, c, neg) = (wave(0.1), wave(9.0), wave(0.7), wave(1.9), wave(2.6));
        let (t, n, g) = (981, 50, 7.5f32);
        let step = d.step_coefficients(t, n);
        let [s0, s1, s2, s3] = step;
        let want = d.step(
            &x,
            &pnp::pipeline::sample::guide(&[u.clone(), c.clone()].concat(), lat, g),
            t,
            n,
        );
        let got = run_update(
            gpu,
            dtype,
            &x,
            &[&src, &u, &c],
            Guidance {
                row0: 1,
                rows: 2,
                v_prediction: false,
            },
            &[g, 0.0, 1.0, 0.0, s0, s1, s2, s3],
        )
        .await;
        fails.check(compare(
            &format!("ddim_update guided {dtype:?}"),
            &got,
            &want,
            tol(dtype, EXACTISH),
        ));
        let mix = 0.3f32;
        let mut vd = Ddim::sd();
        vd.prediction = pnp::pipeline::scheduler::Prediction::V;
        let guided = pnp::pipeline::sample::guide_mixed(
            &[neg.clone(), u.clone(), c.clone()].concat(),
            lat,
            g,
            mix,
        );
        let want = d.step(&x, &vd.epsilon(&guided, &x, t), t, n);
        let [va, vb] = d.v_coefficients(t);
        let got = run_update(
            gpu,
            dtype,
            &x,
            &[&neg, &u, &c],
            Guidance {
                row0: 0,
                rows: 3,
                v_prediction: true,
            },
            &[g, mix, va, vb, s0, s1, s2, s3],
        )
        .await;
        fails.check(compare(
            &format!("ddim_update mixed v {dtype:?}"),
            &got,
            &want,
            tol(dtype, EXACTISH),
        ));
    }
    fails
}

/// Runs one `ddim_update` of state slot 0 into slot 1 over the UNet output
/// `rows` (in `dtype`) with one step of coefficients `coef`; returns slot 1.
async fn run_update(
    gpu: &Arc<Gpu>,
    dtype: DType,
    x: &[f32],
    rows: &[&[f32]],
    guidance: pnp::ops::Guidance,
    coef: &[f32; 8],
) -> Vec<f32> {
    use pnp::ops::Slot;
    let lat = x.len();
    let mut init = x.to_vec();
    init.resize(2 * lat, f32::NAN);
    let state = Tensor::from_f32(gpu, "state", &init, &[2, lat], DType::F32);
    let out = Tensor::from_f32(gpu, "out", &rows.concat(), &[rows.len(), lat], dtype);
    let coef = Tensor::from_f32(gpu, "coef", coef, &[8], DType::F32);
    let mut g = Graph::new(gpu.clone(), dtype);
    let (s, o, c) = (
        g.external("state", &state),
        g.external("out", &out),
        g.external("coef", &coef),
    );
    let slot = |base| Slot { base, per_step: 0 };
    ops::ddim_update(&mut g, &s, slot(0), slot(1), &o, guidance, &c).expect("graph");
    let plan = g.plan().expect("plan");
    plan.run();
    let all = state.to_f32(gpu).await.expect("read");
    all[lat..].to_vec()
}

/// `ops::latent_rows`: rows from a state slot and source rows from another
/// tensor's slot, both moving with the step, scaled and stored in `dtype`;
/// the timesteps from the step table. Exact in f32.
pub async fn latent_rows(gpu: &Arc<Gpu>, dtypes: &[DType]) -> Failures {
    use pnp::ops::Slot;
    let mut fails = Failures::default();
    let lat = 300; // more than one workgroup, not a multiple of it
    let slots =
        |n: usize, k: f32| -> Vec<f32> { (0..n * lat).map(|i| i as f32 * 0.01 + k).collect() };
    let (state_data, source_data) = (slots(3, 0.0), slots(2, 100.0));
    for &dtype in dtypes {
        let state = Tensor::from_f32(gpu, "state", &state_data, &[3, lat], DType::F32);
        let source = Tensor::from_f32(gpu, "source", &source_data, &[2, lat], DType::F32);
        let table = Tensor::from_f32(gpu, "table", &[10.0, 20.0], &[2], DType::F32);
        let mut g = Graph::new(gpu.clone(), dtype);
        let (s, src, tb) = (
            g.external("state", &state),
            g.external("source", &source),
            g.external("table", &table),
        );
        let (y, ts) = ops::latent_rows(
            &mut g,
            &s,
            Slot {
                base: 1,
                per_step: 1,
            },
            Some((
                &src,
                Slot {
                    base: 0,
                    per_step: 1,
                },
                1,
            )),
            Some(&tb),
            3,
            &[3, 10, 10],
            0.5,
        )
        .expect("graph");
        let ts = ts.expect("timesteps");
        g.output(&y);
        g.output(&ts);
        let plan = g.plan().expect("plan");
        plan.set_step(1); // state slot 2, source slot 1, table entry 1
        plan.run();
        let got = plan.read(&y).await.expect("read");
        let x: Vec<f32> = state_data[2 * lat..].iter().map(|v| v * 0.5).collect();
        let s1: Vec<f32> = source_data[lat..].iter().map(|v| v * 0.5).collect();
        let want = [s1, x.clone(), x].concat();
        fails.check(compare(
            &format!("latent_rows {dtype:?}"),
            &got,
            &want,
            tol(dtype, EXACTISH),
        ));
        let got = plan.read(&ts).await.expect("read");
        fails.check(compare(
            &format!("latent_rows timesteps {dtype:?}"),
            &got,
            &[20.0; 3],
            EXACTISH,
        ));
    }
    fails
}

/// `ops::linear_tokens` and `ops::linear_channels` (a transformer's proj_in
/// and proj_out read and write channel-major through strides) against the
/// passes they replace: a transpose and a Linear, then a transpose back and
/// an add. Each runs as one GEMM dispatch (asserted).
pub async fn channel_linears(gpu: &Arc<Gpu>, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    // Ragged sides, then sides on every cooperative tile (8 and 16), which
    // the coop loop reads straight from storage.
    for (c, l, n) in [(24, 40, 20), (32, 48, 32)] {
        let b = 2;
        let data = |len: usize, k: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.61 + k).sin()).collect()
        };
        let (x, w, bias, res) = (
            data(b * c * l, 0.3),
            data(n * c, 1.1),
            data(n, 2.2),
            data(b * n * l, 3.3),
        );
        let tk = data(b * l * c, 4.4);
        for &dtype in dtypes {
            {
                let ext = |g: &mut Graph, name: &str, d: &[f32], shape: &[usize]| {
                    let t = Tensor::from_f32(gpu, name, d, shape, dtype);
                    g.external(name, &t)
                };
                let new_graph = || Graph::new(gpu.clone(), dtype);
                // proj_in: (B, C, L) -> tokens (B, L, N).
                let mut g = new_graph();
                let (xv, wv, bv) = (
                    ext(&mut g, "x", &x, &[b, c, l]),
                    ext(&mut g, "w", &w, &[n, c]),
                    ext(&mut g, "b", &bias, &[n]),
                );
                let y = ops::linear_tokens(&mut g, &xv, &wv, Some(&bv)).expect("graph");
                let fused = g.len();
                let got = read_graph(&mut g, &y).await;
                let mut g = Graph::new(gpu.clone(), dtype);
                let (xv, wv, bv) = (
                    ext(&mut g, "x", &x, &[b, c, l]),
                    ext(&mut g, "w", &w, &[n, c]),
                    ext(&mut g, "b", &bias, &[n]),
                );
                let t = ops::transpose_last2(&mut g, &xv).expect("graph");
                let epi = ops::Epilogue {
                    bias: Some(&bv),
                    ..ops::Epilogue::NONE
                };
                let y = ops::linear(&mut g, &t, &wv, epi).expect("graph");
                let want = read_graph(&mut g, &y).await;
                let name = format!("linear_tokens {dtype:?} n {n}");
                assert_eq!(fused, 1, "{name}: {fused} dispatches");
                fails.check(compare(&name, &got, &want, tol(dtype, REDUCE)));
                // proj_out: tokens (B, L, C) -> (B, N, L) + residual.
                let mut g = new_graph();
                let (tv, wv, bv, rv) = (
                    ext(&mut g, "t", &tk, &[b, l, c]),
                    ext(&mut g, "w", &w, &[n, c]),
                    ext(&mut g, "b", &bias, &[n]),
                    ext(&mut g, "r", &res, &[b, n, l]),
                );
                let y =
                    ops::linear_channels(&mut g, &tv, &wv, Some(&bv), Some(&rv)).expect("graph");
                let fused = g.len();
                let got = read_graph(&mut g, &y).await;
                let mut g = Graph::new(gpu.clone(), dtype);
                let (tv, wv, bv, rv) = (
                    ext(&mut g, "t", &tk, &[b, l, c]),
                    ext(&mut g, "w", &w, &[n, c]),
                    ext(&mut g, "b", &bias, &[n]),
                    ext(&mut g, "r", &res, &[b, n, l]),
                );
                let epi = ops::Epilogue {
                    bias: Some(&bv),
                    ..ops::Epilogue::NONE
                };
                let o = ops::linear(&mut g, &tv, &wv, epi).expect("graph");
                let m = ops::transpose_last2(&mut g, &o).expect("graph");
                let y = ops::add(&mut g, &m, &rv).expect("graph");
                let want = read_graph(&mut g, &y).await;
                let name = format!("linear_channels {dtype:?} n {n}");
                assert_eq!(fused, 1, "{name}: {fused} dispatches");
                fails.check(compare(&name, &got, &want, tol(dtype, REDUCE)));
            }
        }
    }
    fails
}

/// `ops::linear_normed`: a LayerNorm applied as the GEMM loads its rows,
/// against `layer_norm` then `linear` (the passes it replaces), at a width
/// that is not a multiple of the four threads per row and more rows than
/// one tile; one dispatch (asserted). The f16 reference rounds the norm's
/// output to f16 and the fused one does not: the f16 tolerance covers it.
pub async fn normed_linear(gpu: &Arc<Gpu>, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    // A ragged width, then sides on every cooperative tile.
    for (per, k, n) in [(70, 37, 24), (64, 32, 32)] {
        let rows = 2 * per;
        let data = |len: usize, f: f32, off: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * f).sin() * 2.0 + off).collect()
        };
        let (x, w, bias) = (
            data(rows * k, 0.73, 3.0),
            data(n * k, 1.3, 0.0),
            data(n, 0.5, 0.0),
        );
        let (gamma, beta) = (data(k, 0.9, 1.0), data(k, 2.1, 0.0));
        for &dtype in dtypes {
            let mut outs = Vec::new();
            for fused in [true, false] {
                let mut g = Graph::new(gpu.clone(), dtype);
                let mut ext = |name: &str, d: &[f32], shape: &[usize]| {
                    let t = Tensor::from_f32(gpu, name, d, shape, dtype);
                    g.external(name, &t)
                };
                let (xv, wv, bv) = (
                    ext("x", &x, &[2, per, k]),
                    ext("w", &w, &[n, k]),
                    ext("b", &bias, &[n]),
                );
                let (gv, bev) = (ext("gamma", &gamma, &[k]), ext("beta", &beta, &[k]));
                let epi = ops::Epilogue {
                    bias: Some(&bv),
                    ..ops::Epilogue::NONE
                };
                let y = if fused {
                    let ln = ops::LayerNormA {
                        gamma: &gv,
                        beta: &bev,
                        eps: 1e-5,
                    };
                    let y = ops::linear_normed(&mut g, &xv, &wv, Some(ln), epi).expect("graph");
                    // One dispatch: only a GEGLU projection splits its norm off
                    // (on cooperative matrices; see the models' coop test).
                    assert_eq!(
                        g.len(),
                        1,
                        "the fused norm and linear took {} dispatches",
                        g.len()
                    );
                    y
                } else {
                    let nx = ops::layer_norm(&mut g, &xv, &gv, &bev, 1e-5).expect("graph");
                    ops::linear(&mut g, &nx, &wv, epi).expect("graph")
                };
                outs.push(read_graph(&mut g, &y).await);
            }
            fails.check(compare(
                &format!("linear_normed {dtype:?}"),
                &outs[0],
                &outs[1],
                tol(dtype, REDUCE),
            ));
        }
    }
    fails
}

/// `ops::group_norm_cat` and `ops::conv2d_cat` (a UNet up block's skip
/// concat read where its parts lie) against `concat` and the plain ops, at
/// batch 2 with a group that straddles the parts (6 + 10 channels in groups
/// of 4); one dispatch each (asserted).
pub async fn concat_readers(gpu: &Arc<Gpu>, dtypes: &[DType]) -> Failures {
    let mut fails = Failures::default();
    // Ragged sides, then sides on every cooperative tile (8 and 16), whose
    // convolution writes its columns out (im2col.wgsl, both parts).
    for (c1, c2, h, w, cout) in [(6, 10, 5, 7, 8), (6, 10, 8, 8, 16)] {
        let b = 2;
        let data = |len: usize, f: f32, off: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * f).sin() * 1.5 + off).collect()
        };
        let (x1, x2) = (
            data(b * c1 * h * w, 0.37, 0.5),
            data(b * c2 * h * w, 0.91, -0.3),
        );
        let (gamma, beta) = (data(c1 + c2, 0.7, 1.0), data(c1 + c2, 1.7, 0.0));
        let (wt, bias) = (data(cout * (c1 + c2) * 9, 0.29, 0.0), data(cout, 2.3, 0.0));
        for &dtype in dtypes {
            let mut outs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
            for fused in [true, false] {
                let mut results = Vec::new();
                for norm in [true, false] {
                    let mut g = Graph::new(gpu.clone(), dtype);
                    let mut ext = |name: &str, d: &[f32], shape: &[usize]| {
                        let t = Tensor::from_f32(gpu, name, d, shape, dtype);
                        g.external(name, &t)
                    };
                    let (a, bb) = (
                        ext("x1", &x1, &[b, c1, h, w]),
                        ext("x2", &x2, &[b, c2, h, w]),
                    );
                    let (gv, bev) = (
                        ext("gamma", &gamma, &[c1 + c2]),
                        ext("beta", &beta, &[c1 + c2]),
                    );
                    let (wv, biv) = (
                        ext("w", &wt, &[cout, c1 + c2, 3, 3]),
                        ext("bias", &bias, &[cout]),
                    );
                    let geo = ops::Conv2d::same(1);
                    let y = match (fused, norm) {
                        (true, true) => {
                            ops::group_norm_cat(&mut g, &a, &bb, &gv, &bev, 4, 1e-5, true)
                        }
                        (true, false) => ops::conv2d_cat(&mut g, &a, &bb, &wv, &biv, geo, None),
                        (false, _) => {
                            let cat = ops::concat(&mut g, &[&a, &bb], 1).expect("graph");
                            match norm {
                                true => ops::group_norm(&mut g, &cat, &gv, &bev, 4, 1e-5, true),
                                false => ops::conv2d(&mut g, &cat, &wv, &biv, geo, None),
                            }
                        }
                    }
                    .expect("graph");
                    if fused {
                        // No concatenation written: one dispatch, or two
                        // where the convolution writes its columns out
                        // from both parts first.
                        let cols = g.dispatches().iter().any(|d| d.family == "im2col");
                        let want = 1 + (cols && !norm) as usize;
                        assert_eq!(
                            g.len(),
                            want,
                            "the concat reader took {} dispatches",
                            g.len()
                        );
                    }
                    results.push(read_graph(&mut g, &y).await);
                }
                outs.push((results[0].clone(), results[1].clone()));
            }
            let (norm_fused, conv_fused) = &outs[0];
            let (norm_ref, conv_ref) = &outs[1];
            fails.check(compare(
                &format!("group_norm_cat {dtype:?}"),
                norm_fused,
                norm_ref,
                tol(dtype, EXACTISH),
            ));
            fails.check(compare(
                &format!("conv2d_cat {dtype:?}"),
                conv_fused,
                conv_ref,
                tol(dtype, REDUCE),
            ));
        }
    }
    fails
}
