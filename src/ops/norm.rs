//! Group norm and layer norm (`shaders/norm.wgsl`).

use super::{expect_shape, same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, grid_1d, shape_err};

/// `runs` normalised runs of `n` elements each; tensors larger than one
/// binding are done in chunks of whole runs.
#[allow(clippy::too_many_arguments)]
fn record(
    g: &mut Graph,
    op: &str,
    x: &Value,
    x2: Option<&Value>,
    gamma: &Value,
    beta: &Value,
    runs: usize,
    n: usize,
    hw: usize,
    cpg: usize,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Value, ShapeError> {
    let mut shape = x.shape.clone();
    if let Some(x2) = x2 {
        shape[1] += x2.dim(1);
    }
    let y = g.temp(&shape, x.dtype);
    let per = if g.fits(y.numel(), x.dtype) || x2.is_some() {
        runs.max(1)
    } else {
        match g.units_per_window(n, x.dtype) {
            0 => {
                let what = format!("one group of {n} elements of {}", ShapeFmt(&x.shape));
                return Err(g.unsplittable(op, what));
            }
            per => per,
        }
    };
    for first in (0..runs.max(1)).step_by(per) {
        let count = per.min(runs - first);
        let whole = count == runs;
        let (wx, wy) = (
            g.window(x, first * n, count * n),
            g.window(&y, first * n, count * n),
        );
        let mut inputs = vec![
            (2, x, (!whole).then_some(wx.window)),
            (3, gamma, None),
            (4, beta, None),
        ];
        inputs.extend(x2.map(|x2| (5, x2, None)));
        g.push_windowed(
            "norm",
            "main",
            x.dtype,
            vec![("SILU", silu as u32), ("CAT", x2.is_some() as u32)],
            &[(&y, (!whole).then_some(wy.window))],
            &inputs,
            vec![
                u(n),
                u(hw),
                u(cpg),
                u(groups),
                eps.to_bits(),
                u(first),
                if whole { 0 } else { u(wx.lead) },
                if whole { 0 } else { u(wy.lead) },
                u(x.dim(1)),
            ],
            grid_1d(count, 1),
        );
    }
    Ok(y)
}

/// torch.nn.GroupNorm over x (B, C, ...) with `groups` groups, then SiLU if `silu`.
pub fn group_norm(
    g: &mut Graph,
    x: &Value,
    gamma: &Value,
    beta: &Value,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Value, ShapeError> {
    if x.rank() < 2 {
        return Err(shape_err(
            "group_norm",
            format!("{} has no channel dimension", ShapeFmt(&x.shape)),
        ));
    }
    group_norm_parts(g, x, None, gamma, beta, groups, eps, silu)
}

/// [`group_norm`] of the channel concatenation of `x1` and `x2` (B, C1 | C2,
/// ...), read from both parts where they lie: the concatenation is never
/// written (a UNet up block's skip). Falls back to a concat and the plain
/// norm when the result does not fit one binding.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_cat(
    g: &mut Graph,
    x1: &Value,
    x2: &Value,
    gamma: &Value,
    beta: &Value,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Value, ShapeError> {
    let same_rest = x1.rank() >= 2
        && x1.rank() == x2.rank()
        && x1.dim(0) == x2.dim(0)
        && x1.shape[2..] == x2.shape[2..];
    if !same_rest {
        return Err(shape_err(
            "group_norm",
            format!(
                "cannot concatenate {} and {} along the channels",
                ShapeFmt(&x1.shape),
                ShapeFmt(&x2.shape)
            ),
        ));
    }
    if !g.fits(x1.numel() + x2.numel(), x1.dtype) {
        let cat = super::concat(g, &[x1, x2], 1)?;
        return group_norm(g, &cat, gamma, beta, groups, eps, silu);
    }
    group_norm_parts(g, x1, Some(x2), gamma, beta, groups, eps, silu)
}

/// The group norm of x, or of the channel concatenation of x and `x2`
/// (already checked to agree outside the channels).
#[allow(clippy::too_many_arguments)]
fn group_norm_parts(
    g: &mut Graph,
    x: &Value,
    x2: Option<&Value>,
    gamma: &Value,
    beta: &Value,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Value, ShapeError> {
    let op = "group_norm";
    let c = x.dim(1) + x2.map_or(0, |x2| x2.dim(1));
    if groups == 0 || !c.is_multiple_of(groups) {
        let what = match x2 {
            Some(x2) => format!("{} | {}", ShapeFmt(&x.shape), ShapeFmt(&x2.shape)),
            None => ShapeFmt(&x.shape).to_string(),
        };
        return Err(shape_err(
            op,
            format!("cannot split {what} into {groups} groups of channels"),
        ));
    }
    expect_shape(op, "weight", gamma, &[c])?;
    expect_shape(op, "bias", beta, &[c])?;
    let mut all = vec![x, gamma, beta];
    all.extend(x2);
    same_dtype(op, &all)?;
    let hw: usize = x.shape[2..].iter().product();
    let cpg = c / groups;
    record(
        g,
        op,
        x,
        x2,
        gamma,
        beta,
        x.dim(0) * groups,
        cpg * hw,
        hw,
        cpg,
        groups,
        eps,
        silu,
    )
}

/// torch.nn.LayerNorm over the last dimension.
pub fn layer_norm(
    g: &mut Graph,
    x: &Value,
    gamma: &Value,
    beta: &Value,
    eps: f32,
) -> Result<Value, ShapeError> {
    let op = "layer_norm";
    if x.rank() == 0 {
        return Err(shape_err(op, "a scalar has no last dimension"));
    }
    let d = x.dim(-1);
    expect_shape(op, "weight", gamma, &[d])?;
    expect_shape(op, "bias", beta, &[d])?;
    same_dtype(op, &[x, gamma, beta])?;
    record(
        g,
        op,
        x,
        None,
        gamma,
        beta,
        x.numel() / d,
        d,
        1,
        d,
        1,
        eps,
        false,
    )
}
