//! Image files at the command-line edge: reading, the spec's resize rule,
//! writing. The library itself takes and returns (3, H, W) floats in [0, 1].

use anyhow::{Context, Result, bail};
use image::{ImageBuffer, Rgb, RgbImage, imageops::FilterType};
use std::path::Path;

/// Pixels as (3, H, W) floats in [0, 1].
pub struct Pixels {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

fn round64(x: f64) -> usize {
    ((x / 64.0).round() as usize).max(1) * 64
}

/// The size the image is processed at: by default the shorter side becomes
/// 512 keeping the aspect ratio (PNP-SPEC.md, stage 1), both sides rounded to
/// multiples of 64; `--width`/`--height` set it (one of them alone keeps the
/// aspect ratio).
pub fn target_size(
    w: u32,
    h: u32,
    width: Option<usize>,
    height: Option<usize>,
) -> Result<(usize, usize)> {
    let (w, h) = (w as f64, h as f64);
    let size = match (width, height) {
        (Some(tw), Some(th)) => (tw, th),
        (Some(tw), None) => (tw, round64(tw as f64 * h / w)),
        (None, Some(th)) => (round64(th as f64 * w / h), th),
        (None, None) => {
            let s = 512.0 / w.min(h);
            (round64(w * s), round64(h * s))
        }
    };
    if size.0 == 0 || size.1 == 0 || size.0 % 64 != 0 || size.1 % 64 != 0 {
        bail!(
            "--width/--height must be positive multiples of 64 (the UNet halves the 8x smaller latent three times); got {}x{}",
            size.0,
            size.1
        );
    }
    Ok(size)
}

/// Reads an image and brings it to the processing size; an image that
/// already has that size is not resampled.
pub fn load(path: &Path, width: Option<usize>, height: Option<usize>) -> Result<Pixels> {
    let img = image::open(path)
        .with_context(|| {
            format!(
                "cannot read the image {} (PNG or JPEG expected)",
                path.display()
            )
        })?
        .to_rgb8();
    let (tw, th) = target_size(img.width(), img.height(), width, height)?;
    let img: RgbImage = if (img.width() as usize, img.height() as usize) == (tw, th) {
        img
    } else {
        image::imageops::resize(&img, tw as u32, th as u32, FilterType::Lanczos3)
    };
    let (w, h) = (tw, th);
    let mut data = vec![0.0; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            data[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    Ok(Pixels {
        data,
        height: h,
        width: w,
    })
}

/// Writes (3, H, W) floats in [0, 1] as 8-bit RGB (PNG or JPEG by extension).
pub fn save(path: &Path, data: &[f32], height: usize, width: usize) -> Result<()> {
    let img: RgbImage = ImageBuffer::from_fn(width as u32, height as u32, |x, y| {
        let at = |c: usize| {
            let v = data[(c * height + y as usize) * width + x as usize];
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        Rgb([at(0), at(1), at(2)])
    });
    img.save(path)
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
