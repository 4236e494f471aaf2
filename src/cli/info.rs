//! `pnp info`: the detected architecture, dims, dtypes and parameter counts,
//! loaded exactly as `translate` loads it.

use crate::model::ModelArgs;
use anyhow::{Result, bail};
use pnp::progress::Quiet;

#[derive(clap::Args)]
pub struct InfoCmd {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(cmd: InfoCmd, device: &crate::DeviceArgs) -> Result<()> {
    let gpu = crate::open_gpu(device)?;
    let m = cmd.model.load(&gpu, &mut Quiet)?;
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
