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
    #[error(
        "a {0}x{1} processing size is beyond the largest taken ({MAX_SIDE} pixels a side); Stable Diffusion works at 512 to 1024: pass a smaller --width/--height"
    )]
    TooLarge(usize, usize),
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

/// The largest processing side, in pixels. Far beyond what SD was trained
/// at (512 or 768); it bounds the host's memory before the adapter's own
/// limits (the pipeline's preflight) are asked.
pub const MAX_SIDE: usize = 8192;

/// Pixels as (3, H, W) floats in [0, 1].
pub struct Pixels {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// What an image's header says and the size it will be processed at, known
/// before any pixel is decoded ([`inspect`]).
#[derive(Clone, Debug)]
pub struct Planned {
    /// The image as it is shown (EXIF orientation applied): (width, height).
    pub shown: (u32, u32),
    pub width: usize,
    pub height: usize,
    /// What the user should know: EXIF rotation, upscaling, squashing, dropped alpha.
    pub notes: Vec<String>,
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
    let (w, h) = (w.max(1) as f64, h.max(1) as f64);
    let size = match (width, height) {
        (Some(tw), Some(th)) => (tw, th),
        (Some(tw), None) => (tw, round64(tw as f64 * h / w)),
        (None, Some(th)) => (round64(th as f64 * w / h), th),
        (None, None) => {
            let s = 512.0 / w.min(h);
            (round64(w * s), round64(h * s))
        }
    };
    check_size(size.0, size.1)?;
    Ok(size)
}

/// The sizes the networks take: both sides positive multiples of 64 (the
/// VAE downsamples by 8, the UNet by 8 more) and at most [`MAX_SIDE`].
pub fn check_size(width: usize, height: usize) -> Result<(), PictureError> {
    if width == 0 || height == 0 || !width.is_multiple_of(64) || !height.is_multiple_of(64) {
        return Err(PictureError::Size(width, height));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(PictureError::TooLarge(width, height));
    }
    Ok(())
}

fn decoder<'a>(name: &str, bytes: &'a [u8]) -> Result<impl image::ImageDecoder + 'a, PictureError> {
    let err = |e: &dyn std::fmt::Display| PictureError::Decode {
        name: name.to_string(),
        msg: e.to_string(),
    };
    // The reader's default limits (512 MiB of decoder allocations) refuse
    // an image whose pixels alone would exhaust the host.
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(&e))?
        .into_decoder()
        .map_err(|e| err(&e))
}

/// Reads the header of PNG or JPEG `bytes` (no pixel is decoded) and plans
/// the processing size from the image as shown (EXIF orientation applied).
/// `name` names the image in messages.
pub fn inspect(
    name: &str,
    bytes: &[u8],
    width: Option<usize>,
    height: Option<usize>,
) -> Result<Planned, PictureError> {
    use image::ImageDecoder;
    let mut dec = decoder(name, bytes)?;
    let (w, h) = dec.dimensions();
    let orientation = dec
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut notes = Vec::new();
    let quarter_turn = matches!(
        orientation,
        image::metadata::Orientation::Rotate90
            | image::metadata::Orientation::Rotate270
            | image::metadata::Orientation::Rotate90FlipH
            | image::metadata::Orientation::Rotate270FlipH
    );
    let shown = if quarter_turn { (h, w) } else { (w, h) };
    if orientation != image::metadata::Orientation::NoTransforms {
        notes.push(format!(
            "{name}: its EXIF orientation ({orientation:?}) is applied: processed as shown, {}x{}",
            shown.0, shown.1
        ));
    }
    let (tw, th) = target_size(shown.0, shown.1, width, height)?;
    if dec.color_type().has_alpha() {
        notes.push(format!(
            "{name} has an alpha channel; it is dropped (transparent pixels keep their stored colour)"
        ));
    }
    if tw > shown.0 as usize || th > shown.1 as usize {
        notes.push(format!(
            "{name} is {}x{} and is upscaled to {tw}x{th}: expect a soft result",
            shown.0, shown.1
        ));
    }
    let (a, b) = (
        shown.0.max(1) as f64 / shown.1.max(1) as f64,
        tw as f64 / th as f64,
    );
    if (a / b).ln().abs() > 0.1f64.ln_1p() {
        notes.push(format!(
            "{name}'s aspect ratio {a:.2} becomes {b:.2} at {tw}x{th}: the image is squashed (pass only --width or only --height to keep it)"
        ));
    }
    Ok(Planned {
        shown,
        width: tw,
        height: th,
        notes,
    })
}

/// Decodes PNG or JPEG `bytes` planned by [`inspect`], applies the EXIF
/// orientation and brings the image to the planned size (Lanczos3; an image
/// that already has it is not resampled).
pub fn decode_planned(name: &str, bytes: &[u8], plan: &Planned) -> Result<Pixels, PictureError> {
    use image::ImageDecoder;
    let err = |e: image::ImageError| PictureError::Decode {
        name: name.to_string(),
        msg: e.to_string(),
    };
    let mut dec = decoder(name, bytes)?;
    let orientation = dec
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(dec).map_err(err)?;
    img.apply_orientation(orientation);
    let img = img.to_rgb8();
    let (w, h) = (plan.width, plan.height);
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

/// [`inspect`] then [`decode_planned`]: the image at its processing size,
/// with the notes the user should read.
pub fn decode(
    name: &str,
    bytes: &[u8],
    width: Option<usize>,
    height: Option<usize>,
) -> Result<(Pixels, Vec<String>), PictureError> {
    let plan = inspect(name, bytes, width, height)?;
    Ok((decode_planned(name, bytes, &plan)?, plan.notes))
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

/// The key under which our outputs carry the parameters that made them
/// (a PNG iTXt chunk; a JPEG comment starting with this key and a colon).
pub const PARAMS_KEY: &str = "pnp-parameters";

/// `img` encoded as PNG (`jpeg` false) or JPEG (quality 90), carrying `params`
/// under [`PARAMS_KEY`] when given.
pub fn encode_with_params(
    img: &RgbImage,
    jpeg: bool,
    params: Option<&str>,
) -> Result<Vec<u8>, PictureError> {
    let err = |e: &dyn std::fmt::Display| PictureError::Encode(e.to_string());
    let mut out = Vec::new();
    if jpeg {
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        enc.encode_image(img).map_err(|e| err(&e))?;
        if let Some(p) = params {
            out = with_jpeg_comment(out, &format!("{PARAMS_KEY}:{p}"))?;
        }
        return Ok(out);
    }
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = params {
        enc.add_itxt_chunk(PARAMS_KEY.to_string(), p.to_string())
            .map_err(|e| err(&e))?;
    }
    let mut w = enc.write_header().map_err(|e| err(&e))?;
    w.write_image_data(img.as_raw()).map_err(|e| err(&e))?;
    w.finish().map_err(|e| err(&e))?;
    Ok(out)
}

/// A JPEG with a comment segment (COM) right after its start marker.
fn with_jpeg_comment(jpeg: Vec<u8>, text: &str) -> Result<Vec<u8>, PictureError> {
    // The segment length counts itself (2 bytes) and is 16 bits.
    let len = text.len() + 2;
    if len > u16::MAX as usize {
        return Err(PictureError::Encode(format!(
            "the parameters ({} bytes) do not fit a JPEG comment; write PNG",
            text.len()
        )));
    }
    if jpeg.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(PictureError::Encode(
            "the JPEG encoder wrote no start marker".into(),
        ));
    }
    let mut out = Vec::with_capacity(jpeg.len() + len + 2);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    Ok(out)
}

/// The parameters a PNG or JPEG of ours carries ([`encode_with_params`]), if any.
pub fn read_params(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .ok()?;
        let info = reader.info();
        let itxt = info.utf8_text.iter().find(|c| c.keyword == PARAMS_KEY);
        if let Some(t) = itxt.and_then(|c| c.get_text().ok()) {
            return Some(t);
        }
        return (info.uncompressed_latin1_text.iter())
            .find(|c| c.keyword == PARAMS_KEY)
            .map(|c| c.text.clone());
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // Walk the segments before the image data for a comment of ours.
        let mut at = 2;
        while at + 4 <= bytes.len() && bytes[at] == 0xFF {
            let marker = bytes[at + 1];
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            let body = bytes.get(at + 4..at + 2 + len)?;
            if marker == 0xFE
                && let Some(rest) = body.strip_prefix(format!("{PARAMS_KEY}:").as_bytes())
            {
                return String::from_utf8(rest.to_vec()).ok();
            }
            if marker == 0xDA {
                break;
            }
            at += 2 + len;
        }
    }
    None
}

#[cfg(test)]
mod params_tests {
    use super::*;

    #[test]
    fn parameters_survive_png_and_jpeg() {
        let img = RgbImage::from_fn(16, 8, |x, y| Rgb([x as u8 * 9, y as u8 * 20, 7]));
        let text = "{\"prompt\": \"a cat é\"}";
        for jpeg in [false, true] {
            let bytes = encode_with_params(&img, jpeg, Some(text)).unwrap();
            assert_eq!(read_params(&bytes).as_deref(), Some(text), "jpeg {jpeg}");
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (16, 8));
            if !jpeg {
                assert_eq!(back, img);
            }
            let plain = encode_with_params(&img, jpeg, None).unwrap();
            assert_eq!(read_params(&plain), None);
        }
    }
}
