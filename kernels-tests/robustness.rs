//! The `pnp` binary against bad input, as a hostile but realistic user would
//! try it: every case is refused with exit code 1 (never a panic's 101),
//! with words that name what is wrong, quickly (the checks run before the
//! work they protect), and without creating or changing any file.
//! Notes that must reach the user (EXIF rotation, upscaling, squashing,
//! dropped alpha, truncated prompts, ignored flags) are checked on stderr
//! without a terminal.

mod pnp_bin;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures")
}

fn tiny_model() -> PathBuf {
    fixtures().join("models/sd15-tiny")
}

fn square() -> PathBuf {
    fixtures().join("pnp/square.png")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pnp-robust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn pnp<A: AsRef<str>>(args: &[A]) -> Run {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let t = Instant::now();
    let out = pnp_bin::pnp_command().args(args).output().expect("run pnp");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs: t.elapsed().as_secs_f64(),
    }
}

/// When a refusal must come.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    /// Before the GPU is opened (nothing but files read).
    Gpu,
    /// Before any UNet, VAE or text encoder runs (the model may be loaded).
    Work,
    /// During the work (a value gone bad), before any output is written.
    Output,
}

/// Runs `args`, which must fail with exit code 1, every one of `words` in
/// its error, before `before`, and with no file under `watch` created or
/// changed.
fn refused<A: AsRef<str>>(args: &[A], words: &[&str], before: Before, watch: &Path) -> Run {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let files = snapshot(watch);
    let r = pnp(&args);
    let what = format!(
        "pnp {}\nexit {:?} in {:.1} s\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        r.code,
        r.secs,
        r.stdout,
        r.stderr
    );
    assert_eq!(r.code, Some(1), "{what}");
    assert!(!r.stderr.contains("panicked"), "{what}");
    for w in words {
        assert!(r.stderr.contains(w), "missing {w:?} in the error\n{what}");
    }
    match before {
        Before::Gpu => assert!(!r.stdout.contains("adapter:"), "GPU opened\n{what}"),
        Before::Work => {
            for phase in [
                "text encoder",
                "vae encode",
                "inversion",
                "UNet evaluations",
            ] {
                assert!(!r.stdout.contains(phase), "{phase} ran\n{what}");
            }
        }
        Before::Output => {}
    }
    // A tiny model loads in about a second; nothing here may get further.
    assert!(r.secs < 30.0, "took {:.1} s\n{what}", r.secs);
    assert_eq!(snapshot(watch), files, "files created or changed\n{what}");
    r
}

/// `translate` of the square fixture at 64x64 in 2 steps; `extra` flags
/// replace the value of one already there, or are added.
fn translate(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "translate",
        "--model",
        s(model),
        "--image",
        s(&square()),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec();
    let mut i = 0;
    while i < extra.len() {
        let (flag, value) = (extra[i], extra.get(i + 1).filter(|v| !v.starts_with("--")));
        match (a.iter().position(|x| x == flag), value) {
            (Some(at), Some(v)) => a[at + 1] = v.to_string(),
            _ => a.extend([flag].into_iter().chain(value.copied()).map(String::from)),
        }
        i += 1 + value.is_some() as usize;
    }
    a
}

/// A copy of the tiny model in `dir` (files linked, not copied) with
/// `edit` applied to the files it replaces.
fn model_copy(dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = tiny_model();
    let dst = dir.join("model");
    for e in walk(&src) {
        let rel = e.strip_prefix(&src).expect("under the model");
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&e, &to).expect("link");
    }
    edit(&dst);
    dst
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().collect()
}

/// Replaces the link at `path` by a file holding `bytes`.
fn replace(path: &Path, bytes: &[u8]) {
    std::fs::remove_file(path).expect("unlink");
    std::fs::write(path, bytes).expect("write");
}

/// Edits the JSON file at `path` (a link into the fixtures) in place.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("json");
    edit(&mut v);
    replace(path, &serde_json::to_vec(&v).expect("json"));
}

/// The tensors of a safetensors file: (name, dtype, shape, bytes), and its metadata.
type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;
type Meta = std::collections::HashMap<String, String>;

fn read_tensors(bytes: &[u8]) -> (Tensors, Option<Meta>) {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).expect("metadata");
    let mut t: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    (t, meta.metadata().clone())
}

fn write_tensors(t: &Tensors, meta: Option<Meta>) -> Vec<u8> {
    let views: Vec<_> = t
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, meta).expect("serialize")
}

#[test]
fn outputs_and_sizes_are_refused_before_the_gpu() {
    let dir = temp("outputs");
    let model = tiny_model();
    let out = dir.join("o.png");
    let existing = dir.join("keep.bmp");
    std::fs::write(&existing, b"an existing file").expect("write");
    let image_copy = dir.join("in.png");
    std::fs::copy(square(), &image_copy).expect("copy");

    // 3. The input image as the output; several outputs on one path.
    let mut args = translate(&model, &image_copy, &[]);
    args[4] = s(&image_copy).to_string();
    refused(&args, &["input of this command"], Before::Gpu, &dir);
    let same = s(&dir.join("same.png")).to_string();
    let args = translate(
        &model,
        Path::new(&same),
        &["--latents-out", &same, "--save-inversion", &same],
    );
    refused(
        &args,
        &["--latents-out and --out both name"],
        Before::Gpu,
        &dir,
    );

    // 4. Image formats we cannot write, an existing file among them.
    for bad in ["keep.bmp", "x.webp", "x.gif", "x"] {
        let args = translate(&model, &dir.join(bad), &[]);
        refused(
            &args,
            &["must end in .png, .jpg or .jpeg"],
            Before::Gpu,
            &dir,
        );
    }

    // 2. Sizes: beyond the stated maximum, before the image is resized.
    let args = translate(&model, &out, &["--width", "99968"]);
    refused(&args, &["beyond the largest", "8192"], Before::Gpu, &dir);
    // Within the maximum but beyond this adapter: the preflight, before
    // the image is resized or any network runs.
    let args = translate(&model, &out, &["--width", "8192", "--height", "8192"]);
    refused(
        &args,
        &["this adapter cannot translate a 8192x8192 image"],
        Before::Work,
        &dir,
    );
    let args = translate(&model, &out, &["--width", "100"]);
    refused(&args, &["multiples of 64"], Before::Gpu, &dir);
    let generate = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "x",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect()
    };
    let huge = generate(&["--width", "99968", "--height", "99968"]);
    refused(&huge, &["beyond the largest"], Before::Gpu, &dir);

    // 5. Guidance must be finite (also in generate).
    for g in ["--guidance=nan", "--guidance=inf", "--guidance=-inf"] {
        let args = translate(&model, &out, &[g]);
        refused(
            &args,
            &["--guidance must be a finite number"],
            Before::Gpu,
            &dir,
        );
        let args = generate(&["--width", "64", "--height", "64", g]);
        refused(
            &args,
            &["--guidance must be a finite number"],
            Before::Gpu,
            &dir,
        );
    }

    // 6. Step counts: words, not lists.
    let args = translate(&model, &out, &["--steps", "0"]);
    let r = refused(
        &args,
        &["sampling steps", "1..=1000", "got 0"],
        Before::Work,
        &dir,
    );
    assert!(!r.stderr.contains("[]"), "{}", r.stderr);
    let args = translate(&model, &out, &["--steps", "30", "--inversion-steps", "45"]);
    let r = refused(&args, &["--inversion-steps 30 or 88"], Before::Work, &dir);
    assert!(r.stderr.len() < 400, "a long message: {}", r.stderr);

    // An image we cannot read.
    let mut args = translate(&model, &out, &[]);
    args[4] = s(&existing).to_string();
    refused(
        &args,
        &["cannot read the image", "keep.bmp"],
        Before::Gpu,
        &dir,
    );
}

#[test]
fn damaged_inversion_files_are_refused() {
    let dir = temp("inversions");
    let watch = temp("inversions-watch");
    let model = tiny_model();
    let inv = dir.join("inv.safetensors");
    let made = pnp(&translate(
        &model,
        &dir.join("o.png"),
        &["--save-inversion", s(&inv)],
    ));
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let (tensors, meta) = read_tensors(&std::fs::read(&inv).expect("inversion"));
    let meta = meta.expect("metadata");
    assert!(meta.contains_key("model"), "no model fingerprint: {meta:?}");
    let variant = |name: &str, t: &Tensors, m: &Meta| {
        let p = dir.join(name);
        std::fs::write(&p, write_tensors(t, Some(m.clone()))).expect("write");
        p
    };
    let out = watch.join("o.png");
    let load = |p: &Path, extra: &[&str]| {
        translate(&model, &out, &[&["--load-inversion", s(p)], extra].concat())
    };
    let retyped = |dtype, convert: &dyn Fn(Vec<f32>) -> Vec<u8>| -> Tensors {
        tensors
            .iter()
            .map(|(n, _, s, b)| {
                (
                    n.clone(),
                    dtype,
                    s.clone(),
                    convert(bytemuck::pod_collect_to_vec(b)),
                )
            })
            .collect()
    };

    // 1. Other element types are refused, not read as raw f32 bytes.
    let f64s = retyped(safetensors::Dtype::F64, &|v| {
        let d: Vec<f64> = v.into_iter().map(f64::from).collect();
        bytemuck::cast_slice(&d).to_vec()
    });
    let p = variant("f64.safetensors", &f64s, &meta);
    refused(&load(&p, &[]), &["is F64", "float32"], Before::Gpu, &watch);
    let f16s = retyped(safetensors::Dtype::F16, &|v| {
        let h: Vec<half::f16> = v.into_iter().map(half::f16::from_f32).collect();
        bytemuck::cast_slice(&h).to_vec()
    });
    let p = variant("f16.safetensors", &f16s, &meta);
    refused(&load(&p, &[]), &["is F16", "float32"], Before::Gpu, &watch);

    // 5. Non-finite latents.
    let nan = retyped(safetensors::Dtype::F32, &|v| {
        let v: Vec<f32> = v.iter().map(|_| f32::NAN).collect();
        bytemuck::cast_slice(&v).to_vec()
    });
    let p = variant("nan.safetensors", &nan, &meta);
    refused(
        &load(&p, &[]),
        &["non-finite", "make it again"],
        Before::Gpu,
        &watch,
    );

    // 6. Incomplete: one latent of its own grid missing.
    let some: Tensors = tensors
        .iter()
        .filter(|t| t.0 != "inverted/1")
        .cloned()
        .collect();
    let p = variant("incomplete.safetensors", &some, &meta);
    refused(
        &load(&p, &[]),
        &["incomplete", "timestep 1"],
        Before::Work,
        &watch,
    );

    // 7. Made with another model: refused, taken with --force.
    let mut other = meta.clone();
    other.insert("model".into(), "0123456789abcdef".into());
    let p = variant("other-model.safetensors", &tensors, &other);
    refused(
        &load(&p, &[]),
        &["another model", "--force"],
        Before::Work,
        &watch,
    );
    let forced = pnp(&load(&p, &["--force"]));
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert!(
        forced.stderr.contains("taken: --force"),
        "{}",
        forced.stderr
    );

    // 7. --inversion-steps given with --load-inversion is said to be ignored.
    let r = pnp(&load(&inv, &["--inversion-steps", "1"]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let note = "--inversion-steps 1 is ignored: the loaded inversion has 2 steps";
    assert!(r.stderr.contains(note), "{}", r.stderr);
    let r = pnp(&load(&inv, &[]));
    assert!(
        !r.stderr.contains("is ignored"),
        "noted without the flag: {}",
        r.stderr
    );
}

/// Edits the tensors of the safetensors file at `path` (a link) in place.
fn edit_tensors(path: &Path, edit: impl FnOnce(&mut Tensors)) {
    let (mut t, meta) = read_tensors(&std::fs::read(path).expect("read"));
    edit(&mut t);
    replace(path, &write_tensors(&t, meta));
}

/// The bytes of tensor `name` in `t`, and its dtype.
fn tensor<'a>(t: &'a mut Tensors, name: &str) -> (&'a mut safetensors::Dtype, &'a mut Vec<u8>) {
    let e = t.iter_mut().find(|e| e.0 == name).expect("tensor");
    (&mut e.1, &mut e.3)
}

#[test]
fn damaged_models_are_refused_by_translate_info_and_generate_alike() {
    let dir = temp("models");
    let watch = temp("models-watch");
    let out = watch.join("o.png");
    const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
    type Edit = fn(&Path);
    let cases: [(&str, Edit, &[&str]); 9] = [
        (
            "nan-weight",
            |m| {
                edit_tensors(&m.join(UNET), |t| {
                    tensor(t, "conv_in.weight").1[4..8].copy_from_slice(&f32::NAN.to_le_bytes())
                })
            },
            &["conv_in.weight", "non-finite", "element 1"],
        ),
        (
            "f64-weight",
            |m| {
                edit_tensors(&m.join(UNET), |t| {
                    let (dtype, bytes) = tensor(t, "conv_in.bias");
                    let v: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
                    let d: Vec<f64> = v.into_iter().map(f64::from).collect();
                    (*dtype, *bytes) = (safetensors::Dtype::F64, bytemuck::cast_slice(&d).to_vec());
                })
            },
            &["conv_in.bias", "element type F64"],
        ),
        (
            "groups-0",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| {
                    v["norm_num_groups"] = 0.into()
                })
            },
            &["unet/config.json", "norm_num_groups is 0"],
        ),
        (
            "groups-7",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| {
                    v["norm_num_groups"] = 7.into()
                })
            },
            &["norm_num_groups 7 does not divide"],
        ),
        (
            "head-dim-0",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| {
                    v["attention_head_dim"] = 0.into()
                })
            },
            &["head count of block 0 is 0"],
        ),
        (
            "betas-above-1",
            |m| {
                let p = m.join("scheduler/scheduler_config.json");
                edit_json(&p, |v| v["beta_end"] = 2.0.into())
            },
            &["every beta must lie in (0, 1)"],
        ),
        (
            "scaling-0",
            |m| {
                edit_json(&m.join("vae/config.json"), |v| {
                    v["scaling_factor"] = 0.0.into()
                })
            },
            &["vae/config.json", "scaling_factor is 0"],
        ),
        (
            "vocab-empty",
            |m| replace(&m.join("tokenizer/vocab.json"), b"{}"),
            &["vocab.json", "holds no tokens"],
        ),
        (
            "merges-empty",
            |m| replace(&m.join("tokenizer/merges.txt"), b"#version: 0.2\n"),
            &["merges.txt", "holds no merges"],
        ),
    ];
    // Finite values that overflow on the way: caught at the phase's end,
    // with the phase and the likely cause, and no image written.
    let case = dir.join("overflow");
    let model = model_copy(&case, |m| {
        edit_tensors(&m.join("vae/diffusion_pytorch_model.safetensors"), |t| {
            let (_, bytes) = tensor(t, "encoder.conv_in.weight");
            let huge: Vec<f32> = vec![3e38; bytes.len() / 4];
            *bytes = bytemuck::cast_slice(&huge).to_vec();
        })
    });
    // (In f32: an f16 run refuses such a weight at load, below.)
    let args = translate(&model, &out, &["--precision", "f32"]);
    refused(
        &args,
        &[
            "after the VAE encode are not finite",
            "VAE encoder's weights",
        ],
        Before::Output,
        &watch,
    );
    let args = translate(&tiny_model(), &out, &["--guidance", "3e38"]);
    refused(
        &args,
        &["after sampling prompt 1 are not finite", "extreme guidance"],
        Before::Output,
        &watch,
    );
    // A weight f16 cannot hold, on an f16 run.
    let case = dir.join("f16-range");
    let model = model_copy(&case, |m| {
        edit_tensors(&m.join(UNET), |t| {
            tensor(t, "conv_in.bias").1[0..4].copy_from_slice(&1e5f32.to_le_bytes())
        })
    });
    let args = translate(&model, &out, &["--precision", "f16"]);
    refused(
        &args,
        &["conv_in.bias", "beyond f16's range", "--precision f32"],
        Before::Work,
        &watch,
    );

    // A single-file checkpoint whose blocks contradict the group count it
    // does not record (SD's 32, assumed): the error says it was assumed.
    // (--config with the tokenizer and the text encoder's config only.)
    let config = dir.join("partial-config");
    std::fs::create_dir_all(config.join("text_encoder")).expect("mkdir");
    std::os::unix::fs::symlink(tiny_model().join("tokenizer"), config.join("tokenizer"))
        .expect("link");
    let te = "text_encoder/config.json";
    std::os::unix::fs::symlink(tiny_model().join(te), config.join(te)).expect("link");
    let single = fixtures().join("models/sd15-tiny.safetensors");
    let args = ["info", "--model", s(&single), "--config", s(&config)];
    refused(
        &args,
        &[
            "norm_num_groups 32 does not divide",
            "were assumed",
            "--config DIR",
        ],
        Before::Work,
        &watch,
    );

    let error = |e: &str| {
        e.lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_default()
            .to_string()
    };
    for (name, edit, words) in cases {
        let case = dir.join(name);
        let model = model_copy(&case, edit);
        let t = refused(&translate(&model, &out, &[]), words, Before::Work, &watch);
        assert!(
            !t.stderr.contains("adapter"),
            "{name} blamed on the adapter: {}",
            t.stderr
        );
        // info refuses it with the same message, and so does generate.
        let i = refused(&["info", "--model", s(&model)], words, Before::Work, &watch);
        assert_eq!(
            error(&i.stderr),
            error(&t.stderr),
            "{name}: info and translate differ"
        );
        let args = [
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "x",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--out",
            s(&out),
        ];
        let g = refused(&args, words, Before::Work, &watch);
        assert_eq!(
            error(&g.stderr),
            error(&t.stderr),
            "{name}: generate and translate differ"
        );
    }
}

/// A JPEG whose pixels are stored 128 wide and 64 high with EXIF
/// orientation 6 (rotate 90 degrees): shown 64 wide and 128 high.
fn rotated_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(128, 64, |x, _| image::Rgb([(x * 2) as u8, 90, 30]));
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .expect("jpeg");
    // An APP1 Exif segment (little-endian TIFF, one IFD entry: Orientation = 6) after SOI.
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
    tiff.extend([0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(len.to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn images_and_prompts_get_notes() {
    let dir = temp("notes");
    let model = tiny_model();
    let out = dir.join("o.png");
    let run = |image: &Path, extra: &[&str]| {
        let mut a = vec![
            "translate",
            "--model",
            s(&model),
            "--image",
            s(image),
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--inversion-steps",
            "2",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        let r = pnp(&a);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        r
    };
    // EXIF orientation: processed as shown (portrait), and said.
    let jpeg = dir.join("rotated.jpg");
    std::fs::write(&jpeg, rotated_jpeg()).expect("write");
    let r = run(&jpeg, &["--width", "64"]);
    assert!(
        r.stderr.contains("EXIF orientation (Rotate90)"),
        "{}",
        r.stderr
    );
    let o = image::open(&out).expect("output");
    assert_eq!(
        (o.width(), o.height()),
        (64, 128),
        "the portrait photo was processed sideways"
    );
    // The pixels are turned, not only the size: the stored rows' red ramp
    // (along x) runs down the shown image.
    let (px, _) =
        pnp::picture::decode("rotated.jpg", &rotated_jpeg(), Some(64), None).expect("decode");
    let red = |x: usize, y: usize| px.data[y * px.width + x];
    assert!(red(32, 127) - red(32, 0) > 0.5, "no ramp down the image");
    assert!(
        (red(0, 64) - red(63, 64)).abs() < 0.1,
        "a ramp across the image"
    );

    // A 1x1 image is upscaled; RGBA loses its alpha; 8:1 squashed to 1:1.
    let tiny = dir.join("tiny.png");
    image::RgbaImage::from_pixel(1, 1, image::Rgba([9, 9, 9, 100]))
        .save(&tiny)
        .expect("png");
    let r = run(&tiny, &["--width", "64", "--height", "64"]);
    assert!(
        r.stderr.contains("is 1x1 and is upscaled to 64x64"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("alpha channel; it is dropped"),
        "{}",
        r.stderr
    );
    let wide = dir.join("wide.png");
    image::RgbImage::from_pixel(512, 64, image::Rgb([1, 2, 3]))
        .save(&wide)
        .expect("png");
    let r = run(&wide, &["--width", "64", "--height", "64"]);
    assert!(r.stderr.contains("the image is squashed"), "{}", r.stderr);

    // A prompt over 77 tokens: a short note on stderr without a terminal.
    let long = format!("a photo of {}", "very ".repeat(400));
    let r = run(&square(), &["--width", "64", "--prompt", &long]);
    let note = r
        .stderr
        .lines()
        .find(|l| l.contains("were dropped"))
        .unwrap_or_else(|| panic!("no truncation note: {}", r.stderr));
    assert!(note.contains("and 320 more word(s)"), "{note}");
    assert!(note.len() < 300, "the whole prompt printed back: {note}");
}
