//! The diffusion loop's ops (`shaders/ddim.wgsl`): a step's UNet inputs
//! from the latent state, and guidance plus the DDIM update back into it.
//! With them a step is a replay that changes only uniform words.

use super::{u, word_of, words};
use crate::gpu::DType;
use crate::graph::{Graph, Offset, ShapeError, ShapeFmt, Value, grid_flat, shape_err};

/// ddim.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct DdimParams {
    lat: u32,
    batch: u32,
    src_rows: u32,
    x_off: u32,
    src_off: u32,
    t_off: u32,
    out_off: u32,
    row0: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Coefficients per step in the update's table (see ddim.wgsl).
pub const DDIM_COEFFICIENTS: usize = 8;

/// A slot of a state buffer (slots, C, h, w) of float32 latents, moving with
/// the step: slot `base + per_step * step`.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub base: usize,
    pub per_step: usize,
}

impl Slot {
    /// Slot `base + step`: one slot further every step.
    pub fn each_step(base: usize) -> Self {
        Slot { base, per_step: 1 }
    }

    fn offset(self, lat: usize) -> Offset {
        Offset {
            base: self.base * lat,
            per_step: self.per_step * lat,
        }
    }
}

fn check_state(op: &str, state: &Value, lat: usize) -> Result<(), ShapeError> {
    if state.dtype != DType::F32 || state.rank() < 2 || state.numel() != state.dim(0) * lat {
        return Err(shape_err(
            op,
            format!(
                "state must be f32 slots of {lat} elements, got {:?} {}",
                state.dtype,
                ShapeFmt(&state.shape)
            ),
        ));
    }
    Ok(())
}

/// The UNet's inputs for one step: `batch` rows (latent shape `latent`, the
/// graph's type) of `state`'s slot `x`, except that the first `src_rows`
/// rows come from `source`'s slot (the inversion trajectory), every element
/// times `scale`; and, given a step `table`, the `batch` timesteps, all
/// `table[step]`.
#[allow(clippy::too_many_arguments)]
pub fn latent_rows(
    g: &mut Graph,
    state: &Value,
    x: Slot,
    source: Option<(&Value, Slot, usize)>,
    table: Option<&Value>,
    batch: usize,
    latent: &[usize],
    scale: f32,
) -> Result<(Value, Option<Value>), ShapeError> {
    let lat: usize = latent.iter().product();
    check_state("latent_rows", state, lat)?;
    if let Some((src, _, rows)) = source {
        check_state("latent_rows", src, lat)?;
        if rows > batch {
            return Err(shape_err(
                "latent_rows",
                format!("{rows} source rows in a batch of {batch}"),
            ));
        }
    }
    let mut shape = vec![batch];
    shape.extend_from_slice(latent);
    let y = g.temp(&shape, g.dtype);
    let ts = table.map(|_| g.temp(&[batch], DType::F32));
    let params = DdimParams {
        lat: u(lat),
        batch: u(batch),
        src_rows: source.map_or(0, |(_, _, r)| u(r)),
        scale,
        ..Default::default()
    };
    let mut inputs = vec![(3, state)];
    if let Some(table) = table {
        inputs.push((4, table));
    }
    if let Some((src, _, _)) = source {
        inputs.push((5, src));
    }
    let mut outputs = vec![&y];
    outputs.extend(ts.as_ref());
    let node = g.push(
        "ddim",
        "rows",
        g.dtype,
        vec![
            ("ROWS", 1),
            ("TIMES", table.is_some() as u32),
            ("SOURCE", source.is_some() as u32),
        ],
        &outputs,
        &inputs,
        words(&params),
        grid_flat(batch * lat),
    );
    g.step_param(node, word_of!(DdimParams, x_off), x.offset(lat));
    if table.is_some() {
        g.step_param(
            node,
            word_of!(DdimParams, t_off),
            Offset {
                base: 0,
                per_step: 1,
            },
        );
    }
    if let Some((_, s, _)) = source {
        g.step_param(node, word_of!(DdimParams, src_off), s.offset(lat));
    }
    Ok((y, ts))
}

/// How [`ddim_update`] turns the UNet's output rows into epsilon.
#[derive(Clone, Copy, Debug)]
pub struct Guidance {
    /// The first output row it reads (rows before it belong to others: the
    /// inline source row).
    pub row0: usize,
    /// 1 (no guidance), 2 (unconditional, conditional) or 3 (negative,
    /// unconditional, conditional: the negative-prompt schedule).
    pub rows: usize,
    /// The UNet predicts v (turned into epsilon with the step's alphas).
    pub v_prediction: bool,
}

/// Guidance over `out`'s rows and the DDIM update of `state`'s slot `x`
/// into slot `next`, with the step's coefficients from `coef` (steps x
/// [`DDIM_COEFFICIENTS`], see ddim.wgsl). `state` is written in place, so it
/// must be storage the caller owns (an external value).
pub fn ddim_update(
    g: &mut Graph,
    state: &Value,
    x: Slot,
    next: Slot,
    out: &Value,
    guidance: Guidance,
    coef: &Value,
) -> Result<(), ShapeError> {
    let lat = out.numel() / out.dim(0).max(1);
    check_state("ddim_update", state, lat)?;
    if !(1..=3).contains(&guidance.rows) || guidance.row0 + guidance.rows != out.dim(0) {
        return Err(shape_err(
            "ddim_update",
            format!(
                "guidance over rows {}..{} of an output of shape {}",
                guidance.row0,
                guidance.row0 + guidance.rows,
                ShapeFmt(&out.shape)
            ),
        ));
    }
    let params = DdimParams {
        lat: u(lat),
        row0: u(guidance.row0),
        ..Default::default()
    };
    let node = g.push(
        "ddim",
        "update",
        out.dtype,
        vec![
            ("ROWS", 0),
            ("GUIDE", guidance.rows as u32),
            ("VPRED", guidance.v_prediction as u32),
        ],
        &[state],
        &[(2, out), (3, coef)],
        words(&params),
        grid_flat(lat),
    );
    g.step_param(node, word_of!(DdimParams, x_off), x.offset(lat));
    g.step_param(node, word_of!(DdimParams, out_off), next.offset(lat));
    g.step_param(
        node,
        word_of!(DdimParams, t_off),
        Offset {
            base: 0,
            per_step: DDIM_COEFFICIENTS,
        },
    );
    // About ten operations per element (guidance, v, the update).
    g.set_flops(node, 10 * lat);
    Ok(())
}
