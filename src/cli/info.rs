//! `pnp info`: the detected architecture, dims, dtypes and parameter counts,
//! loaded exactly as `translate` loads it; or, with `--image`, the
//! parameters an output of pnp carries.

use crate::model::ModelArgs;
use crate::params::Params;
use anyhow::{Result, bail};
use pnp::progress::Quiet;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InfoCmd {
    /// A diffusers folder, a single-file .safetensors checkpoint, or a Hugging Face repo id
    /// (downloaded into the Hugging Face cache on first use).
    #[arg(long, required_unless_present = "image")]
    model: Option<String>,
    /// For a single-file checkpoint: a diffusers folder of the same family whose tokenizer,
    /// scheduler and config.json files give what the file does not record.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Storage precision of weights and activations (auto, f32, f16).
    #[arg(long, value_enum, default_value = "auto")]
    precision: crate::Precision,
    /// Never use the network: a repo id must be in the Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Print the parameters an output image of pnp (translate, generate,
    /// batch) carries instead: what made it, and how to make it again.
    #[arg(long, conflicts_with = "model")]
    image: Option<PathBuf>,
}

/// The parameters `path` carries, one per line.
fn print_params(path: &std::path::Path) -> Result<()> {
    let p = Params::read(path)?;
    println!(
        "{}: made by `{}` ({})",
        path.display(),
        p.command,
        p.generator
    );
    println!(
        "  model: {} (weights {}), precision {}",
        p.model, p.model_hash, p.precision
    );
    if let Some(img) = &p.image {
        println!(
            "  image: {img} (bytes {})",
            p.image_hash.as_deref().unwrap_or("?")
        );
    }
    println!("  prompt: {:?}", p.prompt);
    if p.prompts.len() > 1 {
        println!("  prompts of the run: {:?}", p.prompts);
    }
    println!("  size: {}x{}", p.width, p.height);
    if let Some(seed) = p.seed {
        println!("  seed: {seed}");
    }
    if let Some(o) = &p.options {
        println!("  options: {}", serde_json::to_string(o)?);
    }
    if p.command != "generate" {
        println!(
            "  again: pnp translate --model {} --params-from {} --out OUT.png",
            p.model,
            path.display()
        );
    }
    Ok(())
}

pub fn run(cmd: InfoCmd, device: &crate::DeviceArgs) -> Result<()> {
    if let Some(image) = &cmd.image {
        return print_params(image);
    }
    let model = ModelArgs {
        model: cmd.model.clone().unwrap_or_default(),
        config: cmd.config.clone(),
        precision: cmd.precision,
        offline: cmd.offline,
    };
    let gpu = crate::open_gpu(device)?;
    let m = model.load(&gpu, &mut Quiet)?;
    let model = &m.loaded.model;
    let (t, u, v) = (&model.text.config, &model.unet.config, &model.vae.config);
    println!("model: {}", model.root.display());
    println!("architecture: {:?}", model.family);
    println!(
        "text encoder: {} layers, width {}, {} heads, {}, {} positions",
        t.num_hidden_layers,
        t.hidden_size,
        t.num_attention_heads,
        t.hidden_act,
        t.max_position_embeddings
    );
    let heads: Vec<usize> = (0..u.block_out_channels.len())
        .map(|i| u.heads(i))
        .collect();
    let projections = if u.use_linear_projection {
        "linear"
    } else {
        "conv"
    };
    println!(
        "unet: channels {:?}, {} layers per block, heads {:?}, cross-attention {}, {projections} projections, {} groups",
        u.block_out_channels, u.layers_per_block, heads, u.cross_attention_dim, u.norm_num_groups
    );
    println!(
        "vae: channels {:?}, latent {}, scaling factor {}",
        v.block_out_channels, v.latent_channels, v.scaling_factor
    );
    println!(
        "tokenizer: {} tokens per prompt; scheduler: {}, {} prediction{}",
        m.loaded.tokenizer.max_len(),
        if m.loaded.scheduler_config.is_some() {
            "the model's DDIM config"
        } else {
            "Stable Diffusion's DDIM defaults (the model has no scheduler config)"
        },
        match m.scheduler.prediction {
            pnp::pipeline::scheduler::Prediction::Epsilon => "epsilon",
            pnp::pipeline::scheduler::Prediction::V => "v",
        },
        if u.upcast_attention {
            "; attention upcast (the fused attention kernel computes in f32 at every precision)"
        } else {
            ""
        }
    );
    for a in &model.assumed {
        println!(
            "assumed (not recorded in a single-file checkpoint; pass --config DIR to set): {a}"
        );
    }
    let mut unused_total = 0;
    for r in &model.report {
        println!(
            "{:>12}: {:>13} parameters, stored {}, from {}",
            r.name, r.parameters, r.stored_dtype, r.source
        );
        for k in r.unused.iter().take(10) {
            println!("              unused tensor: {k}");
        }
        unused_total += r.unused.len();
    }
    if unused_total > 0 {
        bail!(
            "{unused_total} tensor(s) in the checkpoint were not used: the layout may not be what it seems"
        );
    }
    println!("every weight was found, finite and used");
    // What translate checks next, at the size it takes by default.
    let l = &m.loaded;
    let pipe = pnp::pipeline::Pipeline::new(gpu.clone(), model, &l.tokenizer, m.scheduler, m.dtype);
    let opts = pnp::pipeline::PnpOptions::default();
    pipe.check_translation([512, 512], &["a prompt"], &opts, None)?;
    println!("this adapter can translate a 512x512 image with the default settings");
    Ok(())
}
