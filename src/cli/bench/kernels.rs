//! `pnp bench kernels`: GFLOP/s (and GB/s for memory-bound ops) of each
//! kernel at the shapes SD 1.5 / 2.1 run at 512x512. A benchmark, never a test.

use pnp::gpu::{DType, Gpu, Tensor};
use pnp::graph::{Graph, ShapeError, Value};
use pnp::ops::{self, Act, Conv2d, Epilogue};
use pnp::rand::SplitMix64;
use std::sync::Arc;
use std::time::Instant;

pub struct BenchRow {
    pub name: String,
    pub seconds: f64,
    pub gflops: f64,
    /// Bytes moved (inputs read once, output written once) per second.
    pub gbytes: f64,
}

/// Times one op: builds a graph of `reps` copies of it, runs it once to warm
/// up, then `iters` times.
#[allow(clippy::too_many_arguments)]
fn time_op(
    gpu: &Arc<Gpu>,
    dtype: DType,
    name: String,
    inputs: &[Vec<usize>],
    flops: f64,
    bytes: f64,
    iters: usize,
    build: impl Fn(&mut Graph, &[Value]) -> Result<Value, ShapeError>,
) -> Result<BenchRow, Box<dyn std::error::Error + Send + Sync>> {
    let mut g = Graph::new(gpu.clone(), dtype);
    let vals: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.iter().product();
            let t = Tensor::from_f32(
                gpu,
                "bench input",
                &SplitMix64::new(i as u64 + 1).signed_units(n),
                s,
                dtype,
            );
            g.external("in", &t)
        })
        .collect();
    let y = build(&mut g, &vals)?;
    g.output(&y);
    let plan = g.plan()?;
    plan.run();
    gpu.wait_idle()?;
    let start = Instant::now();
    for _ in 0..iters {
        plan.run();
    }
    gpu.wait_idle()?;
    let seconds = start.elapsed().as_secs_f64() / iters as f64;
    Ok(BenchRow {
        name,
        seconds,
        gflops: flops / seconds / 1e9,
        gbytes: bytes / seconds / 1e9,
    })
}

/// The SD shapes; `quick` shrinks token counts 16x (or spatial sizes 4x) for software adapters.
pub fn kernels(
    gpu: &Arc<Gpu>,
    dtype: DType,
    quick: bool,
    iters: usize,
) -> Result<Vec<BenchRow>, Box<dyn std::error::Error + Send + Sync>> {
    let es = dtype.size() as f64;
    let tok = |n: usize| if quick { (n / 16).max(1) } else { n };
    let side = |n: usize| if quick { (n / 4).max(1) } else { n };
    let mut rows = Vec::new();

    for (m, n, k) in [
        (4096, 320, 320),
        (1024, 640, 640),
        (256, 1280, 1280),
        (77, 768, 768),
    ] {
        let m = if m == 77 { 77 } else { tok(m) };
        rows.push(time_op(
            gpu,
            dtype,
            format!("gemm {m}x{n}x{k} +bias"),
            &[vec![1, m, k], vec![n, k], vec![n]],
            2.0 * (m * n * k) as f64,
            es * (m * k + n * k + m * n) as f64,
            iters,
            |g, v| {
                ops::gemm(
                    g,
                    &v[0],
                    &v[1],
                    true,
                    Epilogue {
                        bias: Some(&v[2]),
                        act: Act::None,
                        residual: None,
                    },
                )
            },
        )?);
    }

    for (hw, c) in [(64, 320), (32, 640), (16, 1280), (8, 1280)] {
        let hw = if hw > 8 { side(hw) } else { hw };
        rows.push(time_op(
            gpu,
            dtype,
            format!("conv3x3 {hw}x{hw}x{c}"),
            &[vec![1, c, hw, hw], vec![c, c, 3, 3], vec![c]],
            2.0 * (hw * hw * c * c * 9) as f64,
            es * (2 * hw * hw * c + 9 * c * c) as f64,
            iters,
            |g, v| ops::conv2d(g, &v[0], &v[1], &v[2], Conv2d::same(1), None),
        )?);
    }

    // Self-attention at SD1.5's widths (8 heads); cross-attention against 77
    // keys; the VAE's mid-block attention (one head of 512, the score-matrix path).
    for (lq, lk, c, heads, label) in [
        (4096, 4096, 320, 8, "self"),
        (1024, 1024, 640, 8, "self"),
        (256, 256, 1280, 8, "self"),
        (4096, 77, 320, 8, "cross"),
        (4096, 4096, 512, 1, "self"),
    ] {
        let lq = tok(lq);
        let lk = if label == "self" { lq } else { lk };
        rows.push(time_op(
            gpu,
            dtype,
            format!("attention {label} {lq}x{lk} heads {heads} d {}", c / heads),
            &[vec![1, lq, c], vec![1, lk, c], vec![1, lk, c]],
            4.0 * (lq * lk * c) as f64,
            es * (2 * lq * c + 2 * lk * c) as f64,
            iters,
            |g, v| ops::attention(g, &v[0], &v[1], &v[2], heads, false, None),
        )?);
    }

    // Memory-bound: GB/s is the figure of merit.
    let hw = side(64);
    rows.push(time_op(
        gpu,
        dtype,
        format!("group_norm+silu {hw}x{hw}x320"),
        &[vec![1, 320, hw, hw], vec![320], vec![320]],
        (8 * hw * hw * 320) as f64,
        es * (2 * hw * hw * 320) as f64,
        iters,
        |g, v| ops::group_norm(g, &v[0], &v[1], &v[2], 32, 1e-5, true),
    )?);
    rows.push(time_op(
        gpu,
        dtype,
        format!("add {hw}x{hw}x320"),
        &[vec![1, 320, hw, hw], vec![1, 320, hw, hw]],
        (hw * hw * 320) as f64,
        es * (3 * hw * hw * 320) as f64,
        iters,
        |g, v| ops::add(g, &v[0], &v[1]),
    )?);
    Ok(rows)
}
