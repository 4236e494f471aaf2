//! Ops record nodes into a [`Graph`](crate::graph::Graph); one file per kernel
//! family, each beside its `shaders/<family>.wgsl`. Every op checks shapes and
//! dtypes when it is called, so a bad model fails while the graph is built.

mod attention;
mod conv;
mod ddim;
mod elementwise;
mod gemm;
mod layout;
mod lpips;
mod norm;
mod pool;
mod softmax;
mod timestep;

pub use attention::{View, attention, attention_views};
pub use conv::{Conv2d, conv2d, conv2d_cat, conv2d_row_bias};
pub use ddim::{DDIM_COEFFICIENTS, Guidance, Slot, ddim_update, latent_rows};
pub use elementwise::{Unary, add, add_row, mul, scale, unary};
pub use gemm::{
    Act, Epilogue, GEGLU_GROUP, LayerNormA, geglu_interleave, gemm, gemm_normed, linear,
    linear_channels, linear_normed, linear_tokens,
};
pub use layout::{concat, copy_into, transpose_last2, upsample_nearest2x};
pub use lpips::lpips_distance;
pub use norm::{group_norm, group_norm_cat, layer_norm};
pub use pool::{max_pool2d, pooled_size};
pub use softmax::softmax;
pub use timestep::{timestep_embedding, timestep_frequencies};

use crate::graph::{ShapeError, ShapeFmt, Value, shape_err};

pub(crate) fn same_dtype(op: &str, vals: &[&Value]) -> Result<(), ShapeError> {
    let d = vals[0].dtype;
    for v in vals {
        if v.dtype != d {
            return Err(shape_err(
                op,
                format!(
                    "mixed element types: {:?} {} and {:?} {}",
                    d,
                    ShapeFmt(&vals[0].shape),
                    v.dtype,
                    ShapeFmt(&v.shape)
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn expect_shape(
    op: &str,
    what: &str,
    v: &Value,
    want: &[usize],
) -> Result<(), ShapeError> {
    if v.shape != want {
        return Err(shape_err(
            op,
            format!(
                "{what} has shape {}, expected {}",
                ShapeFmt(&v.shape),
                ShapeFmt(want)
            ),
        ));
    }
    Ok(())
}

/// The 32-bit words of a kernel's uniform block, from its `#[repr(C)]`
/// struct (the mirror of the shader's `struct Params`, field for field).
pub(crate) fn words<P: bytemuck::Pod>(params: &P) -> Vec<u32> {
    bytemuck::pod_collect_to_vec(bytemuck::bytes_of(params))
}

/// The word index of field `$field` of uniform struct `$ty`: how a
/// step-dependent word (a store slot's offset) is addressed.
macro_rules! word_of {
    ($ty:ty, $field:ident) => {
        std::mem::offset_of!($ty, $field) / 4
    };
}
pub(crate) use word_of;

/// A uniform word from a size. Exact: every size an op writes is at most the
/// element count of a value it binds, and [`crate::graph::Graph::check_limits`] (run by
/// `plan`) refuses any value past u32 addressing before a dispatch is made.
pub(crate) fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}
