//! Images in and out of the pipeline, the same for the command line and the
//! browser: decoding PNG/JPEG bytes, the spec's resize rule, and the 8-bit
//! RGB that comes back. The pipeline itself takes and returns (3, H, W)
//! floats in [0, 1].

use image::{ImageBuffer, Rgb, RgbImage, imageops::FilterType};

#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("cannot read the image {name} ({msg}); PNG or JPEG expected")]
    Decode { name: String, msg: String },
    #[error(
        "width and height must be positive multiples of 64 (the UNet halves the 8x smaller latent three times); got {0}x{1}"
    )]
    Size(usize, usize),
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

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
/// 512 keeping the aspect ratio (docs/ALGORITHM.md, "Image preprocessing"),
/// both sides rounded to multiples of 64; `width`/`height` set it (one of
/// them alone keeps the aspect ratio). Returns (width, height).
pub fn target_size(
    w: u32,
    h: u32,
    width: Option<usize>,
    height: Option<usize>,
) -> Result<(usize, usize), PictureError> {
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
        return Err(PictureError::Size(size.0, size.1));
    }
    Ok(size)
}

/// Decodes PNG or JPEG `bytes` and brings the image to the processing size
/// (Lanczos3); an image that already has that size is not resampled.
/// `name` names the image in messages.
pub fn decode(
    name: &str,
    bytes: &[u8],
    width: Option<usize>,
    height: Option<usize>,
) -> Result<Pixels, PictureError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| PictureError::Decode {
            name: name.to_string(),
            msg: e.to_string(),
        })?
        .to_rgb8();
    let (w, h) = target_size(img.width(), img.height(), width, height)?;
    let img: RgbImage = if (img.width() as usize, img.height() as usize) == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w as u32, h as u32, FilterType::Lanczos3)
    };
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

/// (3, H, W) floats in [0, 1] as an 8-bit RGB image (clamped, rounded).
pub fn to_rgb8(data: &[f32], height: usize, width: usize) -> RgbImage {
    ImageBuffer::from_fn(width as u32, height as u32, |x, y| {
        let at = |c: usize| {
            let v = data[(c * height + y as usize) * width + x as usize];
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        Rgb([at(0), at(1), at(2)])
    })
}

/// (3, H, W) floats in [0, 1] as PNG file bytes.
pub fn encode_png(data: &[f32], height: usize, width: usize) -> Result<Vec<u8>, PictureError> {
    let mut out = std::io::Cursor::new(Vec::new());
    to_rgb8(data, height, width)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| PictureError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}
