//! PIE-Bench, the editing benchmark PnP is judged on (Ju et al., "Direct
//! Inversion", 2023): its folder layout read into edits, prompts cleaned as
//! its evaluation cleans them, and its masks decoded.
//!
//! A PIE-Bench folder holds `mapping_file.json` and `annotation_images/`.
//! The JSON maps an id to `image_path` (relative to `annotation_images/`),
//! `original_prompt`, `editing_prompt` (the edited words in [brackets],
//! removed before use), `editing_instruction`, `editing_type_id` ("0" to
//! "9"), `blended_word` and `mask`: run-length pairs [start, length, ...] over
//! a 512x512 image in row-major order. After decoding, the first and last rows
//! and columns are set to 1, as the benchmark's own decoder does (to forgive
//! annotation errors at the border).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The side of every PIE-Bench image and mask.
pub const SIDE: usize = 512;

/// One edit of the benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct Edit {
    /// The key in `mapping_file.json` ("000000000000").
    pub id: String,
    /// Relative to `annotation_images/`.
    pub image: PathBuf,
    pub source_prompt: String,
    /// The editing prompt without its [brackets].
    pub target_prompt: String,
    pub instruction: String,
    /// "0" to "9": the benchmark's ten editing types.
    pub editing_type: String,
    pub blended_word: String,
    /// SIDE x SIDE, row-major, 1 inside the edited region (and on the border).
    pub mask: Vec<u8>,
}

#[derive(Deserialize)]
struct Entry {
    image_path: String,
    original_prompt: String,
    editing_prompt: String,
    #[serde(default)]
    editing_instruction: String,
    editing_type_id: String,
    #[serde(default)]
    blended_word: String,
    #[serde(default)]
    mask: Vec<u64>,
}

/// What is wrong with a PIE-Bench folder, naming the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum PieBenchError {
    #[error(
        "cannot read {path}: {source}. A PIE-Bench folder holds mapping_file.json and annotation_images/"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not PIE-Bench's mapping file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}, entry {id}: {what}")]
    Entry {
        path: PathBuf,
        id: String,
        what: String,
    },
}

/// The edits of the PIE-Bench folder `dir`, in id order.
pub fn read(dir: &Path) -> Result<Vec<Edit>, PieBenchError> {
    let path = dir.join("mapping_file.json");
    let bytes = std::fs::read(&path).map_err(|source| PieBenchError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&path, &bytes)
}

/// [`read`] of the mapping file's bytes (`path` names it in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Edit>, PieBenchError> {
    let entries: BTreeMap<String, Entry> =
        serde_json::from_slice(bytes).map_err(|source| PieBenchError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    entries
        .into_iter()
        .map(|(id, e)| {
            let bad = |what: String| PieBenchError::Entry {
                path: path.to_path_buf(),
                id: id.clone(),
                what,
            };
            let mask = decode_mask(&e.mask).map_err(bad)?;
            let image = PathBuf::from(&e.image_path);
            if image.is_absolute() || image.components().any(|c| c.as_os_str() == "..") {
                return Err(bad(format!(
                    "image_path {:?} leaves annotation_images/",
                    e.image_path
                )));
            }
            Ok(Edit {
                image,
                source_prompt: clean_prompt(&e.original_prompt),
                target_prompt: clean_prompt(&e.editing_prompt),
                instruction: e.editing_instruction,
                editing_type: e.editing_type_id,
                blended_word: e.blended_word,
                mask,
                id,
            })
        })
        .collect()
}

/// A prompt without the brackets that mark its edited words.
pub fn clean_prompt(p: &str) -> String {
    p.replace(['[', ']'], "")
}

/// The SIDE x SIDE mask of run-length pairs `[start, length, ...]` (a run
/// past the end is cut at the end), with the border set to 1.
pub fn decode_mask(runs: &[u64]) -> Result<Vec<u8>, String> {
    let len = SIDE * SIDE;
    if !runs.len().is_multiple_of(2) {
        return Err(format!(
            "the mask has {} numbers; run-length pairs come in twos",
            runs.len()
        ));
    }
    let mut mask = vec![0u8; len];
    for pair in runs.chunks(2) {
        let (start, run) = (pair[0] as usize, pair[1] as usize);
        if start >= len {
            return Err(format!(
                "a mask run starts at {start}, past the {SIDE}x{SIDE} image"
            ));
        }
        let end = start + run.min(len - start);
        mask[start..end].fill(1);
    }
    for i in 0..SIDE {
        mask[i] = 1;
        mask[(SIDE - 1) * SIDE + i] = 1;
        mask[i * SIDE] = 1;
        mask[i * SIDE + SIDE - 1] = 1;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING: &str = r#"{
        "000000000001": {
            "image_path": "1_change_object_80/1_artificial/1_animal/000000000001.jpg",
            "original_prompt": "a [cat] sitting on a wooden chair",
            "editing_prompt": "a [dog] sitting on a wooden chair",
            "editing_instruction": "Make the cat a dog",
            "editing_type_id": "1",
            "blended_word": "cat dog",
            "mask": [1030, 3, 262143, 5]
        },
        "000000000000": {
            "image_path": "0_random_140/000000000000.jpg",
            "original_prompt": "a painting of a house",
            "editing_prompt": "a [watercolor] painting of a house",
            "editing_type_id": "0",
            "mask": []
        }
    }"#;

    #[test]
    fn reads_edits_in_id_order_with_clean_prompts() {
        let edits = parse(Path::new("mapping_file.json"), MAPPING.as_bytes()).unwrap();
        assert_eq!(edits.len(), 2);
        assert_eq!(edits[0].id, "000000000000");
        assert_eq!(edits[0].target_prompt, "a watercolor painting of a house");
        assert_eq!(edits[1].source_prompt, "a cat sitting on a wooden chair");
        assert_eq!(edits[1].target_prompt, "a dog sitting on a wooden chair");
        assert_eq!(edits[1].editing_type, "1");
        assert_eq!(
            edits[1].image,
            Path::new("1_change_object_80/1_artificial/1_animal/000000000001.jpg")
        );
    }

    #[test]
    fn masks_decode_runs_and_the_border() {
        let edits = parse(Path::new("m.json"), MAPPING.as_bytes()).unwrap();
        let m = &edits[1].mask;
        assert_eq!(m.len(), SIDE * SIDE);
        // The run 1030..1033 (row 2, columns 6-8), and nothing beside it.
        assert_eq!(&m[1029..1034], &[0, 1, 1, 1, 0]);
        // The run from the last pixel is cut at the end; the border is 1.
        assert_eq!(m[SIDE * SIDE - 1], 1);
        let border = (0..SIDE).all(|i| {
            m[i] == 1
                && m[i * SIDE] == 1
                && m[i * SIDE + SIDE - 1] == 1
                && m[(SIDE - 1) * SIDE + i] == 1
        });
        assert!(border);
        // Inside: only the run (3 pixels); the empty mask is the border alone.
        let inner = |m: &[u8]| -> usize {
            (1..SIDE - 1)
                .map(|y| (1..SIDE - 1).filter(|&x| m[y * SIDE + x] == 1).count())
                .sum()
        };
        assert_eq!(inner(m), 3);
        assert_eq!(inner(&edits[0].mask), 0);
    }

    #[test]
    fn bad_entries_name_the_file_and_the_id() {
        let odd = r#"{"7": {"image_path": "a.jpg", "original_prompt": "a", "editing_prompt": "b", "editing_type_id": "0", "mask": [1, 2, 3]}}"#;
        let e = parse(Path::new("dir/mapping_file.json"), odd.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("dir/mapping_file.json")
                && text.contains("entry 7")
                && text.contains("pairs"),
            "{text}"
        );
        let far = r#"{"8": {"image_path": "a.jpg", "original_prompt": "a", "editing_prompt": "b", "editing_type_id": "0", "mask": [262144, 1]}}"#;
        let text = parse(Path::new("m.json"), far.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(text.contains("past the 512x512 image"), "{text}");
        let escape = r#"{"9": {"image_path": "../secret.jpg", "original_prompt": "a", "editing_prompt": "b", "editing_type_id": "0"}}"#;
        let text = parse(Path::new("m.json"), escape.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(text.contains("leaves annotation_images"), "{text}");
        let text = parse(Path::new("m.json"), b"[1, 2]")
            .unwrap_err()
            .to_string();
        assert!(text.contains("is not PIE-Bench's mapping file"), "{text}");
        let text = read(Path::new("/nonexistent/pie")).unwrap_err().to_string();
        assert!(
            text.contains("mapping_file.json and annotation_images/"),
            "{text}"
        );
    }
}
