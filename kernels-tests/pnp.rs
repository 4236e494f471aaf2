//! End to end: PnP translations of the tiny models against
//! tools/reference_pnp.py (the spec's algorithm in diffusers, float32, one
//! thread, injection by hooks as in the authors' code), for the resident
//! feature store and for the reference's inline batch-3 path.
//!
//! Tolerance: |got - want| <= 1e-4 * max|want| + 1e-4 |want| on every latent
//! and on the decoded image (the reference's own float32-vs-float64 spread
//! is 1.3e-5 to 1.5e-5 of max|final|).

mod common;

use common::*;
use pnp::gpu::DType;
use pnp::models::nn::Ctx;
use pnp::models::sd::SdModel;
use pnp::models::tokenizer::ClipTokenizer;
use pnp::pipeline::scheduler::Ddim;
use pnp::pipeline::{NegativeSchedule, Pipeline, PnpOptions, SourceLatents, StoreMode};
use pnp::progress::Quiet;
use serde_json::Value as Json;

fn load_png(name: &str) -> (Vec<f32>, [usize; 2]) {
    let img = image::open(fixture_path("pnp").join(name))
        .expect("fixture image")
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    (out, [h, w])
}

fn tol_for(want: &[f32]) -> Tol {
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    Tol {
        atol: 1e-4 * max,
        rtol: 1e-4,
    }
}

/// A case's reference fixture, its metadata, and its model, tokenizer and
/// scheduler loaded on `gpu` in `dtype`.
fn load_case(
    case: &str,
    gpu: &std::sync::Arc<pnp::gpu::Gpu>,
    dtype: DType,
) -> (Fixture, Json, SdModel, ClipTokenizer, Ddim) {
    let f = Fixture::load(&format!("pnp/{case}.safetensors"));
    let c: Json = serde_json::from_str(&f.meta["case"]).expect("case metadata");
    let model_dir = fixture_path("models").join(p_str(&c, "model"));
    let model = SdModel::load_folder(Ctx { gpu, dtype }, &model_dir).expect("model");
    let tok = ClipTokenizer::from_dir(&model_dir.join("tokenizer")).expect("tokenizer");
    let sched_cfg: Json = serde_json::from_str(
        &std::fs::read_to_string(model_dir.join("scheduler/scheduler_config.json"))
            .expect("scheduler config"),
    )
    .expect("json");
    let sched = Ddim::from_config(&sched_cfg).expect("scheduler");
    (f, c, model, tok, sched)
}

fn run_case(case: &str, fails: &mut Failures) {
    let gpu = gpu();
    let dtype = DType::F32;
    let (f, c, model, tok, sched) = load_case(case, &gpu, dtype);
    let prompts = case_prompts(&c);
    let (pixels, hw) = load_png(p_str(&c, "image"));
    let mut by_mode: Vec<Vec<Vec<f32>>> = Vec::new();
    for mode in [StoreMode::Resident, StoreMode::Inline] {
        let opts = PnpOptions {
            store: mode,
            ..case_options(&c)
        };
        let mut pipe = Pipeline::new(gpu.clone(), &model, &tok, sched.clone(), dtype);
        let targets: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let emb = pollster::block_on(pipe.embeddings(&opts, &targets, &mut Quiet)).expect("embed");
        let z0 = pollster::block_on(pipe.encode_image(&pixels, hw)).expect("encode");
        let want = &f.get("z0").1;
        fails.check(compare(&format!("{case} z0"), &z0, want, tol_for(want)));
        let lhw = [hw[0] / 8, hw[1] / 8];
        let inv = pollster::block_on(pipe.invert(
            &z0,
            lhw,
            &emb.inversion,
            opts.inversion_steps,
            &mut Quiet,
        ))
        .expect("invert");
        for t in sched.timesteps(opts.steps).expect("grid") {
            let want = &f.get(&format!("inverted/{t}")).1;
            fails.check(compare(
                &format!("{case} inverted/{t}"),
                &inv.latents[&t],
                want,
                tol_for(want),
            ));
        }
        let source = match opts.source_latents {
            SourceLatents::Inversion => inv,
            SourceLatents::Reconstruction => {
                let c = &emb.inversion;
                pollster::block_on(pipe.reconstruct(&inv, c, opts.steps, &mut Quiet))
                    .expect("reconstruct")
            }
        };
        let finals =
            pollster::block_on(pipe.sample(&source, &emb, &opts, &mut Quiet)).expect("sample");
        assert_eq!(pipe.stats.used_store, mode == StoreMode::Resident);
        let (_, want) = f.get("final");
        let per = want.len() / prompts.len();
        let (_, want_img) = f.get("image");
        let per_img = want_img.len() / prompts.len();
        for (i, got) in finals.iter().enumerate() {
            let w = &want[i * per..(i + 1) * per];
            if let Some(r) = fails.check(compare(
                &format!("{case} {mode:?} final[{i}]"),
                got,
                w,
                tol_for(w),
            )) {
                let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                eprintln!(
                    "{case} {mode:?} final[{i}]: max abs {:.2e} (max |ref| {max:.2})",
                    r.max_abs
                );
            }
            let img = pollster::block_on(pipe.decode(got, lhw)).expect("decode");
            let wi = &want_img[i * per_img..(i + 1) * per_img];
            if let Some(r) = fails.check(compare(
                &format!("{case} {mode:?} image[{i}]"),
                &img,
                wi,
                Tol {
                    atol: 1e-3,
                    rtol: 0.0,
                },
            )) {
                eprintln!("{case} {mode:?} image[{i}]: max abs {:.2e}", r.max_abs);
            }
        }
        eprintln!(
            "{case} {mode:?}: {} UNet evaluations",
            pipe.stats.unet_evals
        );
        by_mode.push(finals);
    }
    // The resident store and the inline source row are the same arithmetic.
    for (i, (a, b)) in by_mode[0].iter().zip(&by_mode[1]).enumerate() {
        fails.check(compare(
            &format!("{case} final[{i}] store vs inline"),
            a,
            b,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
        ));
    }
}

#[test]
fn pnp_matches_reference_sd15_square() {
    let mut fails = Failures::default();
    run_case("sd15_square", &mut fails);
    fails.finish("sd15_square");
}

#[test]
fn pnp_matches_reference_with_finer_inversion() {
    let mut fails = Failures::default();
    run_case("sd15_fine_inversion", &mut fails);
    fails.finish("sd15_fine_inversion");
}

#[test]
fn pnp_matches_reference_sd2_wide_two_prompts() {
    let mut fails = Failures::default();
    run_case("sd2_wide_two_prompts", &mut fails);
    fails.finish("sd2_wide_two_prompts");
}

#[test]
fn pnp_matches_reference_with_the_negative_prompt_schedule() {
    let mut fails = Failures::default();
    run_case("sd15_negative_schedule", &mut fails);
    fails.finish("sd15_negative_schedule");
}

/// PIE-Bench's "ddim+pnp": the source branch walks the inversion's DDIM
/// reconstruction. The stages one by one, then the whole `translate`, whose
/// `prepare` must take the same path.
#[test]
fn pnp_matches_reference_with_reconstructed_source_latents() {
    let case = "sd15_reconstruction";
    let mut fails = Failures::default();
    run_case(case, &mut fails);
    let gpu = gpu();
    let (f, c, model, tok, sched) = load_case(case, &gpu, DType::F32);
    let opts = case_options(&c);
    assert_eq!(opts.source_latents, SourceLatents::Reconstruction);
    let (pixels, hw) = load_png(p_str(&c, "image"));
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tok, sched, DType::F32);
    let prompts = case_prompts(&c);
    let targets: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let t = pollster::block_on(pipe.translate(&pixels, hw, &targets, &opts, &mut Quiet))
        .expect("translate");
    assert!(t.reconstruction.is_some(), "no reconstruction was made");
    let (_, want) = f.get("final");
    fails.check(compare(
        &format!("{case} translate final"),
        &t.finals[0],
        want,
        tol_for(want),
    ));
    fails.finish(case);
}

#[test]
fn pnp_matches_reference_sd2_v_prediction() {
    let mut fails = Failures::default();
    run_case("sd2v_wide", &mut fails);
    fails.finish("sd2v_wide");
}

/// The schedule's limits are today's guidance exactly, without the unused
/// row: alpha 0 (constant) is the negative prompt's, alpha 1 (constant) the
/// empty prompt's; anything between runs three target rows and differs.
#[test]
fn the_negative_schedule_limits_are_the_plain_guidance() {
    let model_dir = fixture_path("models/sd15-tiny");
    let gpu = gpu();
    let dtype = DType::F32;
    let model = SdModel::load_folder(Ctx { gpu: &gpu, dtype }, &model_dir).expect("model");
    let tok = ClipTokenizer::from_dir(&model_dir.join("tokenizer")).expect("tokenizer");
    let (pixels, hw) = load_png("square.png");
    let base = PnpOptions {
        steps: 4,
        inversion_steps: 4,
        ..PnpOptions::default()
    };
    let with = |alpha: Option<f64>, schedule: NegativeSchedule, negative: &str| PnpOptions {
        negative_prompt_alpha: alpha,
        negative_prompt_schedule: schedule,
        negative_prompt: negative.into(),
        ..base.clone()
    };
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tok, Ddim::sd(), dtype);
    let run = |pipe: &mut Pipeline, opts: &PnpOptions| {
        let t = std::time::Instant::now();
        let emb = pollster::block_on(pipe.embeddings(opts, &["a cat"], &mut Quiet)).expect("embed");
        let z0 = pollster::block_on(pipe.encode_image(&pixels, hw)).expect("encode");
        let lhw = [hw[0] / 8, hw[1] / 8];
        let inv = pollster::block_on(pipe.invert(&z0, lhw, &emb.inversion, 4, &mut Quiet))
            .expect("invert");
        let inverting = pipe.stats.unet_evals;
        let finals = pollster::block_on(pipe.sample(&inv, &emb, opts, &mut Quiet)).expect("sample");
        eprintln!(
            "{:?}: {:.1} s",
            opts.negative_prompt_alpha,
            t.elapsed().as_secs_f64()
        );
        (finals.concat(), pipe.stats.unet_evals - inverting)
    };
    let negative = "ugly, blurry";
    let (plain, plain_rows) = run(&mut pipe, &with(None, NegativeSchedule::Linear, negative));
    let (zero, zero_rows) = run(
        &mut pipe,
        &with(Some(0.0), NegativeSchedule::Constant, negative),
    );
    assert_eq!(zero, plain, "alpha 0 is not the negative prompt's guidance");
    assert_eq!(zero_rows, plain_rows, "alpha 0 ran the unconditional row");
    let (empty, empty_rows) = run(&mut pipe, &with(None, NegativeSchedule::Linear, ""));
    let (one, one_rows) = run(
        &mut pipe,
        &with(Some(1.0), NegativeSchedule::Constant, negative),
    );
    assert_eq!(one, empty, "alpha 1 is not the empty prompt's guidance");
    assert_eq!(one_rows, empty_rows, "alpha 1 ran the negative row");
    let (mixed, mixed_rows) = run(
        &mut pipe,
        &with(Some(0.75), NegativeSchedule::Linear, negative),
    );
    // One more row (the unconditional one) at each of the 4 steps.
    assert_eq!(
        mixed_rows,
        plain_rows + 4,
        "the schedule runs three target rows"
    );
    let diff = mixed
        .iter()
        .zip(&plain)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 1e-3, "the schedule changed nothing ({diff})");
}

/// Counts each phase's ticks against its announced total.
#[derive(Default)]
struct Ticks {
    phases: Vec<(String, usize, usize)>,
}

impl pnp::progress::Progress for Ticks {
    fn phase(&mut self, name: &str, total: usize) {
        self.phases.push((name.to_string(), total, 0));
    }
    fn tick(&mut self) {
        if let Some(p) = self.phases.last_mut() {
            p.2 += 1;
        }
    }
    fn note(&mut self, _: &str) {}
}

/// The loop stays on the GPU: a two-prompt translation reads the GPU four
/// times (the text embeddings, the encoded latent, the inversion's
/// trajectory, then the final latents with the images), submits one command
/// buffer per UNet step plus a few, runs the cross-attention keys and
/// values once per phase (hoisted), and every phase's progress ticks reach
/// its total (from completion callbacks).
#[test]
fn a_translation_keeps_the_loop_on_the_gpu() {
    let model_dir = fixture_path("models/sd15-tiny");
    let gpu = own_gpu();
    let dtype = DType::F32;
    let model = SdModel::load_folder(Ctx { gpu: &gpu, dtype }, &model_dir).expect("model");
    let tok = ClipTokenizer::from_dir(&model_dir.join("tokenizer")).expect("tokenizer");
    let (pixels, hw) = load_png("square.png");
    let opts = PnpOptions {
        steps: 4,
        inversion_steps: 4,
        ..PnpOptions::default()
    };
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tok, Ddim::sd(), dtype);
    let mut ticks = Ticks::default();
    let before = gpu.counters.values();
    let run =
        pollster::block_on(pipe.translate(&pixels, hw, &["a cat", "a dog"], &opts, &mut ticks))
            .expect("translate");
    let used = gpu.counters.values() - before;
    assert_eq!(run.images.len(), 2);
    eprintln!(
        "reads {}, submits {}, writes {}, dispatches per step {:?}, phases {:?}",
        used.reads, used.submits, used.writes, pipe.stats.step_dispatches, ticks.phases
    );
    assert!(used.reads <= 4, "{} GPU reads, expected 4", used.reads);
    // One per UNet step (inversion 4, source pass 3, sampling 2 x 4), and
    // 12 more: text and encode with their reads, the inversion's read, a
    // start and a final copy per prompt, two decodes, the last read.
    assert!(used.submits <= 15 + 12, "{} submits", used.submits);
    let (replay, hoisted) = pipe.stats.step_dispatches;
    assert!(
        hoisted > 0 && hoisted % 2 == 0,
        "no cross-attention K/V hoisted: {hoisted}"
    );
    assert!(replay > hoisted);
    // The fused paths ran: the time embedding in conv1's epilogue, the
    // loop's own kernels.
    let keys = gpu.kernel_keys();
    let has = |family: &str, entry: &str, c: Option<(&str, u32)>| {
        keys.iter().any(|k| {
            k.family == family && k.entry == entry && c.is_none_or(|c| k.consts.contains(&c))
        })
    };
    assert!(
        has("conv", "main", Some(("HAS_ROW", 1))),
        "no conv with the time rows"
    );
    assert!(has("ddim", "rows", None) && has("ddim", "update", None));
    for (name, total, got) in &ticks.phases {
        assert_eq!(got, total, "phase {name}: {got} ticks of {total}");
    }
}

/// A case's final latents from one whole translation on `gpu` in `dtype`,
/// with the reference's.
fn translate_case(
    case: &str,
    gpu: &std::sync::Arc<pnp::gpu::Gpu>,
    dtype: DType,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (f, c, model, tok, sched) = load_case(case, gpu, dtype);
    let prompts = case_prompts(&c);
    let targets: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (pixels, hw) = load_png(p_str(&c, "image"));
    let mut pipe = Pipeline::new(gpu.clone(), &model, &tok, sched, dtype);
    let opts = case_options(&c);
    let mut quiet = Quiet;
    let run = pipe.translate(&pixels, hw, &targets, &opts, &mut quiet);
    let run = pollster::block_on(run).expect("translate");
    (run.finals, f.get("final").1.clone())
}

/// f16 end to end (weights and activations, f32 accumulation) against the
/// float32 reference, on the fallback kernels and, where the adapter has
/// them, on cooperative matrices: the two errors are of the same size (the
/// random tiny models amplify f16 rounding over 50 UNet evaluations, so the
/// bound is loose: 5% of max|final|), and the coop run really took the coop
/// GEMMs, convolutions and attention. `PNP_EXPECT_COOP=1` makes a missing coop path a
/// failure.
#[test]
fn f16_translations_stay_near_the_f32_reference() {
    let case = "sd15_square";
    let open = |disable_coop: bool| {
        let opts = pnp::gpu::GpuOptions {
            adapter_name: std::env::var("PNP_ADAPTER").ok(),
            disable_coop,
            ..Default::default()
        };
        pollster::block_on(pnp::gpu::Gpu::new(&opts)).expect("adapter")
    };
    let fallback = open(true);
    if !fallback.caps.shader_f16 {
        eprintln!("skipped: {} has no shader-f16", fallback.describe());
        return;
    }
    let error = |finals: &[Vec<f32>], want: &[f32]| {
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = finals[0]
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        (err, err / max)
    };
    let (finals, want) = translate_case(case, &fallback, DType::F16);
    let (abs, rel) = error(&finals, &want);
    eprintln!("{case} f16 fallback: final max abs {abs:.2e} ({rel:.2e} of max|ref|)");
    assert!(rel < 0.05, "f16 fallback: {rel:.2e} of max|ref|");
    let coop = open(false);
    let expect = std::env::var("PNP_EXPECT_COOP").is_ok_and(|v| v == "1");
    let Some(c) = coop.caps.coop else {
        assert!(
            !expect,
            "PNP_EXPECT_COOP=1 but {} has none",
            coop.describe()
        );
        return;
    };
    let (finals, _) = translate_case(case, &coop, DType::F16);
    let (coop_abs, coop_rel) = error(&finals, &want);
    eprintln!(
        "{case} f16 coop {0}x{0}: final max abs {coop_abs:.2e} ({coop_rel:.2e} of max|ref|)",
        c.side
    );
    assert!(coop_rel < 0.05, "f16 coop: {coop_rel:.2e} of max|ref|");
    assert!(
        coop_abs < 3.0 * abs.max(1e-3),
        "coop error {coop_abs:.2e} against the fallback's {abs:.2e}"
    );
    let keys = coop.kernel_keys();
    assert!(
        keys.iter().any(|k| k.family == "attention_coop"),
        "no attention ran on cooperative matrices"
    );
    for family in ["gemm", "conv"] {
        assert!(
            keys.iter()
                .any(|k| k.family == family && k.consts.contains(&("COOP", c.side))),
            "no coop {family} ran"
        );
        let fell_back = keys.iter().any(|k| {
            k.family == family && k.dtype == DType::F16 && !k.consts.iter().any(|x| x.0 == "COOP")
        });
        assert!(!fell_back, "an f16 {family} fell back to the ALU tiles");
    }
}
