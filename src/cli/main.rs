//! The `pnp` command line: argument parsing and files in, files and words
//! out; the work is the library's.

mod batch;
mod bench;
mod eval;
mod examples;
mod files;
mod generate;
mod hub;
mod info;
mod model;
mod params;
mod progress;
mod report;
mod translate;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use pnp::gpu::{Autotune, DType, Gpu, GpuOptions};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pnp",
    version,
    about = "Plug-and-Play Diffusion Features on WGSL kernels (wgpu)"
)]
struct Cli {
    #[command(flatten)]
    device: DeviceArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which adapter, and how its kernels are chosen.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Pick the GPU adapter whose name contains this text (also PNP_ADAPTER).
    #[arg(long, global = true, env = "PNP_ADAPTER")]
    adapter: Option<String>,
    /// Time the kernel variants of each distinct GEMM, convolution and attention
    /// shape once and run the fastest; the winners are kept in the user's cache
    /// folder per adapter, driver and version (PNP_CACHE_DIR overrides the
    /// folder). auto: on GPUs, not on CPU drivers such as lavapipe.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "PNP_AUTOTUNE"
    )]
    autotune: AutotuneMode,
    /// Same as --autotune off: the executor's built-in rule picks every variant.
    #[arg(long, global = true)]
    no_autotune: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AutotuneMode {
    Auto,
    On,
    Off,
}

impl DeviceArgs {
    fn options(&self) -> GpuOptions {
        let mode = if self.no_autotune {
            AutotuneMode::Off
        } else {
            self.autotune
        };
        GpuOptions {
            adapter_name: self.adapter.clone(),
            autotune: (mode != AutotuneMode::Off).then(|| Autotune {
                cache_dir: pnp::gpu::user_cache_dir(),
                on_cpu: mode == AutotuneMode::On,
            }),
            ..Default::default()
        }
    }
}

/// Storage precision of weights and activations.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Precision {
    /// f16 where the adapter has SHADER_F16 (as the reference runs SD), f32 elsewhere.
    Auto,
    /// The exact path: what the PyTorch fixtures check.
    F32,
    /// Needs the adapter's SHADER_F16.
    F16,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model's detected architecture and check that every weight is found and used.
    #[command(after_help = examples::INFO)]
    Info(info::InfoCmd),
    /// Translate an image with Plug-and-Play diffusion features: keep its layout, change what the prompt says.
    #[command(after_help = examples::TRANSLATE)]
    Translate(Box<translate::TranslateCmd>),
    /// Text-to-image DDIM, for generated guidance images; --save-features keeps the trajectory for translate.
    #[command(after_help = examples::GENERATE)]
    Generate(generate::GenerateCmd),
    /// Many edits in one run: a PIE-Bench folder or a manifest, resumable, shardable over machines.
    #[command(after_help = examples::BATCH)]
    Batch(Box<batch::BatchCmd>),
    /// Score result folders on PIE-Bench's metrics: a CSV, a summary per editing type, an HTML page.
    #[command(after_help = examples::EVAL)]
    Eval(eval::EvalCmd),
    /// Benchmarks (never tests).
    #[command(after_help = examples::BENCH)]
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
    /// Print a shell completion script: `pnp completions bash > ~/.local/share/bash-completion/completions/pnp`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Opens the adapter (by name when given) and says which it is.
pub fn open_gpu(device: &DeviceArgs) -> Result<Arc<Gpu>> {
    let gpu = open_gpu_quietly(device)?;
    println!("adapter: {}", gpu.describe());
    Ok(gpu)
}

/// [`open_gpu`] without a word (stdout carries JSON).
pub fn open_gpu_quietly(device: &DeviceArgs) -> Result<Arc<Gpu>> {
    Ok(pollster::block_on(Gpu::new(&device.options()))?)
}

/// One line on what autotune did on `gpu` (None where it is off), and its
/// warning about the cache file if any.
pub fn autotune_words(gpu: &Gpu) -> Option<String> {
    let s = gpu.tuner.as_ref()?.summary();
    let file = s
        .cache_file
        .as_ref()
        .map_or("in memory only".to_string(), |f| {
            format!("cache {}", f.display())
        });
    let mut line = format!(
        "autotune: {} dispatch shapes timed ({:.1} s), {} from the cache; {file}",
        s.timed, s.seconds, s.reused
    );
    if let Some(w) = &s.warning {
        line.push_str(&format!("\nwarning: {w}"));
    }
    Some(line)
}

impl Precision {
    /// The storage type on `gpu`, or why it has none.
    pub fn dtype(self, gpu: &Gpu) -> Result<DType> {
        match self {
            Precision::Auto if gpu.caps.shader_f16 => Ok(DType::F16),
            Precision::Auto | Precision::F32 => Ok(DType::F32),
            Precision::F16 if gpu.caps.shader_f16 => Ok(DType::F16),
            Precision::F16 => anyhow::bail!("this adapter has no SHADER_F16; use --precision f32"),
        }
    }

    /// The flag's value with the storage type it gives on `gpu`:
    /// "f32", "f16", "auto: f16".
    pub fn name_on(self, gpu: &Gpu) -> String {
        let dtype = self.dtype(gpu).map_or("none", |d| d.wgsl());
        match self {
            Precision::Auto => format!("auto: {dtype}"),
            _ => dtype.to_string(),
        }
    }
}

/// Mesa's implicit device-select Vulkan layer connects to a Wayland display
/// to rank the GPUs; without a desktop session (servers, containers, CI)
/// libwayland then prints "error: XDG_RUNTIME_DIR is invalid or not set"
/// although nothing fails. A compute-only program needs no such ranking
/// (wgpu picks the adapter), so the layer is switched off through its
/// manifest's disable variable, unless the user set that variable.
fn quiet_window_system_probe() {
    let session =
        std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    if cfg!(target_os = "linux") && !session && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the first statement of main: no other thread exists yet.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> std::process::ExitCode {
    quiet_window_system_probe();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let device = cli.device;
    let done = match cli.cmd {
        Cmd::Info(cmd) => info::run(cmd, &device),
        Cmd::Translate(mut cmd) => {
            if let Some(m) = matches.subcommand_matches("translate") {
                let given =
                    |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
                cmd.inversion_steps_given = given("inversion_steps");
                cmd.given = m
                    .ids()
                    .map(|id| id.as_str())
                    .filter(|id| given(id))
                    .map(String::from)
                    .collect();
            }
            translate::run(*cmd, &device)
        }
        Cmd::Batch(mut cmd) => {
            let given = |arg: &str| {
                matches
                    .subcommand_matches("batch")
                    .and_then(|m| m.value_source(arg))
                    == Some(clap::parser::ValueSource::CommandLine)
            };
            cmd.inversion_steps_given = given("inversion_steps");
            cmd.inversion_prompt_given = given("inversion_prompt");
            batch::run(*cmd, &device)
        }
        Cmd::Eval(cmd) => eval::run(cmd, &device),
        Cmd::Generate(cmd) => generate::run(cmd, &device),
        Cmd::Bench { what } => bench::run(what, &device),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pnp", &mut std::io::stdout());
            Ok(())
        }
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: these are user-facing.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
