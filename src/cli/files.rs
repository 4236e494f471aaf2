//! Files at the command-line edge: the image in, the outputs out. Decoding,
//! the resize rule and the 8-bit conversion are the library's
//! ([`pnp::picture`]), shared with the browser.
//!
//! Outputs are checked before any GPU work (a known extension, a writable
//! folder, not the input, not each other) and written atomically: to a
//! temporary file beside the target, then renamed over it, so a failure
//! leaves neither a partial file nor a damaged existing one.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub use pnp::picture::{Pixels, Planned};

/// The input image: its bytes, and the processing size its header gives
/// (known before any pixel is decoded, so a bad size costs nothing).
pub struct InputImage {
    pub path: PathBuf,
    bytes: Vec<u8>,
    pub plan: Planned,
}

impl InputImage {
    /// Reads the file and its header; notes (EXIF rotation, upscaling,
    /// squashing, dropped alpha) go to stderr.
    pub fn open(path: &Path, width: Option<usize>, height: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the image {} (PNG or JPEG expected)",
                path.display()
            )
        })?;
        let plan = pnp::picture::inspect(&path.display().to_string(), &bytes, width, height)?;
        for n in &plan.notes {
            eprintln!("note: {n}");
        }
        Ok(InputImage {
            path: path.to_path_buf(),
            bytes,
            plan,
        })
    }

    /// [H, W], the processing size.
    pub fn size(&self) -> [usize; 2] {
        [self.plan.height, self.plan.width]
    }

    /// A hash of the file's bytes (its identity in the outputs' parameters).
    pub fn hash(&self) -> String {
        crate::params::hash(&self.bytes)
    }

    /// The pixels at the processing size ([`pnp::picture::decode_planned`]).
    pub fn decode(&self) -> Result<Pixels> {
        let name = self.path.display().to_string();
        Ok(pnp::picture::decode_planned(
            &name,
            &self.bytes,
            &self.plan,
        )?)
    }
}

/// What an output path holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PNG or JPEG, by extension.
    Image,
    /// Tensors (safetensors), any extension.
    Tensors,
    /// A JSON record (`--report`), any extension.
    Record,
}

/// The outputs of one command, checked together before any work.
#[derive(Default)]
pub struct Outputs {
    planned: Vec<(PathBuf, Kind, &'static str)>,
}

impl Outputs {
    /// Adds output `path` given by `flag`.
    pub fn add(&mut self, path: &Path, kind: Kind, flag: &'static str) {
        self.planned.push((path.to_path_buf(), kind, flag));
    }

    /// Refuses what would fail after the GPU work or destroy an input: an
    /// image extension we cannot write, an unwritable folder, an output that
    /// is one of `inputs` or another output.
    pub fn check(&self, inputs: &[&Path]) -> Result<()> {
        for (i, (path, kind, flag)) in self.planned.iter().enumerate() {
            if *kind == Kind::Image && image_format(path).is_none() {
                bail!(
                    "{flag} {}: the output image must end in .png, .jpg or .jpeg",
                    path.display()
                );
            }
            for input in inputs {
                if same_file(path, input) {
                    bail!(
                        "{flag} {} is an input of this command: it would be overwritten; choose another path",
                        path.display()
                    );
                }
            }
            if let Some((other, _, other_flag)) = self.planned[..i]
                .iter()
                .find(|(o, _, _)| same_file(o, path))
            {
                bail!(
                    "{flag} and {other_flag} both name {}: give each output its own path",
                    other.display()
                );
            }
            let dir = parent(path);
            if !dir.is_dir() {
                bail!(
                    "cannot write the output {}: the folder {} does not exist",
                    path.display(),
                    dir.display()
                );
            }
            let probe = temp_path(path);
            std::fs::write(&probe, b"")
                .with_context(|| format!("cannot write the output {}", path.display()))?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok(())
    }
}

fn image_format(path: &Path) -> Option<image::ImageFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(image::ImageFormat::Png),
        "jpg" | "jpeg" => Some(image::ImageFormat::Jpeg),
        _ => None,
    }
}

/// Whether two paths name one file (by their canonical folder and name, so
/// "./a.png" and "a.png" match even before the output exists).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| {
        let dir = parent(p).canonicalize().ok()?;
        Some(dir.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A hidden temporary name beside `path`, unique to this process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    parent(path).join(format!(".{name}.pnp-{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let done = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes (3, H, W) floats in [0, 1] as 8-bit RGB, PNG or JPEG by
/// extension, carrying `params` (JSON, [`crate::params`]) when given.
pub fn save_image(
    path: &Path,
    data: &[f32],
    height: usize,
    width: usize,
    params: Option<&str>,
) -> Result<()> {
    let format = image_format(path)
        .with_context(|| format!("{}: not a .png, .jpg or .jpeg path", path.display()))?;
    let img = pnp::picture::to_rgb8(data, height, width);
    let jpeg = format == image::ImageFormat::Jpeg;
    let bytes = pnp::picture::encode_with_params(&img, jpeg, params)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// `out.png` for one prompt, `out-0.png`, `out-1.png`, ... for several.
pub fn numbered(out: &Path, i: usize, n: usize) -> PathBuf {
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
