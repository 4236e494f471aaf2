//! Sinusoidal timestep embedding (`shaders/timestep.wgsl`), as diffusers'
//! `get_timestep_embedding` in models/embeddings.py.

use super::u;
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, grid_flat, shape_err};

/// exp(-ln(max_period) * j / (half - shift)) for j < half, computed the way
/// PyTorch's float32 ops round it: the product and the quotient in f32, then a
/// correctly rounded exp.
pub fn timestep_frequencies(dim: usize, freq_shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period as f64).ln() as f32;
    (0..half)
        .map(|j| {
            let e = (neg_log * j as f32) / (half as f32 - freq_shift);
            (e as f64).exp() as f32
        })
        .collect()
}

/// t (N) float32 timesteps -> (N, dim) in the graph's dtype.
pub fn timestep_embedding(
    g: &mut Graph,
    t: &Value,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Result<Value, ShapeError> {
    if t.rank() != 1 || t.dtype != DType::F32 {
        return Err(shape_err(
            "timestep_embedding",
            format!(
                "timesteps must be f32 (N), got {:?} {}",
                t.dtype,
                ShapeFmt(&t.shape)
            ),
        ));
    }
    let freqs = timestep_frequencies(dim, freq_shift, 10000.0);
    let ft = Tensor::from_f32(
        &g.gpu,
        "timestep freqs",
        &freqs,
        &[freqs.len().max(1)],
        DType::F32,
    );
    let fv = g.external("timestep freqs", &ft);
    let n = t.dim(0);
    let y = g.temp(&[n, dim], g.dtype);
    let total = n * dim;
    g.push(
        "timestep",
        "main",
        g.dtype,
        vec![],
        &[&y],
        &[(2, t), (3, &fv)],
        vec![u(total), u(dim), u(dim / 2), flip_sin_to_cos as u32],
        grid_flat(total),
    );
    Ok(y)
}
