//! Single-file LDM checkpoints against the diffusers folders they were made
//! from (tools/ldm_layout.py): the split gives exactly the folder's keys,
//! shapes and values, and configs that agree with the folder's config.json on
//! everything the weights determine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pnp::models::ldm::{Family, LdmOverrides, split_ldm, split_ldm_with};
use pnp::models::weights::{HostTensor, WeightError, Weights};
use serde_json::Value;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures/models")
}

/// A scratch folder under the system temp dir, unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pnp-ldm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn folder_file(model: &str, comp: &str, stem: &str) -> BTreeMap<String, HostTensor> {
    let variant = if model == "sd2-tiny" { ".fp16" } else { "" };
    let path = models()
        .join(model)
        .join(comp)
        .join(format!("{stem}{variant}.safetensors"));
    Weights::read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn folder_config(model: &str, comp: &str) -> Value {
    let path = models().join(model).join(comp).join("config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("config.json")
}

/// Same keys, shapes and f32 values (bit for bit: the split only renames,
/// reshapes and slices).
fn same_tensors(what: &str, got: &Weights, want: &BTreeMap<String, HostTensor>) {
    let only_got: Vec<&String> = got
        .tensors
        .keys()
        .filter(|k| !want.contains_key(*k))
        .collect();
    let only_want: Vec<&String> = want
        .keys()
        .filter(|k| !got.tensors.contains_key(*k))
        .collect();
    assert!(
        only_got.is_empty() && only_want.is_empty(),
        "{what}: keys differ\n  only in the split: {:?}\n  only in the folder: {:?}",
        &only_got[..only_got.len().min(10)],
        &only_want[..only_want.len().min(10)]
    );
    for (k, w) in want {
        let g = &got.tensors[k];
        assert_eq!(g.shape, w.shape, "{what}: {k} shape");
        assert_eq!(g.stored_dtype(), w.stored_dtype(), "{what}: {k} dtype");
        let (gv, wv) = (g.to_f32(), w.to_f32());
        if let Some(i) = (0..wv.len()).find(|&i| gv[i].to_bits() != wv[i].to_bits()) {
            panic!(
                "{what}: {k} differs first at index {i}: got {} want {}",
                gv[i], wv[i]
            );
        }
    }
}

/// Detected config vs the folder's: every folder key is there (version stamps
/// aside) and equal, except the entries the split says it assumed.
fn agrees(what: &str, got: &Value, want: &Value, assumed: &[String], comp: &str) {
    let (got, want) = (
        got.as_object().expect("object"),
        want.as_object().expect("object"),
    );
    for (k, w) in want {
        if k == "_diffusers_version" || k == "transformers_version" {
            continue;
        }
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("{what}: config lacks {k}"));
        if !assumed.contains(&format!("{comp}.{k}")) {
            assert_eq!(g, w, "{what}: config {k}");
        }
    }
}

fn check_model(model: &str, family: Family) {
    let path = models().join(format!("{model}.safetensors"));
    let folder = models().join(model);

    // With the folder's configs as overrides, the configs are the folder's.
    let dir = folder.to_str().expect("utf-8 path");
    let read = pnp::models::loader::ldm_overrides(&pnp::models::files::Disk, dir);
    let overrides = pollster::block_on(read).expect("folder configs");
    let ckpt = split_ldm_with(&path, &overrides).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ckpt.family, family);
    assert!(ckpt.assumed.is_empty(), "{:?}", ckpt.assumed);
    same_tensors(
        &format!("{model} unet"),
        &ckpt.unet,
        &folder_file(model, "unet", "diffusion_pytorch_model"),
    );
    same_tensors(
        &format!("{model} vae"),
        &ckpt.vae,
        &folder_file(model, "vae", "diffusion_pytorch_model"),
    );
    same_tensors(
        &format!("{model} text"),
        &ckpt.text,
        &folder_file(model, "text_encoder", "model"),
    );
    for (comp, cfg, sub) in [
        ("unet", &ckpt.unet_config, "unet"),
        ("vae", &ckpt.vae_config, "vae"),
        ("text", &ckpt.text_config, "text_encoder"),
    ] {
        assert_eq!(
            cfg,
            &folder_config(model, sub),
            "{model} {comp} config with overrides"
        );
    }

    // Without overrides, the detected configs agree on what the weights determine.
    let auto = split_ldm(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        auto.assumed.contains(&"unet.norm_num_groups".to_string()),
        "{:?}",
        auto.assumed
    );
    assert!(
        auto.assumed
            .contains(&"text.num_attention_heads".to_string()),
        "{:?}",
        auto.assumed
    );
    agrees(
        &format!("{model} unet"),
        &auto.unet_config,
        &folder_config(model, "unet"),
        &auto.assumed,
        "unet",
    );
    agrees(
        &format!("{model} vae"),
        &auto.vae_config,
        &folder_config(model, "vae"),
        &auto.assumed,
        "vae",
    );
    let text = folder_config(model, "text_encoder");
    agrees(
        &format!("{model} text"),
        &auto.text_config,
        &text,
        &auto.assumed,
        "text",
    );
    assert_eq!(auto.unet.tensors.len(), ckpt.unet.tensors.len());
}

#[test]
fn sd15_single_file_matches_the_folder() {
    check_model("sd15-tiny", Family::Sd1);
}

#[test]
fn sd2_single_file_matches_the_folder() {
    check_model("sd2-tiny", Family::Sd2);
    // The extra OpenCLIP block and the projection are left out, and said so.
    let ckpt = split_ldm(&models().join("sd2-tiny.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let ignored = ckpt.ignored.join(" ");
    assert!(
        ignored.contains("cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight"),
        "{ignored}"
    );
    assert!(
        ignored.contains("cond_stage_model.model.text_projection"),
        "{ignored}"
    );
    assert_eq!(ckpt.text_config["num_hidden_layers"], 3);
    // Real SD2's head rule: head dim 64, written as heads per level.
    assert_eq!(
        ckpt.unet_config["attention_head_dim"],
        serde_json::json!([1, 1, 1, 1])
    );
}

#[test]
fn override_that_contradicts_the_weights_is_refused() {
    let path = models().join("sd15-tiny.safetensors");
    let overrides = LdmOverrides {
        unet: Some(
            serde_json::json!({"block_out_channels": [320, 640, 1280, 1280], "norm_num_groups": 8}),
        ),
        ..Default::default()
    };
    let err = split_ldm_with(&path, &overrides).expect_err("mismatch");
    let msg = err.to_string();
    assert!(matches!(err, WeightError::Config { .. }), "{err:?}");
    assert!(
        msg.contains("block_out_channels") && msg.contains("[32,32,64,64]"),
        "{msg}"
    );
}

#[test]
fn random_keys_are_a_layout_error() {
    let dir = scratch("random");
    let path = dir.join("random.safetensors");
    let data = vec![0u8; 16];
    let view = |shape: Vec<usize>| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).expect("view")
    };
    let tensors = vec![
        ("encoder.layer.0.weight", view(vec![2, 2])),
        ("lm_head.bias", view(vec![4])),
    ];
    let bytes = safetensors::serialize(tensors, None).expect("serialize");
    std::fs::write(&path, bytes).expect("write");
    let err = split_ldm(&path).expect_err("layout error");
    let _ = std::fs::remove_dir_all(&dir);
    let msg = err.to_string();
    assert!(matches!(err, WeightError::Layout { .. }), "{err:?}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("encoder.*") && msg.contains("lm_head.*"),
        "{msg}"
    );
    assert!(msg.contains("model.diffusion_model."), "{msg}");
}

#[test]
fn truncated_file_is_corrupt() {
    let dir = scratch("truncated");
    let path = dir.join("sd15-tiny-truncated.safetensors");
    let bytes = std::fs::read(models().join("sd15-tiny.safetensors")).expect("fixture");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let err = split_ldm(&path).expect_err("corrupt");
    let _ = std::fs::remove_dir_all(&dir);
    let msg = err.to_string();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn missing_file_names_the_path() {
    let path = models().join("no-such-checkpoint.safetensors");
    let err = split_ldm(&path).expect_err("missing");
    assert!(matches!(err, WeightError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}
