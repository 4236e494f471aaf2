//! conv2d as an implicit GEMM (`shaders/conv.wgsl`).

use super::{expect_shape, same_dtype, u};
use crate::graph::{Graph, ShapeError, ShapeFmt, Value, shape_err};

/// Geometry of a convolution. `pad` is [top, bottom, left, right].
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2d {
    /// Stride 1 with symmetric padding `p`.
    pub fn same(p: usize) -> Self {
        Conv2d {
            stride: 1,
            pad: [p; 4],
        }
    }
}

/// x (B, C_in, H, W) * w (C_out, C_in, KH, KW) + bias (C_out) [+ residual]
/// -> (B, C_out, H_out, W_out).
pub fn conv2d(
    g: &mut Graph,
    x: &Value,
    w: &Value,
    bias: &Value,
    geo: Conv2d,
    residual: Option<&Value>,
) -> Result<Value, ShapeError> {
    conv2d_row_bias(g, x, w, bias, geo, residual, None)
}

/// [`conv2d`] that also adds `row_bias = (r, off)`: r[b, off + c] to every
/// pixel of output channel c of batch row b, with the bias, where r is (B,
/// S). A ResNet's time-embedding projection goes in this way, in conv1's
/// epilogue, rather than as an add of its own.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_row_bias(
    g: &mut Graph,
    x: &Value,
    w: &Value,
    bias: &Value,
    geo: Conv2d,
    residual: Option<&Value>,
    row_bias: Option<(&Value, usize)>,
) -> Result<Value, ShapeError> {
    record(g, x, None, w, bias, geo, residual, row_bias)
}

/// [`conv2d`] of the channel concatenation of `x1` and `x2`, read from both
/// parts where they lie: the concatenation is never written (a UNet up
/// block's skip, into its ResNet's shortcut). Falls back to a concat when
/// the parts do not fit one binding each.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_cat(
    g: &mut Graph,
    x1: &Value,
    x2: &Value,
    w: &Value,
    bias: &Value,
    geo: Conv2d,
    residual: Option<&Value>,
) -> Result<Value, ShapeError> {
    let same_rest = x1.rank() == 4
        && x2.rank() == 4
        && x1.dim(0) == x2.dim(0)
        && x1.shape[2..] == x2.shape[2..];
    if !same_rest {
        return Err(shape_err(
            "conv2d",
            format!(
                "cannot concatenate {} and {} along the channels",
                ShapeFmt(&x1.shape),
                ShapeFmt(&x2.shape)
            ),
        ));
    }
    let out = x1.dim(0) * w.dim(0) * x1.dim(2) * x1.dim(3); // an upper bound for stride 1
    if !g.fits(x1.numel() + x2.numel(), x1.dtype) || !g.fits(out, x1.dtype) {
        let cat = super::concat(g, &[x1, x2], 1)?;
        return record(g, &cat, None, w, bias, geo, residual, None);
    }
    record(g, x1, Some(x2), w, bias, geo, residual, None)
}

/// Where the convolution's B (its implicit GEMM's columns) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cols {
    /// Gathered from the input by the kernel, element by element.
    Gather,
    /// The input is the columns (1x1, stride 1, no padding).
    Input,
    /// Written out by `shaders/im2col.wgsl` first.
    Written,
}

/// Largest columns buffer written for one convolution: beyond it (the VAE at
/// 512x512 and above) the kernel gathers.
const IM2COL_BYTES: u64 = 256 << 20;

/// Whether the convolution of `x` (and `x2`) with `[cout, k, n]` (output
/// channels, K = C_in * taps, output pixels) reads its columns as a matrix:
/// on cooperative matrices in f16, where every side is a multiple of the tile
/// and 16-byte aligned, the weight and the columns then both load as whole
/// tiles straight from storage (coop_core.wgsl's DIRECT_A, DIRECT_B), which
/// on an H200 runs the GEMM two to three times as fast as gathering each
/// element into workgroup memory. Writing the columns out costs one pass of
/// K x N elements (the output's bytes times 9 C_in / C_out for a 3x3).
fn im2col(g: &Graph, x: &Value, x2: Option<&Value>, [cout, k, n]: [usize; 3], fits: bool) -> Cols {
    let Some(coop) = g.coop_for(x.dtype) else {
        return Cols::Gather;
    };
    if g.gpu.no_im2col {
        return Cols::Gather;
    }
    let ct = coop.side as usize;
    let tiles = [cout, k, n].iter().all(|v| v % ct == 0) && k % 8 == 0 && n % 8 == 0;
    let bytes = (x.dim(0) * k * n * x.dtype.size()) as u64;
    if !fits || !tiles || bytes > IM2COL_BYTES.min(g.max_binding()) {
        return Cols::Gather;
    }
    let identity = x2.is_none() && k == x.dim(1) && n == x.dim(2) * x.dim(3);
    if identity { Cols::Input } else { Cols::Written }
}

#[allow(clippy::too_many_arguments)]
fn record(
    g: &mut Graph,
    x: &Value,
    x2: Option<&Value>,
    w: &Value,
    bias: &Value,
    geo: Conv2d,
    residual: Option<&Value>,
    row_bias: Option<(&Value, usize)>,
) -> Result<Value, ShapeError> {
    let op = "conv2d";
    let cin_all = x.dim(1) + x2.map_or(0, |x2| x2.dim(1));
    if x.rank() != 4 || w.rank() != 4 || cin_all != w.dim(1) {
        return Err(shape_err(
            op,
            format!(
                "input {} does not match weight {} (C_out, C_in, KH, KW)",
                ShapeFmt(&x.shape),
                ShapeFmt(&w.shape)
            ),
        ));
    }
    let (b, cin, h, wd) = (x.dim(0), cin_all, x.dim(2), x.dim(3));
    let (cout, kh, kw) = (w.dim(0), w.dim(2), w.dim(3));
    let [pt, pb, pl, pr] = geo.pad;
    let s = geo.stride.max(1);
    if h + pt + pb < kh || wd + pl + pr < kw {
        return Err(shape_err(
            op,
            format!(
                "kernel {kh}x{kw} is larger than the padded input {}",
                ShapeFmt(&x.shape)
            ),
        ));
    }
    let ho = (h + pt + pb - kh) / s + 1;
    let wo = (wd + pl + pr - kw) / s + 1;
    expect_shape(op, "bias", bias, &[cout])?;
    let out_shape = [b, cout, ho, wo];
    if let Some(r) = residual {
        expect_shape(op, "residual", r, &out_shape)?;
    }
    let mut all = vec![x, w, bias];
    all.extend(x2);
    all.extend(residual);
    if let Some((r, off)) = row_bias {
        if r.rank() != 2 || r.dim(0) != b || off + cout > r.dim(1) {
            return Err(shape_err(
                op,
                format!(
                    "row bias {} from column {off} does not cover {b} rows of {cout} channels",
                    ShapeFmt(&r.shape)
                ),
            ));
        }
        all.push(r);
    }
    same_dtype(op, &all)?;
    let y = g.temp(&out_shape, x.dtype);
    let taps = kh * kw;
    let (plane_in, plane_out) = (h * wd, ho * wo);
    // Two parts are bound whole (conv2d_cat checked that they fit).
    let fits = x2.is_some()
        || g.fits(x.numel(), x.dtype)
            && g.fits(y.numel(), y.dtype)
            && residual.is_none_or(|r| g.fits(r.numel(), r.dtype));
    // Tensors larger than one binding: one batch row at a time, in chunks of
    // input channels (accumulated into y) and of output channels.
    let (rows, ci_per, m_per) = if fits {
        (1, cin, cout)
    } else {
        let ci_per = g.units_per_window(plane_in, x.dtype);
        let m_per = g.units_per_window(plane_out, x.dtype);
        if ci_per == 0 || m_per == 0 {
            let what = format!(
                "one channel of {} or {}",
                ShapeFmt(&x.shape),
                ShapeFmt(&out_shape)
            );
            return Err(g.unsplittable(op, what));
        }
        (b, ci_per, m_per)
    };
    let batches = if fits { b } else { 1 };
    let flops = 2 * cout * ho * wo * cin * taps * b;
    // The weight's cooperative tiles straight from storage where it is one
    // chunk with tile-multiple sides and 16-byte aligned rows; the input's
    // too where its columns are written out first (see `im2col`).
    let cols = im2col(g, x, x2, [cout, cin * taps, plane_out], fits);
    let direct = |ct: usize| {
        let k = cin * taps;
        let whole = ci_per >= cin && m_per >= cout;
        [
            whole && cout % ct == 0 && k % ct == 0 && k % 8 == 0,
            cols != Cols::Gather,
        ]
    };
    let main_loop = g.matmul_loop(x.dtype, flops, 0, &direct, |t| {
        (plane_out.div_ceil(t) * m_per.min(cout).div_ceil(t) * batches) as u64
    });
    let tile = main_loop.tile;
    let ksize = match (kh, kw) {
        (3, 3) => 3,
        (1, 1) => 1,
        _ => 0,
    };
    let extra = [
        ("KSIZE", ksize),
        ("HAS_RES", residual.is_some() as u32),
        ("HAS_ROW", row_bias.is_some() as u32),
        ("CAT", (x2.is_some() && cols == Cols::Gather) as u32),
        ("IM2COL", (cols != Cols::Gather) as u32),
    ];
    let consts: Vec<_> = main_loop.consts.iter().chain(&extra).copied().collect();
    // B's source: the input (gathered), the input itself as the columns (a
    // 1x1 convolution of stride 1 without padding), or the columns written
    // out by one im2col dispatch.
    let b_source = match cols {
        Cols::Gather | Cols::Input => x.clone(),
        Cols::Written => {
            let col = g.temp(&[b, cin * taps, plane_out], x.dtype);
            let total = col.numel();
            let params = [
                total,
                cin * taps,
                plane_out,
                cin,
                h,
                wd,
                wo,
                kh,
                kw,
                s,
                pt,
                pl,
                x.dim(1),
            ]
            .map(u)
            .to_vec();
            let mut inputs = vec![(2, x)];
            inputs.extend(x2.map(|x2| (3, x2)));
            g.push(
                "im2col",
                "main",
                x.dtype,
                vec![("CAT", x2.is_some() as u32)],
                &[&col],
                &inputs,
                params,
                crate::graph::grid_flat(total),
            );
            col
        }
    };
    let (x, x2) = match cols {
        Cols::Gather => (x, x2),
        _ => (&b_source, None),
    };
    for bt in 0..rows {
        for m0 in (0..cout).step_by(m_per) {
            let mc = m_per.min(cout - m0);
            let ci_chunks: Vec<usize> = (0..cin).step_by(ci_per).collect();
            for (j, &c0) in ci_chunks.iter().enumerate() {
                let cc = ci_per.min(cin - c0);
                let (first, last) = (j == 0, j + 1 == ci_chunks.len());
                let flags = first as u32
                    | ((last && residual.is_some()) as u32) << 1
                    | (!first as u32) << 2;
                let (mut x_lead, mut y_lead, mut res_lead) = (0, 0, 0);
                let (mut xw, mut yw, mut rw) = (None, None, None);
                if !fits {
                    let wx = g.window(x, (bt * cin + c0) * plane_in, cc * plane_in);
                    let wy = g.window(&y, (bt * cout + m0) * plane_out, mc * plane_out);
                    (x_lead, xw) = (wx.lead, Some(wx.window));
                    (y_lead, yw) = (wy.lead, Some(wy.window));
                    if let Some(r) = residual {
                        let wr = g.window(r, (bt * cout + m0) * plane_out, mc * plane_out);
                        (res_lead, rw) = (wr.lead, Some(wr.window));
                    }
                }
                let mut inputs = vec![(2, x, xw), (3, w, None), (4, bias, None)];
                if let Some(r) = residual {
                    inputs.push((5, r, rw));
                }
                if let Some((r, _)) = row_bias {
                    inputs.push((6, r, None));
                }
                if let Some(x2) = x2 {
                    inputs.push((7, x2, None));
                }
                let params = vec![
                    u(mc),
                    u(plane_out),
                    u(cc * taps),
                    u(cc),
                    u(h),
                    u(wd),
                    u(wo),
                    u(kh),
                    u(kw),
                    u(s),
                    u(pt),
                    u(pl),
                    u(x_lead),
                    u(y_lead),
                    u(res_lead),
                    u(m0),
                    u(c0),
                    u(cin * taps),
                    flags,
                    u(row_bias.map_or(0, |(_, off)| off)),
                    u(row_bias.map_or(0, |(r, _)| r.dim(1))),
                    u(if fits { 0 } else { bt }),
                    u(x.dim(1)),
                ];
                let grid = |tile: usize| {
                    [
                        u(plane_out.div_ceil(tile)),
                        u(mc.div_ceil(tile)),
                        u(batches),
                    ]
                };
                let wg = grid(tile);
                let node = g.push_windowed(
                    "conv",
                    "main",
                    x.dtype,
                    consts.clone(),
                    &[(&y, yw)],
                    &inputs,
                    params,
                    wg,
                );
                g.set_flops(node, 2 * mc * plane_out * cc * taps * batches);
                g.set_alternatives(node, main_loop.variants(&extra, grid));
            }
        }
    }
    Ok(y)
}
