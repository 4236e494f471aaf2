//! The library's translation from start to finish, without the command line:
//! open a GPU, load a model with the one loader, decode an image, translate
//! it with the paper's options, and write the images.
//!
//!     cargo run --release --example translate
//!     cargo run --release --example translate -- MODEL IMAGE "PROMPT" OUT.png
//!
//! With no arguments it runs the tiny random-weight model that ships in the
//! repository (its output is structured noise, not the prompt) at 64x64 and
//! 10 steps; given a model (a diffusers folder, a single-file checkpoint or
//! a hub id in the local cache) it uses the authors' defaults.

use pnp::gpu::{DType, Gpu, GpuOptions};
use pnp::models::{files::Disk, loader, locate::resolve, nn::Ctx};
use pnp::pipeline::{Pipeline, PnpOptions, scheduler::Ddim};
use pnp::progress::Progress;

/// Prints phases and notes as they come.
struct Print;

impl Progress for Print {
    fn phase(&mut self, name: &str, total: usize) {
        eprintln!("{name} ({total})");
    }
    fn tick(&mut self) {}
    fn note(&mut self, msg: &str) {
        eprintln!("note: {msg}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels-tests/fixtures");
    let tiny = args.is_empty();
    let arg = |i: usize, default: String| args.get(i).cloned().unwrap_or(default);
    let model = arg(0, format!("{fixtures}/models/sd15-tiny"));
    let image = arg(1, format!("{fixtures}/pnp/square.png"));
    let prompt = arg(2, "a photo of a cat".into());
    let out = arg(3, "translated.png".into());

    // The GPU, and the model read with the same loader the CLI and the page use.
    let gpu = pollster::block_on(Gpu::new(&GpuOptions::default()))?;
    eprintln!("adapter: {}", gpu.describe());
    let dtype = DType::F32;
    let layout = resolve(&model)?.layout(None);
    let cx = Ctx { gpu: &gpu, dtype };
    let m = pollster::block_on(loader::load_model(&Disk, &layout, cx, &mut Print))?;
    let scheduler = Ddim::from_optional_config(m.scheduler_config.as_ref())?;
    let mut pipe = Pipeline::new(gpu.clone(), &m.model, &m.tokenizer, scheduler, dtype);

    // The image at its processing size: the shorter side 512 by default.
    let bytes = std::fs::read(&image)?;
    let size = if tiny { Some(64) } else { None };
    let (px, notes) = pnp::picture::decode(&image, &bytes, size, size)?;
    for n in notes {
        eprintln!("note: {n}");
    }

    // The authors' settings, fewer steps for the tiny model.
    let mut opts = PnpOptions::default();
    if tiny {
        (opts.steps, opts.inversion_steps) = (10, 10);
    }
    let prompts = [prompt.as_str()];
    let size = [px.height, px.width];
    let translation =
        pollster::block_on(pipe.translate(&px.data, size, &prompts, &opts, &mut Print))?;
    let png = pnp::picture::encode_png(&translation.images[0], px.height, px.width)?;
    std::fs::write(&out, png)?;
    println!("{prompt:?} -> {out} ({}x{})", px.width, px.height);
    for (phase, secs) in &pipe.stats.phases {
        println!("  {phase:<28} {secs:>7.2} s");
    }
    Ok(())
}
