//! `pnp info`: the detected architecture, dims, dtypes and parameter counts.

use anyhow::{Result, bail};
use pnp::gpu::DType;
use pnp::models::loader::resolve;
use pnp::models::nn::Ctx;
use pnp::models::sd::SdModel;

pub fn run(
    model: &str,
    config_dir: Option<&std::path::Path>,
    adapter: Option<String>,
) -> Result<()> {
    let source = resolve(model)?;
    let gpu = super::open_gpu(adapter)?;
    let m = SdModel::load(
        Ctx {
            gpu: &gpu,
            dtype: DType::F32,
        },
        &source,
        config_dir,
    )?;
    let (t, u, v) = (&m.text.config, &m.unet.config, &m.vae.config);
    println!("model: {} ({:?})", m.root.display(), source);
    println!("architecture: {:?}", m.family);
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
    println!(
        "unet: channels {:?}, {} layers per block, heads {:?}, cross-attention {}, {} projections, {} groups",
        u.block_out_channels,
        u.layers_per_block,
        heads,
        u.cross_attention_dim,
        if u.use_linear_projection {
            "linear"
        } else {
            "conv"
        },
        u.norm_num_groups
    );
    println!(
        "vae: channels {:?}, latent {}, scaling factor {}",
        v.block_out_channels, v.latent_channels, v.scaling_factor
    );
    for a in &m.assumed {
        println!(
            "assumed (not recorded in a single-file checkpoint; pass --config DIR to set): {a}"
        );
    }
    let mut unused_total = 0;
    for r in &m.report {
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
    println!("every weight was found and used");
    Ok(())
}
