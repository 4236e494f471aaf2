//! `pnp generate`: text-to-image DDIM for generated guidance images. The
//! trajectory can be saved and handed to `pnp translate --load-inversion`,
//! so the translation injects the generation's own features.

use crate::files::{self, Kind, Outputs};
use crate::model::ModelArgs;
use crate::progress::Bars;
use crate::translate::cli_words;
use anyhow::Result;
use pnp::pipeline::Pipeline;
use pnp::pipeline::options::check_guidance;
use pnp::pipeline::stages::check_size;
use pnp::progress::Progress;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GenerateCmd {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the starting noise (our own generator: seeds do not carry over from PyTorch).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Image width (multiple of 64).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Image height (multiple of 64).
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Output image (PNG or JPEG).
    #[arg(long)]
    out: PathBuf,
    /// Save the trajectory; `translate --load-inversion FILE` then injects this generation's features.
    #[arg(long)]
    save_features: Option<PathBuf>,
}

pub fn run(cmd: GenerateCmd, device: &crate::DeviceArgs) -> Result<()> {
    check_size([cmd.height, cmd.width])?;
    cli_words(check_guidance(cmd.guidance))?;
    let mut outputs = Outputs::default();
    outputs.add(&cmd.out, Kind::Image, "--out");
    if let Some(p) = &cmd.save_features {
        outputs.add(p, Kind::Tensors, "--save-features");
    }
    outputs.check(&[])?;
    let gpu = crate::open_gpu(device)?;
    let mut bars = Bars::default();
    let m = cmd.model.load(&gpu, &mut bars)?;
    let l = &m.loaded;
    let mut pipe = Pipeline::new(gpu.clone(), &l.model, &l.tokenizer, m.scheduler, m.dtype);
    pipe.scheduler
        .timesteps(cmd.steps)
        .map_err(|e| anyhow::anyhow!("--steps: {e}"))?;
    // The adapter's limits at this size (the UNet at its two guidance rows).
    pipe.preflight([cmd.height, cmd.width], 2)?;
    let emb = pollster::block_on(pipe.embed(&[&cmd.negative_prompt, &cmd.prompt], &mut bars))?;
    let hw = [cmd.height / 8, cmd.width / 8];
    let (seed, steps, guidance) = (cmd.seed, cmd.steps, cmd.guidance);
    let generation = pipe.generate(&emb[0], &emb[1], hw, seed, steps, guidance, &mut bars);
    let traj = pollster::block_on(generation)?;
    bars.phase("decode", 1);
    let img = pollster::block_on(pipe.decode(&traj.z0, hw))?;
    bars.tick();
    bars.finish();
    let params = crate::params::Params {
        generator: format!("pnp {}", env!("CARGO_PKG_VERSION")),
        command: "generate".into(),
        model: cmd.model.model.clone(),
        model_hash: l.model.fingerprint(),
        precision: cmd.model.precision.name_on(&gpu),
        image: None,
        image_hash: None,
        prompt: cmd.prompt.clone(),
        prompts: vec![cmd.negative_prompt.clone()],
        width: cmd.width,
        height: cmd.height,
        seed: Some(seed),
        options: None,
    };
    let json = params.to_json()?;
    files::save_image(&cmd.out, &img, cmd.height, cmd.width, Some(&json))?;
    println!(
        "generated {:?} (seed {seed}) -> {}",
        cmd.prompt,
        cmd.out.display()
    );
    if let Some(p) = &cmd.save_features {
        files::write_atomic(p, &traj.to_safetensors()?)?;
        println!(
            "  trajectory -> {} (translate it with --load-inversion {} --steps {steps})",
            p.display(),
            p.display(),
        );
    }
    let precision = crate::translate::precision_words(cmd.model.precision, &gpu);
    println!("precision: {precision}");
    if let Some(words) = crate::autotune_words(&gpu) {
        println!("{words}");
    }
    crate::translate::print_stats(&pipe.stats);
    Ok(())
}
