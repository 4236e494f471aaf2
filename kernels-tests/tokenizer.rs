//! The CLIP tokenizer against transformers' `CLIPTokenizer` (ids written by
//! tools/make_model_fixtures.py with padding="max_length", max_length=77,
//! truncation=True) for the SD1 folder (pad = "<|endoftext|>") and the SD2
//! folder (pad = "!", an added special token).

use std::path::{Path, PathBuf};

use pnp::models::tokenizer::{ClipTokenizer, TokenizerError};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures/models")
}

/// (prompt, reference ids) for every prompt of a model's ref file.
fn references(model: &str) -> Vec<(String, Vec<u32>)> {
    let path = models().join(format!("{model}-ref.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("ref header");
    let prompts = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("prompts"))
        .expect("ref metadata has prompts");
    let prompts: Vec<String> = serde_json::from_str(prompts).expect("prompts are a JSON list");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("ref file");
    prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let view = st.tensor(&format!("ids/{i}")).expect("ids tensor");
            assert_eq!(view.dtype(), safetensors::Dtype::I64);
            let ids: Vec<i64> = bytemuck::pod_collect_to_vec(view.data());
            (p, ids.into_iter().map(|i| i as u32).collect())
        })
        .collect()
}

fn check_model(model: &str) {
    let tok =
        ClipTokenizer::from_dir(&models().join(model).join("tokenizer")).expect("tokenizer loads");
    assert_eq!(tok.max_len(), 77);
    let refs = references(model);
    assert!(
        refs.len() >= 9,
        "{model}: expected at least 9 reference prompts"
    );
    let mut failures = Vec::new();
    for (prompt, want) in &refs {
        let got = tok.encode(prompt).expect("encode");
        assert_eq!(got.ids.len(), 77, "{model} {prompt:?}: length");
        if let Some(pos) = (0..77).find(|&i| got.ids[i] != want[i]) {
            failures.push(format!(
                "{model} {prompt:?}: first difference at position {pos}: got {} want {}\n  got  {:?}\n  want {:?}",
                got.ids[pos],
                want[pos],
                &got.ids[..pos.saturating_add(4).min(77)],
                &want[..pos.saturating_add(4).min(77)],
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The 100-word prompt is cut, and the warning says by how much.
    let (long, _) = refs
        .iter()
        .find(|(p, _)| p.split_whitespace().count() == 100)
        .expect("100-word prompt");
    let enc = tok.encode(long).expect("encode");
    assert!(
        enc.truncated > 0,
        "{model}: the 100-word prompt should be truncated"
    );
    assert_eq!(
        *enc.ids.last().expect("ids"),
        tok.eos_id(),
        "EOS kept at the end"
    );
    let warning = enc.warning().expect("warning for a truncated prompt");
    assert!(
        warning.contains(&format!("the last {} were dropped", enc.truncated))
            && warning.contains("77"),
        "{warning}"
    );
    assert!(
        long.ends_with(enc.dropped.as_str()),
        "dropped text {:?}",
        enc.dropped
    );
    assert!(
        tok.encode("a photo of a cat")
            .expect("encode")
            .warning()
            .is_none()
    );
}

#[test]
fn sd15_matches_transformers() {
    check_model("sd15-tiny");
}

#[test]
fn sd2_matches_transformers() {
    check_model("sd2-tiny");
}

#[test]
fn sd2_splits_out_the_pad_token() {
    let dir = models().join("sd2-tiny/tokenizer");
    let tok = ClipTokenizer::from_dir(&dir).expect("tokenizer loads");
    let ids = tok.encode("detailed!!").expect("encode").ids;
    assert_eq!(tok.pad_id(), 0, "SD2 pads with \"!\", id 0");
    assert_eq!(&ids[2..4], &[0, 0], "{:?}", &ids[..5]);
    assert_eq!(tok.decode(&ids[1..2]), "detailed");
}

#[test]
fn missing_folder_names_the_path() {
    let dir = models().join("no-such-model/tokenizer");
    let err = ClipTokenizer::from_dir(&dir).err().expect("error");
    assert!(matches!(err, TokenizerError::NoFolder(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
}

#[test]
fn folder_without_vocab_says_what_is_expected() {
    let dir = std::env::temp_dir().join(format!("pnp-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let err = ClipTokenizer::from_dir(&dir).err().expect("error");
    let _ = std::fs::remove_dir_all(&dir);
    let msg = err.to_string();
    assert!(matches!(err, TokenizerError::MissingFile { .. }), "{err:?}");
    assert!(
        msg.contains("vocab.json") && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
}
