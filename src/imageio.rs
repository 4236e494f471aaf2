//! Image files at the command-line edge: reading and writing paths. Decoding,
//! the resize rule and the 8-bit conversion are the library's
//! ([`pnp::picture`]), shared with the browser.

use anyhow::{Context, Result};
use std::path::Path;

pub use pnp::picture::Pixels;

/// Reads an image and brings it to the processing size ([`pnp::picture::decode`]).
pub fn load(path: &Path, width: Option<usize>, height: Option<usize>) -> Result<Pixels> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the image {} (PNG or JPEG expected)",
            path.display()
        )
    })?;
    Ok(pnp::picture::decode(
        &path.display().to_string(),
        &bytes,
        width,
        height,
    )?)
}

/// Writes (3, H, W) floats in [0, 1] as 8-bit RGB (PNG or JPEG by extension).
pub fn save(path: &Path, data: &[f32], height: usize, width: usize) -> Result<()> {
    pnp::picture::to_rgb8(data, height, width)
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
/// Fails early, before any GPU work, if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot write the output {}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `out.png` for one prompt, `out-0.png`, `out-1.png`, ... for several.
pub fn numbered(out: &Path, i: usize, n: usize) -> std::path::PathBuf {
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map_or("out".into(), |s| s.to_string_lossy().to_string());
    let name = match out.extension() {
        Some(e) => format!("{stem}-{i}.{}", e.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    out.with_file_name(name)
}
