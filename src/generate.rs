//! `pnp generate`: text-to-image DDIM for generated guidance images. The
//! trajectory can be saved and handed to `pnp translate --load-inversion`,
//! so the translation injects the generation's own features.

use crate::imageio;
use crate::translate::{Bars, load_model, save_inversion};
use anyhow::{Result, bail};
use pnp::gpu::{DType, Gpu};
use pnp::pnp::pipeline::{Pipeline, Progress};
use std::path::PathBuf;
use std::sync::Arc;

pub struct GenerateArgs {
    pub model: String,
    pub config: Option<PathBuf>,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f32,
    pub width: usize,
    pub height: usize,
    pub out: PathBuf,
    pub save_features: Option<PathBuf>,
    pub dtype: DType,
}

pub fn run(args: GenerateArgs, gpu: Arc<Gpu>) -> Result<()> {
    if args.width == 0
        || args.height == 0
        || !args.width.is_multiple_of(64)
        || !args.height.is_multiple_of(64)
    {
        bail!(
            "--width and --height must be positive multiples of 64, got {}x{}",
            args.width,
            args.height
        );
    }
    imageio::check_writable(&args.out)?;
    if let Some(p) = &args.save_features {
        imageio::check_writable(p)?;
    }
    let (model, tokenizer, scheduler) =
        load_model(&gpu, &args.model, args.config.as_deref(), args.dtype)?;
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tokenizer, scheduler, args.dtype);
    let mut bars = Bars { bar: None };
    let emb = pollster::block_on(pipe.embed(&[&args.negative_prompt, &args.prompt], &mut bars))?;
    let hw = [args.height / 8, args.width / 8];
    let traj = pollster::block_on(pipe.generate(
        &emb[0],
        &emb[1],
        hw,
        args.seed,
        args.steps,
        args.guidance,
        &mut bars,
    ))?;
    bars.phase("decode", 1);
    let img = pollster::block_on(pipe.decode(&traj.z0, hw))?;
    bars.tick();
    if let Some(b) = bars.bar.take() {
        b.finish();
    }
    imageio::save(&args.out, &img, args.height, args.width)?;
    println!(
        "generated {:?} (seed {}) -> {}",
        args.prompt,
        args.seed,
        args.out.display()
    );
    if let Some(p) = &args.save_features {
        save_inversion(p, &traj)?;
        println!(
            "  trajectory -> {} (translate it with --load-inversion {} --steps {})",
            p.display(),
            p.display(),
            args.steps
        );
    }
    for (phase, secs) in &pipe.stats.phases {
        println!("  {phase:<28} {secs:>9.2} s");
    }
    println!("  UNet evaluations: {} (batch rows)", pipe.stats.unet_evals);
    Ok(())
}
