//! Edit sets: the many edits `pnp batch` runs and `pnp eval` scores, from a
//! PIE-Bench folder ([`crate::piebench`]) or a manifest, with the rules both
//! commands share: which shard runs which image, and where each result goes.
//!
//! A manifest is JSON Lines, one image per line:
//!
//! ```json
//! {"image": "photos/horse.jpg", "source_prompt": "a photo of a horse",
//!  "target_prompts": ["a photo of a zebra", "a bronze statue of a horse"],
//!  "mask": "masks/horse.png", "id": "horse", "editing_type": "animal"}
//! ```
//!
//! Only `image` and a target (`target_prompts`, or one `target_prompt`) are
//! required. Paths are relative to the manifest's folder. The mask (white =
//! edited) is what `eval`'s `_unedit_part` metrics leave out.

use crate::piebench::{self, PieBenchError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// One source image and the edits asked of it: one inversion serves them all.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Unique in the set: PIE-Bench's id, a manifest's `id` or its image path.
    pub id: String,
    /// The image on disk.
    pub image: PathBuf,
    /// Where its results go, relative to the output folder (the input tree
    /// mirrored: PIE-Bench's `image_path`, a manifest's relative `image`).
    pub mirror: PathBuf,
    /// What the image shows; the inversion runs under it.
    pub source_prompt: Option<String>,
    pub targets: Vec<String>,
    /// PIE-Bench's "0" to "9", or a manifest's label.
    pub editing_type: Option<String>,
    pub mask: Option<Mask>,
}

/// Where an item's mask comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// PIE-Bench's decoded 512x512 mask (1 = edited, border included).
    Decoded(Vec<u8>),
    /// A grayscale image file; pixels above half are edited.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum EditsError {
    #[error(transparent)]
    PieBench(#[from] PieBenchError),
    #[error("cannot read the manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {what}")]
    Line {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{0}")]
    Shard(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    source_prompt: Option<String>,
    #[serde(default)]
    target_prompts: Vec<String>,
    #[serde(default)]
    target_prompt: Option<String>,
    #[serde(default)]
    mask: Option<String>,
    #[serde(default)]
    editing_type: Option<String>,
}

/// The items of the PIE-Bench folder `dir`, in id order.
pub fn from_pie_bench(dir: &Path) -> Result<Vec<Item>, EditsError> {
    let images = dir.join("annotation_images");
    Ok(piebench::read(dir)?
        .into_iter()
        .map(|e| Item {
            image: images.join(&e.image),
            mirror: e.image,
            source_prompt: Some(e.source_prompt),
            targets: vec![e.target_prompt],
            editing_type: Some(e.editing_type),
            mask: Some(Mask::Decoded(e.mask)),
            id: e.id,
        })
        .collect())
}

/// The items of the manifest `path`, in its order.
pub fn from_manifest(path: &Path) -> Result<Vec<Item>, EditsError> {
    let text = std::fs::read_to_string(path).map_err(|source| EditsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifest(path, &text)
}

/// [`from_manifest`] of the manifest's text (`path` names it and anchors
/// its relative paths).
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<Item>, EditsError> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut items = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |what: String| EditsError::Line {
            path: path.to_path_buf(),
            line,
            what,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let mut targets = l.target_prompts;
        targets.extend(l.target_prompt);
        if targets.is_empty() {
            return Err(bad(
                "no target_prompts (or target_prompt): nothing to edit".into()
            ));
        }
        let given = Path::new(&l.image);
        let inside = given.is_relative() && given.components().all(|c| c != Component::ParentDir);
        let mirror = if inside {
            given.to_path_buf()
        } else {
            given
                .file_name()
                .map(PathBuf::from)
                .ok_or_else(|| bad(format!("image {:?} names no file", l.image)))?
        };
        let id = l.id.unwrap_or_else(|| mirror.display().to_string());
        if let Some(first) = seen.insert(id.clone(), line) {
            return Err(bad(format!(
                "id {id:?} is also on line {first}; give each line its own \"id\""
            )));
        }
        items.push(Item {
            id,
            image: base.join(given),
            mirror,
            source_prompt: l.source_prompt,
            targets,
            editing_type: l.editing_type,
            mask: l.mask.map(|m| Mask::File(base.join(m))),
        });
    }
    if items.is_empty() {
        return Err(EditsError::Line {
            path: path.to_path_buf(),
            line: 0,
            what: "the manifest has no lines".into(),
        });
    }
    check_mirrors(&items).map_err(|what| EditsError::Line {
        path: path.to_path_buf(),
        line: 0,
        what,
    })?;
    Ok(items)
}

/// Refuses two items whose results would land on the same files.
fn check_mirrors(items: &[Item]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for it in items {
        for out in result_paths(it, Path::new("")) {
            if let Some(other) = seen.insert(out.clone(), &it.id) {
                return Err(format!(
                    "items {other:?} and {:?} would both write {}",
                    it.id,
                    out.display()
                ));
            }
        }
    }
    Ok(())
}

/// `K/N` (1 <= K <= N): which of N disjoint parts of a set this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = EditsError;

    fn from_str(s: &str) -> Result<Self, EditsError> {
        let bad = || {
            EditsError::Shard(format!(
                "--shard takes K/N with 1 <= K <= N (for example 2/8), got {s:?}"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's items: every N-th of the set's order, starting at the
    /// K-th, so that the N shards cover the set once and each gets a share
    /// of every editing type. The same on every machine: it depends only on
    /// the set.
    pub fn take(self, items: Vec<Item>) -> Vec<Item> {
        (items.into_iter().enumerate())
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, it)| it)
            .collect()
    }
}

/// The results of `item` under the output folder `out`, one per target
/// prompt: the mirrored path as PNG, numbered `-<i>` when there are several.
pub fn result_paths(item: &Item, out: &Path) -> Vec<PathBuf> {
    let n = item.targets.len();
    let base = out.join(&item.mirror);
    let stem = base
        .file_stem()
        .map_or("result".into(), |s| s.to_string_lossy().into_owned());
    (0..n)
        .map(|i| {
            let name = if n == 1 {
                format!("{stem}.png")
            } else {
                format!("{stem}-{i}.png")
            };
            base.with_file_name(name)
        })
        .collect()
}

/// Where a result of `item` lies in a folder another tool wrote: our PNG
/// first, then the mirrored path as it is (PIE-Bench's runners keep the
/// source's `.jpg` name), then `.jpg` / `.jpeg` beside it.
pub fn find_result(item: &Item, index: usize, dir: &Path) -> Option<PathBuf> {
    let ours = result_paths(item, dir).swap_remove(index);
    let mut candidates = vec![ours.clone()];
    if item.targets.len() == 1 {
        candidates.push(dir.join(&item.mirror));
    }
    candidates.push(ours.with_extension("jpg"));
    candidates.push(ours.with_extension("jpeg"));
    candidates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Result<Vec<Item>, EditsError> {
        parse_manifest(Path::new("/data/set/manifest.jsonl"), text)
    }

    #[test]
    fn manifests_read_paths_relative_to_their_folder() {
        let items = manifest(
            r#"{"image": "a/horse.jpg", "source_prompt": "a horse", "target_prompts": ["a zebra", "a statue"], "mask": "m/horse.png"}

{"image": "/abs/cat.png", "target_prompt": "a dog", "id": "cat"}"#,
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, "a/horse.jpg");
        assert_eq!(items[0].image, Path::new("/data/set/a/horse.jpg"));
        assert_eq!(
            items[0].mask,
            Some(Mask::File("/data/set/m/horse.png".into()))
        );
        assert_eq!(items[1].mirror, Path::new("cat.png"));
        assert_eq!(items[1].targets, ["a dog"]);
        let out = result_paths(&items[0], Path::new("out"));
        assert_eq!(
            out,
            [
                Path::new("out/a/horse-0.png"),
                Path::new("out/a/horse-1.png")
            ]
        );
        assert_eq!(
            result_paths(&items[1], Path::new("o")),
            [Path::new("o/cat.png")]
        );
    }

    #[test]
    fn bad_manifest_lines_name_the_line() {
        let cases = [
            (r#"{"image": "a.jpg"}"#, "line 1: no target_prompts"),
            (
                r#"{"image": "a.jpg", "target_prompt": "x", "colour": 1}"#,
                "unknown field",
            ),
            (
                "{\"image\": \"a.jpg\", \"target_prompt\": \"x\"}\n{\"image\": \"b/../a.jpg\", \"target_prompt\": \"y\", \"id\": \"a.jpg\"}",
                "line 2: id \"a.jpg\" is also on line 1",
            ),
            (
                "{\"image\": \"a.jpg\", \"target_prompt\": \"x\"}\n{\"image\": \"/y/a.png\", \"target_prompt\": \"y\", \"id\": \"b\"}",
                "would both write a.png",
            ),
            ("", "no lines"),
        ];
        for (text, want) in cases {
            let e = manifest(text).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("manifest.jsonl"), "{e}");
        }
    }

    #[test]
    fn shards_cover_the_set_once() {
        let items: Vec<Item> = (0..10)
            .map(|i| Item {
                id: format!("{i}"),
                image: format!("{i}.jpg").into(),
                mirror: format!("{i}.jpg").into(),
                source_prompt: None,
                targets: vec!["x".into()],
                editing_type: None,
                mask: None,
            })
            .collect();
        let mut all: Vec<String> = Vec::new();
        for k in 1..=3 {
            let s: Shard = format!("{k}/3").parse().unwrap();
            let part = s.take(items.clone());
            assert!(part.len() == 3 || part.len() == 4);
            all.extend(part.into_iter().map(|it| it.id));
        }
        all.sort_by_key(|id| id.parse::<u32>().unwrap());
        assert_eq!(all, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("K/N"), "{e}");
        }
    }
}
