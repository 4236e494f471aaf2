//! What a run reads out of a repo's files: the part of a download that
//! knows diffusers' layout and the loader's order.

use pnp::gpu::DType;
use pnp::models::loader::{TOKENIZER_FILES, weight_names};
use pnp::models::locate::PICKLE_EXT;
use std::path::Path;

/// The files a run reads, out of a repo's `files`. A diffusers pipeline
/// (it has model_index.json): that file, the scheduler config, the
/// tokenizer, and for each of text_encoder, unet and vae its config.json (an
/// error where missing) and one weight file or shard index, the first the
/// loader would take for
/// `dtype` (the fp16 variant first for f16, the full one first for f32).
/// Any other repo (the metric networks): its top-level .json, .txt and
/// .safetensors files. Never a pickle: a network with only pickles is an
/// error that says so.
pub fn plan(files: &[&str], dtype: DType) -> Result<Vec<String>, String> {
    let has = |f: &str| files.contains(&f);
    let ext = |f: &str| {
        Path::new(f)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_owned()
    };
    let pickles = |dir: &str| -> Vec<&str> {
        files
            .iter()
            .copied()
            .filter(|f| Path::new(f).parent() == Some(Path::new(dir)))
            .filter(|f| PICKLE_EXT.contains(&ext(f).as_str()))
            .collect()
    };
    let no_weights = |what: &str, dir: &str| {
        let p = pickles(dir);
        if p.is_empty() {
            format!("{what} has no .safetensors weights")
        } else {
            format!(
                "{what} has only pickle weights ({}), which pnp never loads (they can run code); \
                 convert them once where diffusers or transformers is installed \
                 (`from_pretrained(ID).save_pretrained(OUT, safe_serialization=True)`) and pass OUT",
                p.join(", ")
            )
        }
    };
    if !has("model_index.json") {
        let top: Vec<String> = files
            .iter()
            .filter(|f| {
                !f.contains('/') && ["json", "txt", "safetensors"].contains(&ext(f).as_str())
            })
            .map(|f| f.to_string())
            .collect();
        if !top.iter().any(|f| f.ends_with(".safetensors")) {
            return Err(no_weights("the repo", ""));
        }
        return Ok(top);
    }
    let present = |f: String| has(&f).then_some(f);
    let mut want = vec!["model_index.json".to_string()];
    want.extend(present("scheduler/scheduler_config.json".into()));
    want.extend(
        TOKENIZER_FILES
            .iter()
            .filter_map(|f| present(format!("tokenizer/{f}"))),
    );
    for part in ["text_encoder", "unet", "vae"] {
        let config = format!("{part}/config.json");
        if !has(&config) {
            return Err(format!("{config} is missing"));
        }
        want.push(config);
        let names = weight_names(dtype);
        // The loader's order: every single file, then every shard index.
        let single = names.iter().map(|n| format!("{part}/{n}"));
        let index = names.iter().map(|n| format!("{part}/{n}.index.json"));
        let Some(w) = single.chain(index).find(|f| has(f)) else {
            return Err(no_weights(part, part));
        };
        want.push(w);
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &[&str] = &[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "safety_checker/model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors.index.json",
        "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
        "v1-5-pruned.ckpt",
        "v1-5-pruned.safetensors",
    ];

    #[test]
    fn a_pipeline_takes_its_configs_tokenizer_and_one_weight_file_per_network() {
        let f32 = plan(SD, DType::F32).unwrap();
        assert_eq!(
            f32,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "tokenizer/tokenizer_config.json",
                "tokenizer/special_tokens_map.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors.index.json",
            ]
        );
        let f16 = plan(SD, DType::F16).unwrap();
        assert!(f16.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(f16.contains(&"text_encoder/model.fp16.safetensors".to_string()));
        // No fp16 vae: the full one's index.
        assert!(f16.contains(&"vae/diffusion_pytorch_model.safetensors.index.json".to_string()));
        assert!(
            !f16.iter()
                .any(|f| f.ends_with(".bin") || f.ends_with(".ckpt"))
        );
    }

    #[test]
    fn pickles_alone_are_refused_and_other_repos_take_their_top_level_files() {
        let pickled: Vec<&str> = SD
            .iter()
            .copied()
            .filter(|f| !(f.starts_with("unet/") && f.ends_with(".safetensors")))
            .collect();
        let e = plan(&pickled, DType::F16).unwrap_err();
        assert!(
            e.contains("unet has only pickle weights (unet/diffusion_pytorch_model.bin)"),
            "{e}"
        );
        let clip = [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "vocab.json",
            "merges.txt",
            "README.md",
            "sub/x.json",
        ];
        assert_eq!(
            plan(&clip, DType::F32).unwrap(),
            [
                "config.json",
                "model.safetensors",
                "vocab.json",
                "merges.txt"
            ]
        );
        let no_config: Vec<&str> = SD
            .iter()
            .copied()
            .filter(|f| *f != "vae/config.json")
            .collect();
        assert_eq!(
            plan(&no_config, DType::F32).unwrap_err(),
            "vae/config.json is missing"
        );
        let e = plan(&["config.json", "pytorch_model.bin"], DType::F32).unwrap_err();
        assert!(e.contains("only pickle weights (pytorch_model.bin)"), "{e}");
    }
}
