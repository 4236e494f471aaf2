//! Plug-and-Play translation (docs/ALGORITHM.md, "Overview"): the DDIM scheduler, the
//! feature store, and the stages composed into a translation. Every network
//! is a planned graph built once per phase and replayed per step; the loop
//! itself runs on the GPU (`gpu_loop`, docs/ALGORITHM.md, "The loop on the
//! GPU"): a step changes only uniform words (its state slots, table entries
//! and store slot), and nothing is read back until a phase's result is
//! wanted.
//!
//! - [`stages`]: the pipeline and its single stages (text, VAE, UNet plans).
//! - [`sample`]: DDIM inversion, the source pass and the injected sampling,
//!   and text-to-image generation.
//! - [`translate`]: the stages in order, with every check before GPU work.
//! - [`inversion`]: an inversion, and its file format.

mod gpu_loop;
pub mod inversion;
pub mod options;
pub mod sample;
pub mod scheduler;
pub mod stages;
pub mod store;
pub mod translate;

pub use gpu_loop::{LoopIo, StepTables, record_step};
pub use inversion::Inversion;
pub use options::{
    Embeddings, GuidanceBase, NegativeSchedule, PnpOptions, SourceLatents, StoreMode,
};
pub use stages::Pipeline;
pub use translate::{Prepared, Translation};

use crate::gpu::GpuError;
use crate::graph::ShapeError;
use crate::models::tokenizer::TokenizerError;
use scheduler::SchedulerError;

#[derive(Debug, thiserror::Error)]
pub enum PnpError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{0}")]
    Input(String),
    /// [`Progress::cancelled`](crate::progress::Progress::cancelled) said so.
    #[error("cancelled")]
    Cancelled,
    #[error("pnp_f_t and pnp_attn_t are fractions of the sampling steps, in [0, 1]")]
    Fractions,
    #[error("the guidance scale must be a finite number, got {0}")]
    Guidance(f32),
    #[error(
        "a {inversion_steps}-step inversion does not store a latent at every timestep of {steps} sampling steps; the nearest inversion step counts that do: {}",
        scheduler::either(nearest)
    )]
    InversionGrid {
        inversion_steps: usize,
        steps: usize,
        /// The nearest counts that would work (see [`scheduler::Ddim::nearest_inversion_steps`]).
        nearest: Vec<usize>,
    },
    #[error(
        "the values after {phase} are not finite ({count} of {total} are NaN or infinite): {cause}"
    )]
    NonFinite {
        phase: String,
        count: usize,
        total: usize,
        cause: String,
    },
}

pub type Result<T> = std::result::Result<T, PnpError>;

/// What a run cost.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// (phase, seconds), in order.
    pub phases: Vec<(String, f64)>,
    pub unet_evals: usize,
    /// (replay, hoisted) dispatches of the largest loop plan run.
    pub step_dispatches: (usize, usize),
    /// Largest bytes held at once by planned graphs plus the feature store
    /// (weights not counted).
    pub peak_bytes: u64,
    pub used_store: bool,
}
