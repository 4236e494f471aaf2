//! The `pnp` command line: thin; the work is in the library.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pnp::gpu::{DType, Gpu, GpuOptions};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pnp",
    version,
    about = "Plug-and-Play Diffusion Features on WGSL kernels (wgpu)"
)]
struct Cli {
    /// Pick the GPU adapter whose name contains this text (also PNP_ADAPTER).
    #[arg(long, global = true, env = "PNP_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F16,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model's detected architecture and check that every weight is found.
    Info {
        /// A diffusers folder, a single-file .safetensors checkpoint, or a hub repo id in the local cache.
        #[arg(long)]
        model: String,
        /// For a single-file checkpoint: a diffusers folder whose config.json files give the
        /// settings the file does not record (group and head counts).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Translate an image with Plug-and-Play diffusion features: keep its layout, change what the prompt says.
    Translate(Box<TranslateCmd>),
    /// Text-to-image DDIM, for generated guidance images; --save-features keeps the trajectory for translate.
    Generate {
        #[arg(long)]
        model: String,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value = "")]
        negative_prompt: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 7.5)]
        guidance: f32,
        #[arg(long, default_value_t = 512)]
        width: usize,
        #[arg(long, default_value_t = 512)]
        height: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Save the trajectory; `translate --load-inversion FILE` then injects this generation's features.
        #[arg(long)]
        save_features: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
    },
    /// Benchmarks (never tests).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(clap::Args)]
struct TranslateCmd {
    /// A diffusers folder, a single-file .safetensors checkpoint, or a hub repo id in the local cache.
    #[arg(long)]
    model: String,
    /// For a single-file checkpoint: a diffusers folder with its tokenizer and configs.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The guidance image (PNG or JPEG).
    #[arg(long)]
    image: std::path::PathBuf,
    /// Target prompt; repeat for several (one inversion and feature store serve all).
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Output image (PNG or JPEG); with several prompts, <stem>-<i>.<ext>.
    #[arg(long)]
    out: std::path::PathBuf,
    #[arg(long, default_value = "ugly, blurry, black, low res, unrealistic")]
    negative_prompt: String,
    #[arg(long, default_value = "")]
    inversion_prompt: String,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 999)]
    inversion_steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Fraction of the sampling steps with ResNet feature injection.
    #[arg(long, default_value_t = 0.8)]
    pnp_f_t: f32,
    /// Fraction of the sampling steps with self-attention q/k injection.
    #[arg(long, default_value_t = 0.5)]
    pnp_attn_t: f32,
    /// Processing width (multiple of 64); default: shorter side 512, aspect kept.
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Write the float32 latents "final" [prompts,4,h/8,w/8] and "inverted_start" here.
    #[arg(long)]
    latents_out: Option<std::path::PathBuf>,
    /// Save the inversion (every z_t) to reuse it for this image.
    #[arg(long)]
    save_inversion: Option<std::path::PathBuf>,
    /// Reuse an inversion saved by --save-inversion (skips encode and inversion).
    #[arg(long)]
    load_inversion: Option<std::path::PathBuf>,
    /// Feature store: auto (resident if it fits), resident, or inline (the reference's batch-3 call).
    #[arg(long, default_value = "auto")]
    store: String,
    /// Storage precision of weights and activations (f16 needs SHADER_F16).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// UNet steps, VAE and whole translations at real SD shapes, with synthetic weights (no files needed).
    Pipeline {
        #[arg(long, value_enum, default_value = "sd15")]
        arch: pnp::bench_pipeline::Arch,
        /// Image side in pixels (multiple of 64); 512 is the real size, 64 a smoke run for lavapipe.
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Timed runs per step, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also run the default translation with 999 inversion steps.
        #[arg(long)]
        full: bool,
        /// Time the UNet steps only (no VAE, no translations), for slow adapters.
        #[arg(long, conflicts_with = "vae_only")]
        unet_only: bool,
        /// Time the VAE encode and decode only (no UNet, no translations).
        #[arg(long)]
        vae_only: bool,
        #[arg(long, value_enum, default_value = "f16")]
        precision: Precision,
    },
    /// GFLOP/s and GB/s of each kernel at SD 1.5/2.1 shapes for 512x512.
    Kernels {
        /// Smaller token counts and spatial sizes, for software adapters such as lavapipe.
        #[arg(long)]
        quick: bool,
        /// Storage precision of the kernels (f16 needs SHADER_F16).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
        /// Timed runs per kernel, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

fn open_gpu(adapter: Option<String>) -> Result<Arc<Gpu>> {
    let gpu = pollster::block_on(Gpu::new(&GpuOptions {
        adapter_name: adapter,
        ..Default::default()
    }))?;
    println!("adapter: {}", gpu.describe());
    Ok(gpu)
}

fn precision_dtype(gpu: &Gpu, p: Precision) -> Result<DType> {
    match p {
        Precision::F32 => Ok(DType::F32),
        Precision::F16 if gpu.caps.shader_f16 => Ok(DType::F16),
        Precision::F16 => bail!("this adapter has no SHADER_F16; use --precision f32"),
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: these are user-facing.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { model, config } => info::run(&model, config.as_deref(), cli.adapter),
        Cmd::Translate(cmd) => {
            let TranslateCmd {
                model,
                config,
                image,
                prompts,
                out,
                negative_prompt,
                inversion_prompt,
                steps,
                inversion_steps,
                guidance,
                pnp_f_t,
                pnp_attn_t,
                width,
                height,
                latents_out,
                save_inversion,
                load_inversion,
                store,
                precision,
            } = *cmd;
            let store = translate::TranslateArgs::store_mode(&store)?;
            let gpu = open_gpu(cli.adapter)?;
            let dtype = precision_dtype(&gpu, precision)?;
            let args = translate::TranslateArgs {
                model,
                config,
                image,
                prompts,
                out,
                width,
                height,
                latents_out,
                save_inversion,
                load_inversion,
                dtype,
                opts: pnp::pnp::pipeline::PnpOptions {
                    negative_prompt,
                    inversion_prompt,
                    steps,
                    inversion_steps,
                    guidance,
                    pnp_f_t,
                    pnp_attn_t,
                    store,
                    ..Default::default()
                },
            };
            translate::run(args, gpu)
        }
        Cmd::Generate {
            model,
            config,
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            width,
            height,
            out,
            save_features,
            precision,
        } => {
            let gpu = open_gpu(cli.adapter)?;
            let dtype = precision_dtype(&gpu, precision)?;
            let args = generate::GenerateArgs {
                model,
                config,
                prompt,
                negative_prompt,
                seed,
                steps,
                guidance,
                width,
                height,
                out,
                save_features,
                dtype,
            };
            generate::run(args, gpu)
        }
        Cmd::Bench { what } => match what {
            BenchWhat::Pipeline {
                arch,
                size,
                iters,
                full,
                unet_only,
                vae_only,
                precision,
            } => {
                let gpu = open_gpu(cli.adapter)?;
                let dtype = precision_dtype(&gpu, precision)?;
                let opts = pnp::bench_pipeline::PipelineBenchOptions {
                    arch,
                    size,
                    iters,
                    full,
                    unet_only,
                    vae_only,
                    dtype,
                };
                pnp::bench_pipeline::run(&gpu, &opts, &mut std::io::stdout())
                    .map_err(|e| anyhow::anyhow!(e))
                    .context("pipeline benchmark")
            }
            BenchWhat::Kernels {
                quick,
                precision,
                iters,
            } => {
                let gpu = open_gpu(cli.adapter)?;
                let dtype = precision_dtype(&gpu, precision)?;
                println!(
                    "precision: {dtype:?}{}",
                    if quick { " (--quick shapes)" } else { "" }
                );
                println!(
                    "{:<44} {:>10} {:>10} {:>9}",
                    "kernel", "ms", "GFLOP/s", "GB/s"
                );
                for r in pnp::bench::kernels(&gpu, dtype, quick, iters.max(1))
                    .map_err(|e| anyhow::anyhow!(e))
                    .context("kernel benchmark")?
                {
                    println!(
                        "{:<44} {:>10.3} {:>10.2} {:>9.2}",
                        r.name,
                        r.seconds * 1e3,
                        r.gflops,
                        r.gbytes
                    );
                }
                Ok(())
            }
        },
    }
}

mod generate;
mod imageio;
mod info;
mod translate;
