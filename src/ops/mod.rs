//! Ops record nodes into a [`Graph`](crate::graph::Graph); one file per kernel
//! family, each beside its `shaders/<family>.wgsl`. Every op checks shapes and
//! dtypes when it is called, so a bad model fails while the graph is built.

mod attention;
mod conv;
mod elementwise;
mod gemm;
mod layout;
mod norm;
mod softmax;
mod timestep;

pub use attention::{View, attention, attention_views};
pub use conv::{Conv2d, conv2d};
pub use elementwise::{Unary, add, add_row, mul, scale, unary};
pub use gemm::{Act, Epilogue, GEGLU_GROUP, geglu_interleave, gemm, linear};
pub use layout::{concat, copy_into, transpose_last2, upsample_nearest2x};
pub use norm::{group_norm, layer_norm};
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

pub(crate) fn u(x: usize) -> u32 {
    x as u32
}
