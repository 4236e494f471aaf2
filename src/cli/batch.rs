//! `pnp batch`: many edits with one model load and one GPU session, from a
//! PIE-Bench folder or a manifest (`pnp::edits`), resumable and shardable.

use crate::files::{self, InputImage};
use crate::model::ModelArgs;
use crate::params::Params;
use crate::translate::cli_words;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pnp::edits::{self, Item, Shard};
use pnp::pipeline::{Pipeline, PnpOptions};
use pnp::progress::{Progress, Timer};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BatchCmd {
    #[command(flatten)]
    model: ModelArgs,
    /// A PIE-Bench folder (mapping_file.json and annotation_images/).
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    pie_bench: Option<PathBuf>,
    /// A JSON Lines manifest: {"image", "source_prompt", "target_prompts",
    /// "mask", "id"} per line, paths relative to the manifest.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Output folder: the input tree mirrored, one PNG per edit. `pnp eval`
    /// names the method after its last component.
    #[arg(long)]
    out: PathBuf,
    /// Run only part K of N of the set (1 <= K <= N): N processes (or array
    /// jobs) with the same --out cover it once.
    #[arg(long)]
    shard: Option<Shard>,
    /// Run items whose outputs exist again (default: skip them).
    #[arg(long)]
    redo: bool,
    /// Processing width (multiple of 64); default: shorter side 512, aspect kept.
    #[arg(long)]
    width: Option<usize>,
    /// Processing height (multiple of 64).
    #[arg(long)]
    height: Option<usize>,
    /// Write a JSON record of the run here: parameters, adapter, and every
    /// item's outputs, status, error and seconds.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Whether --inversion-steps was given on the command line (set by main).
    #[arg(skip)]
    pub inversion_steps_given: bool,
    /// Whether --inversion-prompt was given on the command line (set by main).
    #[arg(skip)]
    pub inversion_prompt_given: bool,
    #[command(flatten)]
    opts: PnpOptions,
}

/// What became of one item, for the report.
#[derive(Serialize)]
struct Outcome {
    id: String,
    image: String,
    outputs: Vec<String>,
    /// "done", "skipped" (outputs existed) or "failed".
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    seconds: f64,
}

#[derive(Serialize)]
struct Record<'a> {
    command: &'static str,
    version: &'static str,
    model: &'a str,
    precision: String,
    set: String,
    shard: Option<String>,
    out: String,
    adapter: String,
    options: &'a PnpOptions,
    done: usize,
    skipped: usize,
    failed: usize,
    seconds: f64,
    items: Vec<Outcome>,
}

pub fn run(mut cmd: BatchCmd, device: &crate::DeviceArgs) -> Result<()> {
    let timer = Timer::start();
    let (items, set) = match (&cmd.pie_bench, &cmd.manifest) {
        (Some(dir), _) => (edits::from_pie_bench(dir)?, dir.clone()),
        (None, Some(file)) => (edits::from_manifest(file)?, file.clone()),
        (None, None) => bail!("give --pie-bench DIR or --manifest FILE"),
    };
    if cmd.pie_bench.is_some() && !cmd.inversion_steps_given {
        // PIE-Bench's PnP runner inverts over the sampling grid itself.
        cmd.opts.inversion_steps = cmd.opts.steps;
    }
    cli_words(cmd.opts.check())?;
    let total = items.len();
    let items = match cmd.shard {
        Some(s) => s.take(items),
        None => items,
    };
    let (todo, finished): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|it| {
        cmd.redo
            || !edits::result_paths(it, &cmd.out)
                .iter()
                .all(|p| p.is_file())
    });
    let shard_words = cmd.shard.map_or(String::new(), |s| {
        format!(", shard {}/{}", s.index, s.count)
    });
    println!(
        "{}: {total} images{shard_words}; {} to run, {} already done in {}",
        set.display(),
        todo.len(),
        finished.len(),
        cmd.out.display()
    );
    if let Some(p) = &cmd.report {
        let mut outputs = files::Outputs::default();
        outputs.add(p, files::Kind::Record, "--report");
        outputs.check(&[])?;
    }

    let gpu = crate::open_gpu(device)?;
    let mut bar = ItemBar::new(todo.len());
    let m = cmd.model.load(&gpu, &mut bar)?;
    let model = &m.loaded.model;
    let made = Made {
        model_hash: model.fingerprint(),
        precision: cmd.model.precision.name_on(&gpu),
    };
    let mut pipe = Pipeline::new(
        gpu.clone(),
        model,
        &m.loaded.tokenizer,
        m.scheduler,
        m.dtype,
    );
    let mut outcomes: Vec<Outcome> = (finished.iter())
        .map(|it| Outcome {
            id: it.id.clone(),
            image: it.image.display().to_string(),
            outputs: display_all(&edits::result_paths(it, &cmd.out)),
            status: "skipped",
            error: None,
            seconds: 0.0,
        })
        .collect();
    let mut failed = 0;
    for it in &todo {
        bar.start(&it.id);
        let t = Timer::start();
        let outputs = edits::result_paths(it, &cmd.out);
        let result = run_item(&cmd, &mut pipe, &made, it, &outputs, &mut bar);
        let error = result.err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            failed += 1;
            bar.println(&format!("error: {} ({}): {e}", it.id, it.image.display()));
        }
        outcomes.push(Outcome {
            id: it.id.clone(),
            image: it.image.display().to_string(),
            outputs: display_all(&outputs),
            status: if error.is_some() { "failed" } else { "done" },
            error,
            seconds: t.seconds(),
        });
        bar.item_done();
    }
    bar.finish();
    let done = todo.len() - failed;
    let seconds = timer.seconds();
    if let Some(p) = &cmd.report {
        let record = Record {
            command: "batch",
            version: env!("CARGO_PKG_VERSION"),
            model: &cmd.model.model,
            precision: cmd.model.precision.name_on(&gpu),
            set: set.display().to_string(),
            shard: cmd.shard.map(|s| format!("{}/{}", s.index, s.count)),
            out: cmd.out.display().to_string(),
            adapter: gpu.describe(),
            options: &cmd.opts,
            done,
            skipped: finished.len(),
            failed,
            seconds,
            items: outcomes,
        };
        files::write_atomic(p, &serde_json::to_vec_pretty(&record)?)?;
    }
    println!(
        "batch: {done} done, {} skipped (outputs existed), {failed} failed, in {seconds:.1} s; results in {}",
        finished.len(),
        cmd.out.display()
    );
    if let Some(p) = &cmd.report {
        println!("  run record -> {}", p.display());
    }
    if let Some(words) = crate::autotune_words(&gpu) {
        println!("{words}");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} items failed (each is named above{}); rerun the same command to retry them",
            todo.len(),
            if cmd.report.is_some() {
                " and in the run record"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn display_all(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// One item: its image, one inversion under its source prompt, every
/// target prompt, the results written.
/// What every output of the run records of its model.
struct Made {
    model_hash: String,
    precision: String,
}

fn run_item(
    cmd: &BatchCmd,
    pipe: &mut Pipeline,
    made: &Made,
    it: &Item,
    outputs: &[PathBuf],
    bar: &mut ItemBar,
) -> Result<()> {
    let image = InputImage::open(&it.image, cmd.width, cmd.height)?;
    let size = image.size();
    let mut opts = cmd.opts.clone();
    if let (Some(p), false) = (&it.source_prompt, cmd.inversion_prompt_given) {
        opts.inversion_prompt = p.clone();
    }
    let prompts: Vec<&str> = it.targets.iter().map(String::as_str).collect();
    cli_words(pipe.check_translation(size, &prompts, &opts, None))?;
    let pixels = image.decode()?;
    pipe.stats = Default::default();
    let prepared = cli_words(pollster::block_on(pipe.prepare(
        &pixels.data,
        size,
        &prompts,
        &opts,
        None,
        bar,
    )))?;
    let (_, images) = pollster::block_on(pipe.finish(&prepared, &opts, bar))?;
    for ((img, path), prompt) in images.iter().zip(outputs).zip(&it.targets) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the folder {}", dir.display()))?;
        }
        let params = Params {
            generator: format!("pnp {}", env!("CARGO_PKG_VERSION")),
            command: "batch".into(),
            model: cmd.model.model.clone(),
            model_hash: made.model_hash.clone(),
            precision: made.precision.clone(),
            image: Some(it.image.display().to_string()),
            image_hash: Some(image.hash()),
            prompt: prompt.clone(),
            prompts: it.targets.clone(),
            width: pixels.width,
            height: pixels.height,
            seed: None,
            options: Some(opts.clone()),
        };
        let json = params.to_json()?;
        files::save_image(path, img, pixels.height, pixels.width, Some(&json))?;
    }
    Ok(())
}

/// One bar over the whole set, with an ETA; the current item and its phase
/// in the message.
struct ItemBar {
    bar: ProgressBar,
    item: String,
    phase: String,
    at: usize,
    of: usize,
}

impl ItemBar {
    fn new(items: usize) -> Self {
        let bar = ProgressBar::new(items as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        ItemBar {
            bar,
            item: String::new(),
            phase: String::new(),
            at: 0,
            of: 0,
        }
    }

    fn start(&mut self, id: &str) {
        self.item = id.to_string();
        self.phase.clear();
        self.show();
    }

    fn item_done(&mut self) {
        self.bar.inc(1);
    }

    fn finish(&self) {
        self.bar.finish();
    }

    fn show(&self) {
        let msg = if self.phase.is_empty() {
            self.item.clone()
        } else {
            format!("{}: {} {}/{}", self.item, self.phase, self.at, self.of)
        };
        self.bar.set_message(msg);
    }

    /// A line above the bar (on a terminal) or on stderr (in a log).
    fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Progress for ItemBar {
    fn phase(&mut self, name: &str, total: usize) {
        self.phase = name.to_string();
        (self.at, self.of) = (0, total);
        self.show();
    }

    fn tick(&mut self) {
        self.at += 1;
        self.show();
    }

    fn note(&mut self, msg: &str) {
        self.println(&format!("note: {msg}"));
    }
}
