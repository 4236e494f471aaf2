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
    /// The kernel variant that ran (family and main-loop constants).
    pub variant: String,
    pub seconds: f64,
    pub gflops: f64,
    /// Bytes moved (inputs read once, output written once) per second.
    pub gbytes: f64,
}

/// Copies of the op per submit: a GPU's figure is then the kernels', not
/// one dispatch's launch and submit cost.
const REPS: usize = 10;

/// Times one op: builds a graph of [`REPS`] copies of it (each writing its
/// own output), runs it once to warm up, then `iters` times; the time is per
/// copy.
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
    for _ in 0..REPS {
        let y = build(&mut g, &vals)?;
        g.output(&y);
    }
    pollster::block_on(g.tune())?;
    let variant = {
        let d = g.dispatches();
        let main = d.iter().max_by_key(|x| x.flops).map_or(String::new(), |x| {
            format!("{} {}", x.family, x.variant).trim().to_string()
        });
        let per_copy = d.len() / REPS;
        if per_copy > 1 {
            format!("{main} (+{} more)", per_copy - 1)
        } else {
            main
        }
    };
    let plan = g.plan()?;
    plan.run();
    gpu.wait_idle()?;
    let start = Instant::now();
    for _ in 0..iters {
        plan.run();
    }
    gpu.wait_idle()?;
    let seconds = start.elapsed().as_secs_f64() / (iters * REPS) as f64;
    Ok(BenchRow {
        name,
        variant,
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

    // Batch 1 is the inversion's UNet, batch 2 guided sampling's.
    for (b, m, n, k) in [
        (1, 4096, 320, 320),
        (1, 1024, 640, 640),
        (1, 256, 1280, 1280),
        (1, 64, 1280, 1280),
        (2, 4096, 320, 320),
        (2, 256, 1280, 1280),
        (1, 77, 768, 768),
    ] {
        let m = if m <= 77 { m } else { tok(m) };
        rows.push(time_op(
            gpu,
            dtype,
            format!("gemm {b}x{m}x{n}x{k} +bias"),
            &[vec![b, m, k], vec![n, k], vec![n]],
            2.0 * (b * m * n * k) as f64,
            es * (b * m * k + n * k + b * m * n) as f64,
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

    for (b, hw, c) in [
        (1, 64, 320),
        (1, 32, 640),
        (1, 16, 1280),
        (1, 8, 1280),
        (2, 64, 320),
        (2, 8, 1280),
    ] {
        let hw = if hw > 8 { side(hw) } else { hw };
        rows.push(time_op(
            gpu,
            dtype,
            format!("conv3x3 {b}x{hw}x{hw}x{c}"),
            &[vec![b, c, hw, hw], vec![c, c, 3, 3], vec![c]],
            2.0 * (b * hw * hw * c * c * 9) as f64,
            es * (2 * b * hw * hw * c + 9 * c * c) as f64,
            iters,
            |g, v| ops::conv2d(g, &v[0], &v[1], &v[2], Conv2d::same(1), None),
        )?);
    }

    // Self-attention at SD 1.5's widths (8 heads) and SD 2.1's (heads of 64);
    // cross-attention against 77 keys; guided sampling's batch of 2; the
    // VAE's mid-block attention (one head of 512, the score-matrix path).
    // GFLOP/s counts q k^T and p v once, whatever the kernel does.
    for (b, lq, lk, c, heads, label) in [
        (1, 4096, 4096, 320, 8, "self"),
        (1, 1024, 1024, 640, 8, "self"),
        (1, 256, 256, 1280, 8, "self"),
        (1, 4096, 4096, 320, 5, "self"),
        (1, 1024, 1024, 640, 10, "self"),
        (1, 256, 256, 1280, 20, "self"),
        (2, 4096, 4096, 320, 8, "self"),
        (1, 4096, 77, 320, 8, "cross"),
        (1, 4096, 4096, 512, 1, "self"),
    ] {
        let lq = tok(lq);
        let lk = if label == "self" { lq } else { lk };
        rows.push(time_op(
            gpu,
            dtype,
            format!(
                "attention {label} {b}x{lq}x{lk} heads {heads} d {}",
                c / heads
            ),
            &[vec![b, lq, c], vec![b, lk, c], vec![b, lk, c]],
            4.0 * (b * lq * lk * c) as f64,
            es * (2 * b * lq * c + 2 * b * lk * c) as f64,
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
