//! `pnp bench`: kernels at real SD shapes and the pipeline with synthetic
//! weights. Benchmarks are commands, never tests.

mod kernels;
mod pipeline;
mod plan;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// UNet steps, VAE and whole translations at real SD shapes, with synthetic weights (no files needed).
    Pipeline(pipeline::PipelineBenchOptions),
    /// The performance model: dispatches, FLOPs, bytes, starved dispatches, memory and a roofline estimate per graph, for a chosen GPU, without running anything.
    Plan(plan::PlanOptions),
    /// GFLOP/s and GB/s of each kernel at SD 1.5/2.1 shapes for 512x512.
    Kernels {
        /// Smaller token counts and spatial sizes, for software adapters such as lavapipe.
        #[arg(long)]
        quick: bool,
        /// Storage precision of the kernels (f16 needs SHADER_F16).
        #[arg(long, value_enum, default_value = "auto")]
        precision: crate::Precision,
        /// Timed runs per kernel, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

pub fn run(cmd: BenchCmd, device: &crate::DeviceArgs) -> Result<()> {
    let gpu = match &cmd {
        BenchCmd::Plan(p) if p.json => {
            let gpu = crate::open_gpu_quietly(device)?;
            eprintln!("adapter: {}", gpu.describe());
            gpu
        }
        _ => crate::open_gpu(device)?,
    };
    match cmd {
        BenchCmd::Plan(opts) => plan::run(&gpu, &opts),
        BenchCmd::Pipeline(opts) => {
            let dtype = opts.precision.dtype(&gpu)?;
            pipeline::run(&gpu, &opts, dtype, &mut std::io::stdout())
                .map_err(|e| anyhow!(e))
                .context("pipeline benchmark")?;
            if let Some(words) = crate::autotune_words(&gpu) {
                println!("{words}");
            }
            Ok(())
        }
        BenchCmd::Kernels {
            quick,
            precision,
            iters,
        } => {
            let dtype = precision.dtype(&gpu)?;
            let shapes = if quick { " (--quick shapes)" } else { "" };
            println!("precision: {dtype:?}{shapes}");
            println!(
                "{:<48} {:>10} {:>10} {:>9}  variant",
                "kernel", "ms", "GFLOP/s", "GB/s"
            );
            let rows = kernels::kernels(&gpu, dtype, quick, iters.max(1))
                .map_err(|e| anyhow!(e))
                .context("kernel benchmark")?;
            if let Some(words) = crate::autotune_words(&gpu) {
                println!("{words}");
            }
            for r in rows {
                println!(
                    "{:<48} {:>10.3} {:>10.2} {:>9.2}  {}",
                    r.name,
                    r.seconds * 1e3,
                    r.gflops,
                    r.gbytes,
                    r.variant
                );
            }
            Ok(())
        }
    }
}
