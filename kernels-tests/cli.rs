//! The `pnp` binary on the tiny model: a real translation end to end, and the
//! errors a user can run into, each saying what to do.

mod pnp_bin;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures")
}

fn pnp(args: &[&str]) -> (bool, String, String) {
    let out = pnp_bin::pnp_command().args(args).output().expect("run pnp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pnp-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn translate_writes_images_latents_and_reuses_an_inversion() {
    let model = fixtures().join("models/sd15-tiny");
    let image = fixtures().join("pnp/square.png");
    let dir = temp("translate");
    let out = dir.join("out.png");
    let lat = dir.join("lat.safetensors");
    let inv = dir.join("inv.safetensors");
    let base = [
        "translate",
        "--model",
        model.to_str().expect("utf-8"),
        "--image",
        image.to_str().expect("utf-8"),
        "--prompt",
        "a photo of a cat",
        "--prompt",
        "a dog",
        "--steps",
        "4",
        "--inversion-steps",
        "4",
        "--width",
        "128",
        "--out",
        out.to_str().expect("utf-8"),
        "--latents-out",
        lat.to_str().expect("utf-8"),
    ];
    let report = dir.join("run.json");
    let mut first = base.to_vec();
    first.extend(["--save-inversion", inv.to_str().expect("utf-8")]);
    first.extend(["--report", report.to_str().expect("utf-8")]);
    let (ok, stdout, stderr) = pnp(&first);
    assert!(ok, "translate failed:\n{stdout}\n{stderr}");
    // The run record: what was asked, what it cost, how often the host waited.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    assert_eq!(
        r["prompts"],
        serde_json::json!(["a photo of a cat", "a dog"])
    );
    assert_eq!(r["size"], serde_json::json!([128, 128]));
    assert_eq!(r["options"]["steps"], 4);
    // Precision auto: f16 where the adapter has shader-f16, and then, on a
    // driver with cooperative matrices (CI's coop run), the coop kernels.
    let precision = r["precision"].as_str().expect("precision");
    assert!(precision.starts_with("auto: "), "{precision}");
    if std::env::var("PNP_EXPECT_COOP").is_ok_and(|v| v == "1") {
        assert_eq!(precision, "auto: f16");
        let kernels = r["kernels"].to_string();
        assert!(
            stdout.contains("cooperative matrices") && kernels.contains("COOP="),
            "no coop kernels in the CLI run:\n{stdout}\n{kernels}"
        );
    }
    let evals = r["unet_evals"].as_u64().expect("unet_evals");
    assert!(
        stdout.contains(&format!("UNet evaluations: {evals} ")),
        "{stdout}"
    );
    for k in [
        "gpu_submits",
        "gpu_reads",
        "weights_bytes",
        "peak_planned_bytes",
    ] {
        assert!(r[k].as_u64().is_some_and(|v| v > 0), "{k}: {r}");
    }
    let phases = r["phases"].as_array().expect("phases");
    assert!(phases.iter().any(|p| p["name"] == "inversion"), "{r}");
    let kernels = r["kernels"].as_array().expect("kernels");
    assert!(
        kernels
            .iter()
            .any(|k| k.as_str().is_some_and(|k| k.starts_with("conv."))),
        "{r}"
    );
    for i in 0..2 {
        let img = image::open(dir.join(format!("out-{i}.png"))).expect("output image");
        assert_eq!(
            (img.width(), img.height()),
            (128, 128),
            "--width alone keeps the aspect ratio"
        );
    }
    let a = std::fs::read(&lat).expect("latents");
    // The same run from the saved inversion gives the same latents.
    let mut second = base.to_vec();
    second.extend([
        "--load-inversion",
        inv.to_str().expect("utf-8"),
        "--store",
        "inline",
    ]);
    let (ok, stdout, stderr) = pnp(&second);
    assert!(
        ok,
        "translate from a saved inversion failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("inline source row"), "{stdout}");
    let b = std::fs::read(&lat).expect("latents");
    let ta = safetensors::SafeTensors::deserialize(&a).expect("st");
    let tb = safetensors::SafeTensors::deserialize(&b).expect("st");
    let fa: Vec<f32> = bytemuck::pod_collect_to_vec(ta.tensor("final").expect("final").data());
    let fb: Vec<f32> = bytemuck::pod_collect_to_vec(tb.tensor("final").expect("final").data());
    assert_eq!(ta.tensor("final").expect("final").shape(), [2, 4, 16, 16]);
    let max = fa
        .iter()
        .zip(&fb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        max < 1e-3,
        "store vs inline from the same inversion differ by {max}"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let model = fixtures().join("models/sd15-tiny");
    let model = model.to_str().expect("utf-8");
    let image = fixtures().join("pnp/square.png");
    let image = image.to_str().expect("utf-8");
    let dir = temp("errors");
    let out = dir.join("o.png");
    let out = out.to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "translate",
            "--model",
            model,
            "--prompt",
            "x",
            "--steps",
            "2",
            "--inversion-steps",
            "2",
        ];
        a.extend(extra);
        pnp(&a)
    };
    let (ok, _, err) = run(&[
        "--image", image, "--out", out, "--width", "100", "--height", "64",
    ]);
    assert!(!ok && err.contains("multiples of 64"), "{err}");
    let (ok, _, err) = run(&["--image", "/no/such.png", "--out", out]);
    assert!(!ok && err.contains("cannot read the image"), "{err}");
    let (ok, _, err) = run(&["--image", image, "--out", "/no/such/dir/o.png"]);
    assert!(!ok && err.contains("cannot write the output"), "{err}");
    let (ok, _, err) = pnp(&[
        "translate",
        "--model",
        model,
        "--image",
        image,
        "--out",
        out,
        "--prompt",
        "x",
        "--steps",
        "50",
        "--inversion-steps",
        "30",
        "--width",
        "64",
        "--height",
        "64",
    ]);
    assert!(
        !ok && err.contains("with --steps 50 use --inversion-steps 50"),
        "{err}"
    );
    let (ok, _, err) = pnp(&["info", "--model", "/no/such/model"]);
    assert!(!ok && err.contains("no such file or folder"), "{err}");
}

#[test]
fn a_successful_run_without_a_desktop_session_prints_no_error() {
    let model = fixtures().join("models/sd15-tiny");
    let image = fixtures().join("pnp/square.png");
    let out = temp("no-session").join("o.png");
    let run = pnp_bin::pnp_command()
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .args(["translate", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .args(["--prompt", "x", "--steps", "2", "--inversion-steps", "2"])
        .args(["--width", "64", "--out"])
        .arg(&out)
        .output()
        .expect("run pnp");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("error:"))
        .collect();
    assert!(errors.is_empty(), "a successful run printed {errors:?}");
}

/// `--autotune on` (which CPU drivers such as lavapipe need; on a GPU `auto`
/// tunes): the first translation times the kernel variants of every
/// distinct shape and writes the winners under `PNP_CACHE_DIR`, says so and
/// records them in the report; the second takes them all from the cache;
/// `--no-autotune` tunes nothing.
#[test]
fn autotune_times_once_then_reuses_the_cache() {
    let model = fixtures().join("models/sd15-tiny");
    let image = fixtures().join("pnp/square.png");
    let dir = temp("autotune");
    let cache = dir.join("cache");
    let run = |extra: &[&str], report: &Path| {
        let mut args = vec![
            "translate",
            "--model",
            model.to_str().expect("utf-8"),
            "--image",
            image.to_str().expect("utf-8"),
            "--prompt",
            "a photo of a cat",
            "--steps",
            "2",
            "--inversion-steps",
            "2",
            "--width",
            "64",
            "--out",
        ];
        let out = dir.join("out.png");
        args.push(out.to_str().expect("utf-8"));
        args.extend(["--report", report.to_str().expect("utf-8")]);
        args.extend(extra);
        let out = pnp_bin::pnp_command()
            .args(&args)
            .env("PNP_CACHE_DIR", &cache)
            .env_remove("PNP_AUTOTUNE")
            .output()
            .expect("run pnp");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report).expect("report")).expect("json");
        (stdout, r["autotune"].clone())
    };
    let (stdout, first) = run(&["--autotune", "on"], &dir.join("first.json"));
    let timed = first["timed"].as_u64().expect("timed");
    assert!(timed > 0, "{first}");
    assert!(
        stdout.contains(&format!("autotune: {timed} dispatch shapes timed")),
        "{stdout}"
    );
    let file = first["cache_file"].as_str().expect("cache file");
    assert!(Path::new(file).starts_with(&cache), "{file}");
    let chosen = first["chosen"].as_object().expect("chosen");
    assert!(chosen.keys().any(|k| k.starts_with("conv ")), "{first}");

    let (stdout, second) = run(&["--autotune", "on"], &dir.join("second.json"));
    assert_eq!(second["timed"], 0, "{second}");
    assert_eq!(second["reused"], timed, "{second}");
    assert!(
        stdout.contains(&format!("{timed} from the cache")),
        "{stdout}"
    );

    let (stdout, off) = run(&["--no-autotune"], &dir.join("off.json"));
    assert!(off.is_null() && !stdout.contains("autotune:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// `batch` over the three-item PIE-Bench fixture in two shards (one item
/// broken, then mended and resumed), then `eval` of its results beside a
/// folder of the sources themselves (perfect scores), CSV, summary and page.
#[test]
fn batch_runs_pie_bench_in_shards_and_eval_scores_it() {
    let dir = temp("batch");
    let pie = dir.join("pie");
    copy_tree(&fixtures().join("piebench"), &pie);
    let images = pie.join("annotation_images");
    let broken = images.join("1_change_object_80/1_artificial/1_animal/000000000001.jpg");
    let good = std::fs::read(&broken).expect("fixture image");
    std::fs::write(&broken, b"not a jpeg").expect("break");
    let model = fixtures().join("models/sd15-tiny");
    let out = dir.join("pnp-tiny");
    let report = dir.join("report.json");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let batch = |extra: &[&str]| {
        let mut args = vec![
            "batch".to_string(),
            "--model".into(),
            s(&model),
            "--pie-bench".into(),
            s(&pie),
            "--out".into(),
            s(&out),
            "--steps".into(),
            "2".into(),
            "--width".into(),
            "64".into(),
            "--height".into(),
            "64".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pnp(&args)
    };
    // Shard 1/2 takes items 0 and 2 (every second, from the first).
    let (ok, stdout, stderr) = batch(&["--shard", "1/2"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("3 images, shard 1/2; 2 to run, 0 already done"),
        "{stdout}"
    );
    let result = |rel: &str| out.join(rel);
    assert!(result("0_random_140/000000000000.png").is_file());
    assert!(result("2_add_object_80/2_nature/000000000002.png").is_file());
    // Shard 2/2 holds the broken image: reported and skipped, not a crash.
    let (ok, stdout, stderr) = batch(&["--shard", "2/2", "--report", &s(&report)]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error: 000000000001") && stderr.contains("000000000001.jpg"),
        "{stderr}"
    );
    assert!(
        stdout.contains("0 done, 0 skipped (outputs existed), 1 failed"),
        "{stdout}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    assert_eq!(r["failed"], 1, "{r}");
    assert_eq!(r["items"][0]["status"], "failed", "{r}");
    assert_eq!(
        r["options"]["inversion_steps"], 2,
        "PIE-Bench inverts over the sampling grid"
    );
    // Mended, the whole set resumes: only the failed item runs.
    std::fs::write(&broken, good).expect("mend");
    let (ok, stdout, stderr) = batch(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 to run, 2 already done"), "{stdout}");
    assert!(stdout.contains("1 done, 2 skipped"), "{stdout}");

    // A "method" whose results are the sources themselves scores perfectly.
    let same = dir.join("identity");
    copy_tree(&images, &same);
    let csv = dir.join("eval.csv");
    let html = dir.join("report/eval.html");
    std::fs::create_dir_all(html.parent().unwrap()).expect("mkdir");
    let (ok, stdout, stderr) = pnp(&[
        "eval",
        "--pie-bench",
        &s(&pie),
        "--results",
        &s(&out),
        "--results",
        &s(&same),
        "--csv",
        &s(&csv),
        "--html",
        &s(&html),
        "--dino",
        &s(&fixtures().join("metrics/dino-tiny-hub.safetensors")),
        "--clip",
        &s(&fixtures().join("metrics/clip-tiny")),
        "--lpips",
        &s(&fixtures().join("metrics/lpips-squeeze-tiny.safetensors")),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stderr.contains("left out"), "{stderr}");
    assert!(
        stdout.contains("torch hub layout, 2 blocks, patch 8"),
        "{stdout}"
    );
    assert!(
        stderr.contains("results of 64x64 against 512x512 sources: resized"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&csv).expect("csv");
    let lines: Vec<&str> = text.lines().collect();
    let metrics = [
        "structure_distance",
        "psnr_unedit_part",
        "lpips_unedit_part",
        "mse_unedit_part",
        "ssim_unedit_part",
        "clip_similarity_source_image",
        "clip_similarity_target_image",
        "clip_similarity_target_image_edit_part",
    ];
    let mut header = vec!["file_id".to_string()];
    for method in ["pnp-tiny", "identity"] {
        header.extend(metrics.iter().map(|m| format!("{method}|{m}")));
    }
    assert_eq!(lines[0], header.join(","));
    assert_eq!(lines.len(), 4, "{text}");
    for (i, line) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], format!("00000000000{i}"));
        let v: Vec<f64> = cells[1..].iter().map(|c| c.parse().expect(line)).collect();
        let (ours, same) = v.split_at(metrics.len());
        let [sd, psnr, lpips, mse, ssim, clip_src, ..] = ours[..] else {
            unreachable!()
        };
        assert!(
            sd > 0.0 && psnr > 3.0 && psnr.is_finite() && lpips > 0.0,
            "{line}"
        );
        assert!(mse > 0.0 && ssim < 1.0, "{line}");
        assert!((10.0 * (1.0 / mse).log10() - psnr).abs() < 1e-9, "{line}");
        assert!(
            ours[5..].iter().all(|c| (0.0..=100.0).contains(c)),
            "{line}"
        );
        // The sources against themselves: no structure change, no error.
        assert_eq!(same[..5], [0.0, f64::INFINITY, 0.0, 0.0, 1.0], "{line}");
        // The source's score does not depend on the method.
        assert_eq!(same[5], clip_src, "{line}");
    }
    assert!(
        stdout.contains("pnp-tiny: means per editing type")
            && stdout.contains("mse_unedit_part x10^4"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&html).expect("html");
    assert_eq!(
        page.matches("<img ").count(),
        3 * 3,
        "source and two methods per edit"
    );
    assert!(
        page.contains("src=\"../pnp-tiny/0_random_140/000000000000.png\""),
        "{page}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval`'s bad input: each error names what is wrong and what to pass.
#[test]
fn eval_refuses_bad_input_with_clear_errors() {
    let dir = temp("eval-bad");
    let pie = fixtures().join("piebench");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let results = dir.join("m");
    std::fs::create_dir_all(&results).expect("mkdir");
    let csv = dir.join("e.csv");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval".to_string(),
            "--pie-bench".into(),
            s(&pie),
            "--results".into(),
            s(&results),
            "--csv".into(),
            s(&csv),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pnp(&args)
    };
    let pickle_only = dir.join("dino-pickle");
    std::fs::create_dir_all(&pickle_only).expect("mkdir");
    std::fs::write(pickle_only.join("config.json"), "{}").expect("write");
    std::fs::write(pickle_only.join("pytorch_model.bin"), b"PK").expect("write");
    let clip = s(&fixtures().join("metrics/clip-tiny"));
    let cases: [(Vec<&str>, &[&str]); 5] = [
        (
            vec!["--metrics", "psnr_whole"],
            &["no metric \"psnr_whole\"", "ssim_unedit_part"],
        ),
        (
            vec!["--metrics", "structure_distance"],
            &["needs the Dino network", "pass --dino"],
        ),
        (
            vec!["--dino", &clip],
            &["not a DINO ViT", "clip-tiny/model.safetensors"],
        ),
        (
            vec!["--dino", pickle_only.to_str().unwrap()],
            &["only pytorch_model.bin", "safe_serialization=True"],
        ),
        (
            vec!["--results", "/nonexistent/method"],
            &["--results /nonexistent/method: not a folder"],
        ),
    ];
    for (extra, want) in cases {
        let (ok, stdout, stderr) = eval(&extra);
        assert!(!ok, "{extra:?} succeeded: {stdout}");
        for w in want {
            assert!(stderr.contains(w), "{extra:?}: no {w:?} in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Results missing for every edit: empty cells and a warning, not a failure.
    let (ok, _, stderr) = eval(&[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("m: 3 of 3 results missing"), "{stderr}");
    let text = std::fs::read_to_string(&csv).expect("csv");
    assert!(
        text.lines().nth(1).is_some_and(|l| l == "000000000000,,,"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shell words of a command line: double quotes group, backslashes escape.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => (quoted, any) = (!quoted, true),
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Every subcommand's help ends with examples, and every example parses:
/// its flags exist and its values are accepted (run with --help appended,
/// which clap answers only once everything before it parsed).
#[test]
fn help_examples_parse_and_completions_print() {
    let mut examples = 0;
    for sub in ["info", "translate", "generate", "batch", "eval", "bench"] {
        let (ok, help, stderr) = pnp(&[sub, "--help"]);
        assert!(ok, "{stderr}");
        let tail = help
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("{sub}: no examples in {help}"));
        // Join continued lines, keep the commands.
        let joined = tail.replace("\\\n", " ");
        for line in joined
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pnp "))
        {
            let mut args = shell_words(line);
            args.remove(0);
            args.push("--help".into());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, _, stderr) = pnp(&args);
            assert!(ok, "{sub}: the example `{line}` does not parse: {stderr}");
            examples += 1;
        }
    }
    assert!(examples >= 15, "{examples} examples");
    let (_, help, _) = pnp(&["translate", "--help"]);
    assert!(
        help.contains("Processing height (multiple of 64)"),
        "{help}"
    );
    for (shell, want) in [
        ("bash", "_pnp()"),
        ("zsh", "#compdef pnp"),
        ("fish", "complete -c pnp"),
    ] {
        let (ok, script, stderr) = pnp(&["completions", shell]);
        assert!(ok, "{stderr}");
        assert!(
            script.contains(want) && script.contains("translate"),
            "{shell}: {script}"
        );
    }
}

/// The tensor `name` of a safetensors file, as bytes.
fn tensor_bytes(path: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    st.tensor(name).expect("tensor").data().to_vec()
}

/// Every output carries its parameters: `info --image` prints them, and
/// `translate --params-from` makes the same latents again (flags given
/// explicitly win); a generation's parameters are refused there.
#[test]
fn an_output_carries_its_parameters_and_makes_itself_again() {
    let dir = temp("params");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let model = s(&fixtures().join("models/sd15-tiny"));
    let image = s(&fixtures().join("pnp/square.png"));
    let (out, lat) = (dir.join("out.png"), dir.join("first.safetensors"));
    let (ok, _, stderr) = pnp(&[
        "translate",
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        "a photo of a cat",
        "--steps",
        "3",
        "--inversion-steps",
        "3",
        "--guidance",
        "5",
        "--pnp-f-t",
        "0.6",
        "--width",
        "64",
        "--out",
        &s(&out),
        "--latents-out",
        &s(&lat),
    ]);
    assert!(ok, "{stderr}");
    let (ok, info, stderr) = pnp(&["info", "--image", &s(&out)]);
    assert!(ok, "{stderr}");
    for want in [
        "made by `translate`",
        "prompt: \"a photo of a cat\"",
        "size: 64x64",
        "\"guidance\":5.0",
        "\"pnp_f_t\":0.6",
        "again: pnp translate",
    ] {
        assert!(info.contains(want), "no {want:?} in {info}");
    }
    // Made again from the file alone: the same final latents, bit for bit.
    let (again, lat2) = (dir.join("again.png"), dir.join("again.safetensors"));
    let (ok, _, stderr) = pnp(&[
        "translate",
        "--model",
        &model,
        "--params-from",
        &s(&out),
        "--out",
        &s(&again),
        "--latents-out",
        &s(&lat2),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(tensor_bytes(&lat, "final"), tensor_bytes(&lat2, "final"));
    // A flag given explicitly wins over the file.
    let lat3 = dir.join("other.safetensors");
    let (ok, _, stderr) = pnp(&[
        "translate",
        "--model",
        &model,
        "--params-from",
        &s(&out),
        "--guidance",
        "9",
        "--out",
        &s(&dir.join("other.jpg")),
        "--latents-out",
        &s(&lat3),
    ]);
    assert!(ok, "{stderr}");
    assert_ne!(tensor_bytes(&lat, "final"), tensor_bytes(&lat3, "final"));
    let (ok, info, _) = pnp(&["info", "--image", &s(&dir.join("other.jpg"))]);
    assert!(
        ok && info.contains("\"guidance\":9.0"),
        "a JPEG carries them too: {info}"
    );
    // A generation is not a translation; a plain image carries nothing.
    let generated = dir.join("gen.png");
    let (ok, _, stderr) = pnp(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "a house",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--out",
        &s(&generated),
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = pnp(&[
        "translate",
        "--model",
        &model,
        "--params-from",
        &s(&generated),
        "--out",
        &s(&dir.join("x.png")),
    ]);
    assert!(
        !ok && stderr.contains("made by `pnp generate`, not by translate"),
        "{stderr}"
    );
    let (ok, _, stderr) = pnp(&["info", "--image", &image]);
    assert!(
        !ok && stderr.contains("carries no pnp parameters"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
