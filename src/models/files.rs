//! Where a model's files come from. The one loader ([`super::loader`]) reads
//! through [`FileSource`], so a folder on disk, a browser's file pick and a
//! diffusers folder served over HTTP follow the same rules (which weight
//! file, which shards, what is reported).
//!
//! Paths are '/'-separated and relative to the source; for [`Disk`] they are
//! ordinary paths (absolute, or relative to the working directory).

use std::collections::BTreeMap;

/// Bytes of a file read so far, and its size (0: unknown).
pub type ReadProgress<'a> = dyn FnMut(usize, usize) + 'a;

/// A read-only tree of files, read whole and on demand (one at a time, so a
/// caller holds at most one file's bytes besides what it keeps).
// Only used through generics: the browser's futures are !Send, so no Send
// bound is wanted, which is what the lint is about.
#[allow(async_fn_in_trait)]
pub trait FileSource {
    /// The whole file at `rel`, or None when there is none.
    async fn read(
        &self,
        rel: &str,
        progress: &mut ReadProgress<'_>,
    ) -> Result<Option<Vec<u8>>, String>;

    /// Whether a file exists at `rel`, without reading it.
    async fn exists(&self, rel: &str) -> Result<bool, String>;

    /// How `rel` reads in messages: a full path or URL.
    fn describe(&self, rel: &str) -> String;

    /// A text file, or None when there is none.
    async fn text(&self, rel: &str) -> Result<Option<String>, String> {
        let Some(bytes) = self.read(rel, &mut |_, _| {}).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{} is not UTF-8 text", self.describe(rel)))
    }
}

/// `rel` inside folder `dir` of a source ("" is the source's top).
pub fn join(dir: &str, rel: &str) -> String {
    match dir.trim_end_matches('/') {
        "" if dir.starts_with('/') => format!("/{rel}"),
        "" => rel.to_string(),
        d => format!("{d}/{rel}"),
    }
}

/// The local file system.
#[cfg(not(target_arch = "wasm32"))]
pub struct Disk;

#[cfg(not(target_arch = "wasm32"))]
impl FileSource for Disk {
    async fn read(
        &self,
        rel: &str,
        progress: &mut ReadProgress<'_>,
    ) -> Result<Option<Vec<u8>>, String> {
        match std::fs::read(rel) {
            Ok(bytes) => {
                progress(bytes.len(), bytes.len());
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {rel}: {e}")),
        }
    }

    async fn exists(&self, rel: &str) -> Result<bool, String> {
        Ok(std::path::Path::new(rel).is_file())
    }

    fn describe(&self, rel: &str) -> String {
        rel.to_string()
    }
}

/// Files held in memory by relative path: what a browser's folder pick
/// gives, and what tests use to load a fixture the way the page does.
#[derive(Default)]
pub struct MemoryFiles {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl MemoryFiles {
    /// Every file under `dir` on disk, keyed by its path below `dir` ('/'-separated).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> std::io::Result<Self> {
        fn walk(
            top: &std::path::Path,
            at: &std::path::Path,
            out: &mut BTreeMap<String, Vec<u8>>,
        ) -> std::io::Result<()> {
            for e in std::fs::read_dir(at)? {
                let p = e?.path();
                if p.is_dir() {
                    walk(top, &p, out)?;
                } else if let Ok(rel) = p.strip_prefix(top) {
                    let key = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.insert(key, std::fs::read(&p)?);
                }
            }
            Ok(())
        }
        let mut files = BTreeMap::new();
        walk(dir, dir, &mut files)?;
        Ok(MemoryFiles { files })
    }
}

impl FileSource for MemoryFiles {
    async fn read(
        &self,
        rel: &str,
        progress: &mut ReadProgress<'_>,
    ) -> Result<Option<Vec<u8>>, String> {
        let got = self.files.get(rel).cloned();
        if let Some(b) = &got {
            progress(b.len(), b.len());
        }
        Ok(got)
    }

    async fn exists(&self, rel: &str) -> Result<bool, String> {
        Ok(self.files.contains_key(rel))
    }

    fn describe(&self, rel: &str) -> String {
        rel.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn join_keeps_roots() {
        assert_eq!(join("", "unet/config.json"), "unet/config.json");
        assert_eq!(join("m/", "unet"), "m/unet");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a/b", "x"), "/a/b/x");
    }
}
