//! The model arguments every subcommand shares, and loading what they name.

use crate::Precision;
use anyhow::Result;
use pnp::gpu::{DType, Gpu};
use pnp::models::files::Disk;
use pnp::models::loader::{LoadedModel, load_model};
use pnp::models::nn::Ctx;
use pnp::pipeline::scheduler::Ddim;
use pnp::progress::Progress;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A diffusers folder, a single-file .safetensors checkpoint, or a Hugging Face repo id
    /// (downloaded into the Hugging Face cache on first use).
    #[arg(long)]
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder of the same family whose tokenizer,
    /// scheduler and config.json files give what the file does not record.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Storage precision of weights and activations: auto is f16 where the adapter has
    /// SHADER_F16, else f32; f32 is the exact path.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: Precision,
    /// Never use the network: a repo id must be in the Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// A model loaded for the command line.
pub struct Model {
    pub loaded: LoadedModel,
    pub scheduler: Ddim,
    pub dtype: DType,
}

impl ModelArgs {
    /// Resolves `--model` and loads it with the one loader; notes go to `progress`.
    pub fn load(&self, gpu: &Gpu, progress: &mut dyn Progress) -> Result<Model> {
        let dtype = self.precision.dtype(gpu)?;
        let source = crate::hub::locate(&self.model, dtype, self.offline)?;
        let layout = source.layout(self.config.as_deref());
        let cx = Ctx { gpu, dtype };
        let loaded = pollster::block_on(load_model(&Disk, &layout, cx, progress))?;
        for n in loaded.model.notes() {
            progress.note(&n);
        }
        let scheduler = Ddim::from_optional_config(loaded.scheduler_config.as_ref())?;
        Ok(Model {
            loaded,
            scheduler,
            dtype,
        })
    }
}
