//! The tiny SD1.5- and SD2-structured models (kernels-tests/fixtures/models,
//! from tools/make_model_fixtures.py) against diffusers/transformers run in
//! float64 on the same weights. sd2-tiny's weights are stored in f16; the
//! references use those f16 values exactly, and so do we (widened to f32).
//!
//! Tolerances (f32 graph), |got - want| <= atol + rtol |want|:
//! text encoder 1e-5 + 1e-5 rel; UNet eps 2e-5 + 1e-4 rel; VAE moments
//! 2e-5 + 1e-4 rel; VAE decode 1e-4 + 1e-4 rel (measured maxima on lavapipe:
//! 1.9e-6, 1.6e-6, 2.6e-6, 1.2e-5). Where the adapter has SHADER_F16 the
//! same models also run with f16 storage, at looser bounds stated below.
//! The measured maxima are printed (`cargo test --release --test models -- --nocapture`).

mod common;

use common::*;
use pnp::gpu::{DType, Tensor};
use pnp::graph::Graph;
use pnp::models::clip::ClipText;
use pnp::models::config::{ClipConfig, UnetConfig, VaeConfig, read_config};
use pnp::models::files::{Disk, FileSource, MemoryFiles};
use pnp::models::loader::{self, LoadError, LoadedModel, ModelLayout};
use pnp::models::nn::Ctx;
use pnp::models::unet::Unet;
use pnp::models::vae::Vae;
use pnp::models::weights::{WeightError, Weights};
use pnp::progress::Quiet;
use std::path::PathBuf;

/// The loader's reading of one component folder on disk, for an f32 device.
fn component_weights(dir: &std::path::Path) -> Result<Weights, WeightError> {
    let dir = dir.to_str().expect("utf-8 path");
    let mut quiet = Quiet;
    let read = loader::component_weights(&Disk, dir, DType::F32, &mut quiet);
    match pollster::block_on(read) {
        Ok(w) => Ok(w),
        Err(LoadError::Weights(e)) => Err(e),
        Err(e) => panic!("not a weight error: {e}"),
    }
}

fn folder(name: &str) -> PathBuf {
    fixture_path("models").join(name)
}

fn run_text(name: &str, dtype: DType, tol: Tol, fails: &mut Failures) {
    let gpu = gpu();
    let cx = Ctx { gpu: &gpu, dtype };
    let dir = folder(name).join("text_encoder");
    let cfg: ClipConfig = read_config(&dir.join("config.json")).expect("config");
    let w = component_weights(&dir).expect("weights");
    let clip = ClipText::load(cx, &w, cfg).expect("load");
    assert!(
        w.unused().is_empty(),
        "unused text-encoder tensors: {:?}",
        w.unused()
    );
    let r = Fixture::load(&format!("models/{name}-ref.safetensors"));
    for i in 0..4 {
        let ids: Vec<u32> = r.ints[&format!("ids/{i}")]
            .iter()
            .map(|&x| x as u32)
            .collect();
        let mut g = Graph::new(gpu.clone(), dtype);
        let emb = clip.embeddings_tensor(cx, &[ids]).expect("embed");
        let x = g.external("emb", &emb);
        let y = clip.forward(&mut g, &x).expect("graph");
        let got = run_graph(&mut g, &y);
        if let Some(rep) = fails.check(compare(
            &format!("{name} text/{i} {dtype:?}"),
            &got,
            &r.get(&format!("text/{i}")).1,
            tol,
        )) {
            eprintln!("{name} text/{i} {dtype:?}: max abs {:.2e}", rep.max_abs);
        }
    }
}

#[test]
fn text_encoders_match_transformers() {
    let mut fails = Failures::default();
    for name in ["sd15-tiny", "sd2-tiny"] {
        run_text(
            name,
            DType::F32,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
            &mut fails,
        );
    }
    if gpu().caps.shader_f16 {
        // f16 storage (measured max 5.1e-3).
        run_text(
            "sd15-tiny",
            DType::F16,
            Tol {
                atol: 1e-2,
                rtol: 1e-2,
            },
            &mut fails,
        );
    }
    fails.finish("text encoders");
}

fn run_unet(name: &str, dtype: DType, tol: Tol, fails: &mut Failures) {
    let gpu = gpu();
    let cx = Ctx { gpu: &gpu, dtype };
    let dir = folder(name).join("unet");
    let cfg: UnetConfig = read_config(&dir.join("config.json")).expect("config");
    let w = component_weights(&dir).expect("weights");
    let unet = Unet::load(cx, &w, cfg).expect("load");
    assert!(
        w.unused().is_empty(),
        "unused UNet tensors: {:?}",
        w.unused()
    );
    let r = Fixture::load(&format!("models/{name}-ref.safetensors"));
    let (cs, cd) = r.get("unet/context");
    for size in ["8x8", "16x16", "8x16"] {
        let (ls, ld) = r.get(&format!("unet/{size}/latent"));
        let mut g = Graph::new(gpu.clone(), dtype);
        let x = g.external("latent", &Tensor::from_f32(&gpu, "latent", ld, ls, dtype));
        let c = g.external("context", &Tensor::from_f32(&gpu, "context", cd, cs, dtype));
        let t = Unet::timestep_input(&mut g, ls[0]);
        let eps = unet.forward(&mut g, &x, &t, &c).expect("graph");
        g.output(&eps);
        let plan = g.plan().expect("plan");
        for step in [1.0f32, 981.0] {
            plan.write(&t, &vec![step; ls[0]]);
            plan.run();
            let got = pollster::block_on(plan.read(&eps)).expect("read");
            let want = &r.get(&format!("unet/{size}/eps_t{}", step as u32)).1;
            if let Some(rep) = fails.check(compare(
                &format!("{name} unet {size} t={step} {dtype:?}"),
                &got,
                want,
                tol,
            )) {
                eprintln!(
                    "{name} unet {size} t={step} {dtype:?}: max abs {:.2e}",
                    rep.max_abs
                );
            }
        }
    }
}

#[test]
fn unets_match_diffusers() {
    let mut fails = Failures::default();
    for name in ["sd15-tiny", "sd2-tiny"] {
        run_unet(
            name,
            DType::F32,
            Tol {
                atol: 2e-5,
                rtol: 1e-4,
            },
            &mut fails,
        );
    }
    // f16 storage of weights and activations, f32 accumulation (measured max 2.0e-3).
    if gpu().caps.shader_f16 {
        run_unet(
            "sd15-tiny",
            DType::F16,
            Tol {
                atol: 5e-3,
                rtol: 1e-2,
            },
            &mut fails,
        );
        // On cooperative matrices the GEGLU projections whose sides are
        // multiples of the tile run with their LayerNorm split off (LN_A 0)
        // and both operands read as whole tiles.
        if let Some(coop) = gpu().caps.coop {
            let geglu: Vec<_> = (gpu().kernel_keys().into_iter())
                .filter(|k| {
                    k.family == "gemm"
                        && k.consts.contains(&("ACT", 4))
                        && k.consts.contains(&("COOP", coop.side))
                })
                .collect();
            let split = |k: &pnp::gpu::KernelKey| {
                k.consts.contains(&("LN_A", 0)) && k.consts.contains(&("DIRECT_A", 1))
            };
            assert!(geglu.iter().any(split), "{geglu:?}");
        }
    }
    fails.finish("unets");
}

fn run_vae(name: &str, dtype: DType, enc_tol: Tol, dec_tol: Tol, fails: &mut Failures) {
    let gpu = gpu();
    let cx = Ctx { gpu: &gpu, dtype };
    let dir = folder(name).join("vae");
    let cfg: VaeConfig = read_config(&dir.join("config.json")).expect("config");
    let w = component_weights(&dir).expect("weights");
    let vae = Vae::load(cx, &w, cfg).expect("load");
    assert!(
        w.unused().is_empty(),
        "unused VAE tensors: {:?}",
        w.unused()
    );
    let r = Fixture::load(&format!("models/{name}-ref.safetensors"));
    for size in ["8x8", "16x16", "8x16"] {
        let (is, id) = r.get(&format!("vae/{size}/image"));
        let mut g = Graph::new(gpu.clone(), dtype);
        let x = g.external("image", &Tensor::from_f32(&gpu, "image", id, is, dtype));
        let m = vae.encode_moments(&mut g, &x).expect("graph");
        let got = run_graph(&mut g, &m);
        let half = got.len() / 2;
        for (part, vals) in [("mean", &got[..half]), ("logvar", &got[half..])] {
            let want = &r.get(&format!("vae/{size}/{part}")).1;
            if let Some(rep) = fails.check(compare(
                &format!("{name} vae {size} {part} {dtype:?}"),
                vals,
                want,
                enc_tol,
            )) {
                eprintln!(
                    "{name} vae {size} {part} {dtype:?}: max abs {:.2e}",
                    rep.max_abs
                );
            }
        }

        let (zs, zd) = r.get(&format!("vae/{size}/latent"));
        let mut g = Graph::new(gpu.clone(), dtype);
        let z = g.external("z", &Tensor::from_f32(&gpu, "z", zd, zs, dtype));
        let y = vae.decode(&mut g, &z).expect("graph");
        let got = run_graph(&mut g, &y);
        let want = &r.get(&format!("vae/{size}/decoded")).1;
        if let Some(rep) = fails.check(compare(
            &format!("{name} vae {size} decode {dtype:?}"),
            &got,
            want,
            dec_tol,
        )) {
            eprintln!(
                "{name} vae {size} decode {dtype:?}: max abs {:.2e}",
                rep.max_abs
            );
        }
    }
}

#[test]
fn vaes_match_diffusers() {
    let mut fails = Failures::default();
    for name in ["sd15-tiny", "sd2-tiny"] {
        run_vae(
            name,
            DType::F32,
            Tol {
                atol: 2e-5,
                rtol: 1e-4,
            },
            Tol {
                atol: 1e-4,
                rtol: 1e-4,
            },
            &mut fails,
        );
    }
    if gpu().caps.shader_f16 {
        // f16 storage (measured max: moments 4.6e-3, decode 1.6e-2).
        run_vae(
            "sd2-tiny",
            DType::F16,
            Tol {
                atol: 1e-2,
                rtol: 1e-2,
            },
            Tol {
                atol: 3e-2,
                rtol: 1e-2,
            },
            &mut fails,
        );
    }
    fails.finish("vaes");
}

/// A fresh empty folder under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pnp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let gpu = gpu();
    let cx = Ctx {
        gpu: &gpu,
        dtype: DType::F32,
    };
    let te = folder("sd15-tiny").join("text_encoder");
    let cfg: ClipConfig = read_config(&te.join("config.json")).expect("config");

    // A truncated download: names the file.
    let dir = temp_dir("truncated");
    let bytes = std::fs::read(te.join("model.safetensors")).expect("read");
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).expect("write");
    let err = component_weights(&dir).expect_err("truncated file must fail");
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A missing tensor: names the full key and the file.
    let full = Weights::read_safetensors(&te.join("model.safetensors")).expect("read");
    let key = "text_model.encoder.layers.1.mlp.fc2.weight";
    let mut t = full.clone();
    t.remove(key);
    let err = ClipText::load(cx, &Weights::new("clip.safetensors", t), cfg.clone())
        .err()
        .expect("missing tensor must fail");
    assert!(matches!(err, WeightError::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains(key) && err.to_string().contains("clip.safetensors"),
        "{err}"
    );

    // A wrong shape: names the key and both shapes.
    let mut t = full.clone();
    let orig = t[key].clone();
    t.insert(
        key.into(),
        pnp::models::weights::HostTensor::from_f32(vec![32, 63], vec![0.0; 32 * 63]),
    );
    let err = ClipText::load(cx, &Weights::new("clip.safetensors", t), cfg.clone())
        .err()
        .expect("wrong shape must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(key) && msg.contains("[32, 63]") && msg.contains(&format!("{:?}", orig.shape)),
        "{msg}"
    );

    // Token ids from a tokenizer that does not belong to the model: an error, not a panic.
    let clip = ClipText::load(
        cx,
        &Weights::new("clip.safetensors", full.clone()),
        cfg.clone(),
    )
    .expect("load");
    let err = clip
        .embed(&[vec![cfg.vocab_size as u32]])
        .expect_err("id past the vocabulary");
    assert!(err.to_string().contains("vocabulary"), "{err}");

    // A folder with only pickle weights: says so and how to convert.
    let dir = temp_dir("pickle");
    std::fs::write(dir.join("diffusion_pytorch_model.bin"), b"not loaded").expect("write");
    let err = component_weights(&dir).expect_err("pickle-only folder must fail");
    assert!(
        matches!(err, WeightError::Pickle { .. }) && err.to_string().contains("safetensors"),
        "{err}"
    );

    // An unknown layout: a path that is neither a folder, a checkpoint nor a repo id.
    let file = temp_dir("layout").join("weights.npz");
    std::fs::write(&file, b"x").expect("write");
    let err = pnp::models::locate::resolve(file.to_str().expect("utf-8 path"))
        .expect_err("unknown layout must fail");
    assert!(matches!(err, WeightError::Layout { .. }), "{err}");

    // A repo id that is not in the local hub cache: says how to download it.
    let err = pnp::models::locate::resolve("nobody-org/no-such-model")
        .expect_err("absent repo must fail");
    assert!(
        err.to_string().contains("huggingface-cli download"),
        "{err}"
    );
}

/// The same tiny models as single-file LDM checkpoints (tools/ldm_layout.py),
/// mapped onto the diffusers modules by pnp::models::ldm. Group and head
/// counts are not in the weights; they come from the folder's config.json.
#[test]
fn single_file_checkpoints_match_diffusers() {
    use pnp::models::locate::ModelSource;
    use pnp::models::sd::SdModel;
    let gpu = gpu();
    let dtype = DType::F32;
    let cx = Ctx { gpu: &gpu, dtype };
    let tol = Tol {
        atol: 2e-5,
        rtol: 1e-4,
    };
    let mut fails = Failures::default();
    for name in ["sd15-tiny", "sd2-tiny"] {
        let file = fixture_path("models").join(format!("{name}.safetensors"));
        let m = SdModel::load(cx, &ModelSource::SingleFile(file), Some(&folder(name)))
            .expect("single-file load");
        for r in &m.report {
            assert!(
                r.unused.is_empty(),
                "{name} {}: unused {:?}",
                r.name,
                r.unused
            );
        }
        let r = Fixture::load(&format!("models/{name}-ref.safetensors"));

        // Text: prompt 2.
        let ids: Vec<u32> = r.ints["ids/2"].iter().map(|&x| x as u32).collect();
        let mut g = Graph::new(gpu.clone(), dtype);
        let emb = m.text.embeddings_tensor(cx, &[ids]).expect("embed");
        let x = g.external("emb", &emb);
        let y = m.text.forward(&mut g, &x).expect("graph");
        let got = run_graph(&mut g, &y);
        fails.check(compare(
            &format!("{name} single-file text/2"),
            &got,
            &r.get("text/2").1,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
        ));

        // UNet at 8x16, t = 981.
        let (ls, ld) = r.get("unet/8x16/latent");
        let (cs, cd) = r.get("unet/context");
        let mut g = Graph::new(gpu.clone(), dtype);
        let x = g.external("latent", &Tensor::from_f32(&gpu, "latent", ld, ls, dtype));
        let c = g.external("context", &Tensor::from_f32(&gpu, "context", cd, cs, dtype));
        let t = Unet::timestep_input(&mut g, ls[0]);
        let eps = m.unet.forward(&mut g, &x, &t, &c).expect("graph");
        g.output(&eps);
        let plan = g.plan().expect("plan");
        plan.write(&t, &vec![981.0; ls[0]]);
        plan.run();
        let got = pollster::block_on(plan.read(&eps)).expect("read");
        fails.check(compare(
            &format!("{name} single-file unet 8x16"),
            &got,
            &r.get("unet/8x16/eps_t981").1,
            tol,
        ));

        // VAE decode at 16x16.
        let (zs, zd) = r.get("vae/16x16/latent");
        let mut g = Graph::new(gpu.clone(), dtype);
        let z = g.external("z", &Tensor::from_f32(&gpu, "z", zd, zs, dtype));
        let y = m.vae.decode(&mut g, &z).expect("graph");
        let got = run_graph(&mut g, &y);
        fails.check(compare(
            &format!("{name} single-file vae decode"),
            &got,
            &r.get("vae/16x16/decoded").1,
            Tol {
                atol: 1e-4,
                rtol: 1e-4,
            },
        ));
    }
    fails.finish("single-file checkpoints");
}

/// `--model org/name` resolves offline in the Hugging Face hub cache layout
/// (models--org--name/refs/main naming the snapshot).
#[test]
fn hub_repo_ids_resolve_in_the_local_cache() {
    use pnp::models::locate::{ModelSource, resolve_with_hub};
    let hub = temp_dir("hub");
    let repo = hub.join("models--some-org--tiny-sd");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).expect("snapshot dir");
    std::fs::create_dir_all(repo.join("refs")).expect("refs dir");
    std::fs::write(repo.join("refs/main"), "0123abcd\n").expect("ref");
    match resolve_with_hub("some-org/tiny-sd", &hub).expect("resolves") {
        ModelSource::Folder(p) => assert_eq!(p, snap),
        other => panic!("expected the snapshot folder, got {other:?}"),
    }
    let err = resolve_with_hub("some-org/absent", &hub).expect_err("absent repo");
    assert!(
        err.to_string()
            .contains("huggingface-cli download some-org/absent"),
        "{err}"
    );
}

/// At 512x512 in f32 the SD VAE decoder's last up block holds (1, 256, 512,
/// 512) tensors, 256 MiB, twice lavapipe's 128 MiB binding limit (and
/// WebGPU's default); at 768x768 the encoder's 128-channel maps (288 MiB) and
/// its mid-block attention scores (9216 x 9216, 324 MiB) are over it too.
/// Under a 128 MiB limit the real-shape VAE must still plan: each op that
/// meets such a tensor splits its work over windows, and the planner refuses
/// any binding over the limit. (Split results are checked against unsplit
/// ones in the kernel tests; running these graphs on lavapipe would take many
/// minutes.)
#[test]
fn sd_vae_at_512_and_768_plans_under_a_128_mib_binding_limit() {
    let gpu = gpu();
    let (_, _, config) = pnp::models::presets::sd15();
    let w = pnp::models::weights::Weights::synthetic("synthetic sd15 vae", 0);
    let dtype = DType::F32;
    let vae = Vae::load(Ctx { gpu: &gpu, dtype }, &w, config).expect("synthetic vae");
    let limit = 128u64 << 20;
    for size in [512, 768] {
        for decode in [true, false] {
            let mut g = Graph::new(gpu.clone(), dtype);
            g.set_max_binding(limit);
            let y = if decode {
                let z = g.input("latent", &[1, 4, size / 8, size / 8], dtype);
                vae.decode(&mut g, &z).expect("decoder graph")
            } else {
                let x = g.input("image", &[1, 3, size, size], dtype);
                vae.encode_moments(&mut g, &x).expect("encoder graph")
            };
            g.output(&y);
            let what = format!(
                "{} at {size}x{size}",
                if decode { "decoder" } else { "encoder" }
            );
            let plan = g
                .plan()
                .unwrap_or_else(|e| panic!("the f32 VAE {what} must plan: {e}"));
            eprintln!(
                "VAE {what}, f32, 128 MiB binding limit: {} dispatches, {:.0} MiB planned",
                plan.len(),
                plan.planned_bytes() as f64 / (1 << 20) as f64
            );
        }
    }
}

/// `Pipeline::preflight` records every graph a translation needs and checks
/// it against the device's limits before any work. The real SD2.1-base
/// network (synthetic weights) at 768x768 and 1024x1024 in f32, batch 3,
/// must pass under 128 MiB bindings (the limit is lowered to that on any
/// adapter) (at 1024: the UNet's 251 MiB
/// feed-forward activations and 188 MiB skip concatenations, the VAE's 512
/// MiB maps and 1 GiB attention scores are split); a 4096x4096 image, one of
/// whose groups alone outgrows a binding, must be refused with a message,
/// not a panic.
#[test]
fn preflight_passes_768_and_1024_in_f32_and_refuses_what_cannot_fit() {
    use pnp::pipeline::Pipeline;
    use pnp::pipeline::scheduler::Ddim;
    let gpu = gpu();
    let dtype = DType::F32;
    let (tc, uc, vc) = pnp::models::presets::sd21_base();
    let synthetic = |name: &str, seed| pnp::models::weights::Weights::synthetic(name, seed);
    let model = pnp::models::sd::SdModel::from_parts(
        Ctx { gpu: &gpu, dtype },
        PathBuf::from("synthetic:sd21-base"),
        (synthetic("text_encoder", 1), tc),
        (synthetic("unet", 2), uc),
        (synthetic("vae", 3), vc),
    )
    .expect("synthetic model");
    let mut pipe = Pipeline::from_embeddings(gpu.clone(), &model, Ddim::sd(), dtype);
    // lavapipe's and WebGPU's default limit, on any adapter.
    let limit = 128 << 20;
    pipe.set_max_binding(limit);
    assert!(
        pipe.max_binding() == limit,
        "this adapter's bindings are under 128 MiB: {} bytes",
        gpu.max_binding()
    );
    for size in [768, 1024] {
        pipe.preflight([size, size], 3)
            .unwrap_or_else(|e| panic!("{size}x{size} f32 must fit under 128 MiB bindings: {e}"));
    }
    // One group of the decoder's last group norm: 4 channels of 4096x4096
    // f32, 256 MiB, cannot be split below a group.
    let err = pipe
        .preflight([4096, 4096], 2)
        .expect_err("4096x4096 outgrows a 128 MiB binding");
    eprintln!("4096x4096: {err}");
    assert!(
        err.to_string().contains("4096x4096") && err.to_string().contains("134217728-byte"),
        "{err}"
    );
}

/// A component folder read by the one loader, from `src` at `dir`.
fn read_component(src: &impl FileSource, dir: &str, dtype: DType) -> Weights {
    let mut quiet = Quiet;
    let read = loader::component_weights(src, dir, dtype, &mut quiet);
    pollster::block_on(read).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// Tensor names and shapes, the comparable content of a component.
fn tensor_list(w: &Weights) -> Vec<(String, Vec<usize>)> {
    w.tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect()
}

/// The command line reads a folder from disk; the page reads the same folder
/// as a folder pick gives it (files in memory under the folder's name). Both
/// go through the one loader, so they must choose the same files and make
/// the same tensors, and a whole model loads the same both ways.
#[test]
fn disk_and_picked_files_load_the_same_model() {
    let gpu = gpu();
    for name in ["sd15-tiny", "sd2-tiny"] {
        let dir = folder(name);
        let picked = MemoryFiles {
            files: MemoryFiles::from_dir(&dir)
                .expect("read the fixture")
                .files
                .into_iter()
                .map(|(k, v)| (format!("{name}/{k}"), v))
                .collect(),
        };
        let on_disk = dir.to_str().expect("utf-8 path").to_string();
        for dtype in dtypes_of(&gpu) {
            for comp in ["text_encoder", "unet", "vae"] {
                let a = read_component(&Disk, &format!("{on_disk}/{comp}"), dtype);
                let b = read_component(&picked, &format!("{name}/{comp}"), dtype);
                assert_eq!(tensor_list(&a), tensor_list(&b), "{name}/{comp} {dtype:?}");
                let file = |w: &Weights| w.source.rsplit('/').next().map(str::to_string);
                assert_eq!(
                    file(&a),
                    file(&b),
                    "{name}/{comp} {dtype:?}: the file chosen"
                );
            }
            let cx = Ctx { gpu: &gpu, dtype };
            let disk_layout = ModelLayout::Folder {
                root: on_disk.clone(),
            };
            let pick_layout = ModelLayout::Folder { root: name.into() };
            let from_disk =
                pollster::block_on(loader::load_model(&Disk, &disk_layout, cx, &mut Quiet))
                    .expect("load from disk");
            let from_pick =
                pollster::block_on(loader::load_model(&picked, &pick_layout, cx, &mut Quiet))
                    .expect("load from the picked files");
            for (a, b) in from_disk.model.report.iter().zip(&from_pick.model.report) {
                assert_eq!(
                    (a.name, a.parameters, a.stored_dtype, &a.unused),
                    (b.name, b.parameters, b.stored_dtype, &b.unused),
                    "{name} {dtype:?}"
                );
            }
            assert_eq!(from_disk.scheduler_config, from_pick.scheduler_config);
            assert_eq!(from_disk.model.notes(), from_pick.model.notes());
            let ids = |m: &LoadedModel| m.tokenizer.encode("a photo of a cat").expect("ids").ids;
            assert_eq!(ids(&from_disk), ids(&from_pick));
        }
    }
}

/// Which file a component folder loads from: the fp16 variant for an f16
/// device when there is one, the full-precision file otherwise; a sharded
/// checkpoint through its index, every shard read.
#[test]
fn the_loader_prefers_fp16_files_for_f16_and_follows_shard_indexes() {
    let te = folder("sd15-tiny").join("text_encoder");
    let bytes = std::fs::read(te.join("model.safetensors")).expect("fixture");
    let mut both = MemoryFiles::default();
    both.files
        .insert("te/model.safetensors".into(), bytes.clone());
    both.files
        .insert("te/model.fp16.safetensors".into(), bytes.clone());
    assert!(
        read_component(&both, "te", DType::F32)
            .source
            .ends_with("/model.safetensors")
    );
    assert!(
        read_component(&both, "te", DType::F16)
            .source
            .ends_with("/model.fp16.safetensors")
    );

    // Two shards and their index, as transformers writes them.
    let whole = read_component(&both, "te", DType::F32);
    let names: Vec<&String> = whole.tensors.keys().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture");
    let shard = |keys: &[&String]| {
        let views: Vec<(String, safetensors::tensor::TensorView)> = keys
            .iter()
            .map(|k| ((*k).clone(), st.tensor(k).expect("tensor")))
            .collect();
        safetensors::serialize(views, None).expect("serialise")
    };
    let mut sharded = MemoryFiles::default();
    let (s1, s2) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    sharded.files.insert(format!("te/{s1}"), shard(first));
    sharded.files.insert(format!("te/{s2}"), shard(second));
    let map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|k| ((*k).clone(), s1.into()))
        .chain(second.iter().map(|k| ((*k).clone(), s2.into())))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    sharded.files.insert(
        "te/model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    let from_shards = read_component(&sharded, "te", DType::F32);
    assert_eq!(tensor_list(&from_shards), tensor_list(&whole));
    assert!(
        from_shards.source.contains(s1) && from_shards.source.contains(s2),
        "{}",
        from_shards.source
    );
    // A shard the index names but the folder lacks: named in the error.
    sharded.files.remove(&format!("te/{s2}"));
    let mut quiet = Quiet;
    let err = pollster::block_on(loader::component_weights(
        &sharded,
        "te",
        DType::F32,
        &mut quiet,
    ))
    .expect_err("a missing shard");
    assert!(err.to_string().contains(s2), "{err}");
}

/// A hook whose tap names no layer of the UNet is refused when the graph is
/// built: it would otherwise never capture or inject, and nothing would say so.
#[test]
fn hooks_that_name_no_layer_are_refused() {
    use pnp::models::hooks::{AttnTap, Hooks, QkHook, ResnetHook, ResnetTap};
    let gpu = gpu();
    let dtype = DType::F32;
    let dir = folder("sd15-tiny").join("unet");
    let cfg: UnetConfig = read_config(&dir.join("config.json")).expect("config");
    let unet = Unet::load(
        Ctx { gpu: &gpu, dtype },
        &component_weights(&dir).expect("w"),
        cfg,
    )
    .expect("load");
    let record = |hooks: &Hooks| {
        let mut g = Graph::new(gpu.clone(), dtype);
        let x = g.input("x", &[1, 4, 8, 8], dtype);
        let t = Unet::timestep_input(&mut g, 1);
        let ctx = g.input("ctx", &[1, 77, unet.config.cross_attention_dim], dtype);
        unet.forward_hooked(&mut g, &x, &t, &ctx, hooks).map(|_| ())
    };
    record(&Hooks::default()).expect("no hooks");
    let mut past_blocks = Hooks::default();
    past_blocks
        .resnets
        .push((ResnetTap { up: 9, resnet: 0 }, ResnetHook::default()));
    let err = record(&past_blocks).expect_err("up_blocks[9] does not exist");
    assert!(err.to_string().contains("up_blocks[9].resnets[0]"), "{err}");
    // up_blocks[0] of SD has no attentions at all.
    let mut no_attention = Hooks::default();
    no_attention
        .attn1
        .push((AttnTap { up: 0, attn: 0 }, QkHook::default()));
    let err = record(&no_attention).expect_err("up_blocks[0] has no attention");
    assert!(
        err.to_string().contains("up_blocks[0].attentions[0]"),
        "{err}"
    );
}
