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
    /// Benchmarks (never tests).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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
        Cmd::Bench { what } => match what {
            BenchWhat::Kernels {
                quick,
                precision,
                iters,
            } => {
                let gpu = open_gpu(cli.adapter)?;
                let dtype = match precision {
                    Precision::F32 => DType::F32,
                    Precision::F16 if gpu.caps.shader_f16 => DType::F16,
                    Precision::F16 => bail!("this adapter has no SHADER_F16; use --precision f32"),
                };
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

mod info;
