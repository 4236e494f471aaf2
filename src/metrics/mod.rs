//! The editing benchmarks' metrics (docs/BENCHMARKS.md), as PIE-Bench's
//! evaluation computes them with torchmetrics: the pixel metrics here, on the
//! CPU in float64 (a 512x512 SSIM is a few milliseconds); the network metrics
//! on our kernels: [`dino`] (structure distance), [`clip`] (CLIP score),
//! [`lpips`] (LPIPS with SqueezeNet).
//!
//! Images are 8-bit RGB, row-major, channels last, as decoded. Each metric
//! scales them to [0, 1]; the `_unedit_part` variants multiply both images
//! by (1 - mask), the `_edit_part` ones by the mask, before the metric, so
//! the masked-out pixels count as zeros that agree (the benchmark's choice,
//! kept).

pub mod clip;
pub mod dino;
pub mod lpips;
pub mod resample;
mod vit;

use crate::gpu::GpuError;
use crate::graph::ShapeError;
use crate::models::weights::WeightError;

/// Why a network metric could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("{0}")]
    Input(String),
}

/// The weights file of a transformers folder: its `model.safetensors`, or
/// an error that says what to do where the folder holds only a pickle.
pub(crate) fn transformers_weights(
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, WeightError> {
    let file = dir.join("model.safetensors");
    if file.is_file() {
        return Ok(file);
    }
    let pickle = ["pytorch_model.bin", "model.pt"]
        .iter()
        .find(|p| dir.join(p).is_file());
    let msg = match pickle {
        Some(p) => format!(
            "no model.safetensors, only {p} (a pickle, never loaded: it can run code); convert it once where \
             transformers is installed: `AutoModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`"
        ),
        None => "no model.safetensors in this folder".into(),
    };
    Err(WeightError::Layout {
        path: dir.to_path_buf(),
        msg,
    })
}

/// An 8-bit RGB image, row-major, channels last.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl From<image::RgbImage> for Rgb8 {
    fn from(img: image::RgbImage) -> Self {
        Rgb8 {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.into_raw(),
        }
    }
}

impl Rgb8 {
    /// The image with every pixel outside `mask` (one value per pixel, 0 =
    /// outside) black: the benchmark's 8-bit image times its 0/1 mask.
    pub fn masked(&self, mask: &[u8]) -> Rgb8 {
        let mut out = self.clone();
        for (px, &m) in out.data.chunks_exact_mut(3).zip(mask) {
            if m == 0 {
                px.fill(0);
            }
        }
        out
    }
}

/// Which pixels a metric sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Whole,
    /// Outside the edit mask.
    Unedited,
    /// Inside the edit mask.
    Edited,
}

/// What computes a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Pixels,
    Dino,
    Clip,
    Lpips,
}

/// A metric by PIE-Bench's name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub needs: Needs,
    pub region: Region,
    /// The factor papers print it with (MSE x10^4, SSIM x10^2, ...).
    pub scale: f64,
    /// Higher is better (for the report's arrows).
    pub higher_better: bool,
}

const fn m(name: &'static str, needs: Needs, region: Region, scale: f64, up: bool) -> Metric {
    Metric {
        name,
        needs,
        region,
        scale,
        higher_better: up,
    }
}

use Needs::*;
use Region::*;

/// Every metric PIE-Bench's evaluation knows, by its names.
pub const ALL: &[Metric] = &[
    m("structure_distance", Dino, Whole, 1e3, false),
    m("psnr_unedit_part", Pixels, Unedited, 1.0, true),
    m("lpips_unedit_part", Lpips, Unedited, 1e3, false),
    m("mse_unedit_part", Pixels, Unedited, 1e4, false),
    m("ssim_unedit_part", Pixels, Unedited, 1e2, true),
    m("clip_similarity_source_image", Clip, Whole, 1.0, true),
    m("clip_similarity_target_image", Clip, Whole, 1.0, true),
    m(
        "clip_similarity_target_image_edit_part",
        Clip,
        Edited,
        1.0,
        true,
    ),
    m("psnr", Pixels, Whole, 1.0, true),
    m("mse", Pixels, Whole, 1e4, false),
    m("ssim", Pixels, Whole, 1e2, true),
    m("lpips", Lpips, Whole, 1e3, false),
    m("lpips_edit_part", Lpips, Edited, 1e3, false),
    m("psnr_edit_part", Pixels, Edited, 1.0, true),
    m("mse_edit_part", Pixels, Edited, 1e4, false),
    m("ssim_edit_part", Pixels, Edited, 1e2, true),
];

/// The eight metrics the benchmark reports by default, in its column order.
pub const DEFAULT: &[&str] = &[
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
];

/// The pixels a metric's region keeps ([`Metric::keep`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Keep {
    /// The whole image.
    All,
    /// One value per pixel, 1 = kept: the edit mask or its complement.
    Pixels(Vec<u8>),
    /// No pixel: the region is empty (the benchmark writes "nan").
    Nothing,
}

impl Metric {
    /// The pixels this metric sees of `width` x `height` images with the
    /// edit `mask` (one value per pixel, 1 = edited; required unless the
    /// region is the whole image).
    pub fn keep(
        &self,
        mask: Option<&[u8]>,
        (width, height): (usize, usize),
    ) -> Result<Keep, String> {
        let mask = match (self.region, mask) {
            (Whole, _) => return Ok(Keep::All),
            (_, None) => return Err(format!("{} needs an edit mask", self.name)),
            (_, Some(m)) if m.len() != width * height => {
                return Err(format!(
                    "the mask has {} pixels, the images {width}x{height}",
                    m.len()
                ));
            }
            (_, Some(m)) => m,
        };
        let edited = self.region == Edited;
        let keep: Vec<u8> = mask.iter().map(|&v| u8::from((v != 0) == edited)).collect();
        Ok(if keep.contains(&1) {
            Keep::Pixels(keep)
        } else {
            Keep::Nothing
        })
    }

    /// The metric called `name`, or a list of the names there are.
    pub fn by_name(name: &str) -> Result<Metric, String> {
        ALL.iter().find(|m| m.name == name).copied().ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|m| m.name).collect();
            format!("no metric {name:?}; the metrics are {}", names.join(", "))
        })
    }
}

/// The window of the SSIM: torchmetrics' default Gaussian, 11 taps, sigma 1.5.
const SSIM_SIDE: usize = 11;
const SSIM_SIGMA: f64 = 1.5;

/// Which SSIM map positions are averaged: torchmetrics changed this in
/// 1.5 (its pull request 2721, September 2024).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SsimBorder {
    /// Every pixel, the image reflect-padded by 5 for the window
    /// (torchmetrics 1.5 and later).
    #[default]
    Reflect,
    /// Only the positions whose 11x11 window lies inside the image
    /// (torchmetrics before 1.5, what the published PIE-Bench tables used).
    Crop,
}

/// A pixel metric of `a` against `b` over `region` of `mask` (one value per
/// pixel, 1 = edited; required unless the region is whole). None where the
/// region is empty (the benchmark writes "nan"); an error where the sizes
/// disagree or the image is too small for the SSIM window.
pub fn pixel_metric(
    metric: &Metric,
    a: &Rgb8,
    b: &Rgb8,
    mask: Option<&[u8]>,
    border: SsimBorder,
) -> Result<Option<f64>, String> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(format!(
            "the images are {}x{} and {}x{}",
            a.width, a.height, b.width, b.height
        ));
    }
    let pixels = a.width * a.height;
    let keep = match metric.keep(mask, (a.width, a.height))? {
        Keep::Nothing => return Ok(None),
        Keep::All => None,
        Keep::Pixels(k) => Some(k),
    };
    let planes = |img: &Rgb8| -> Vec<Vec<f64>> {
        (0..3)
            .map(|c| {
                (0..pixels)
                    .map(|p| {
                        // float32 as the benchmark scales (u8 / 255), then widened.
                        let v = f64::from(img.data[p * 3 + c] as f32 / 255.0);
                        keep.as_ref().map_or(v, |k| v * f64::from(k[p]))
                    })
                    .collect()
            })
            .collect()
    };
    let (x, y) = (planes(a), planes(b));
    let value = match metric.name.split('_').next() {
        Some("psnr") => {
            let mse = planes_mse(&x, &y);
            10.0 * (1.0 / mse).log10()
        }
        Some("mse") => planes_mse(&x, &y),
        Some("ssim") => {
            // Reflection needs more pixels than the pad; cropping, the window.
            let least = match border {
                SsimBorder::Reflect => HALF + 1,
                SsimBorder::Crop => SSIM_SIDE,
            };
            if a.width < least || a.height < least {
                return Err(format!(
                    "SSIM ({border:?} border) needs images of at least {least}x{least}, got {}x{}",
                    a.width, a.height
                ));
            }
            let (w, h) = (a.width, a.height);
            let sum: f64 = (x.iter().zip(&y))
                .map(|(x, y)| match border {
                    SsimBorder::Crop => ssim_plane(x, y, w, h),
                    SsimBorder::Reflect => ssim_plane(
                        &reflect(x, w, h),
                        &reflect(y, w, h),
                        w + 2 * HALF,
                        h + 2 * HALF,
                    ),
                })
                .sum();
            sum / 3.0
        }
        _ => return Err(format!("{} is not a pixel metric", metric.name)),
    };
    Ok(Some(value))
}

/// The mean squared difference of two equally long slices.
pub fn mse(a: &[f64], b: &[f64]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    sum / a.len() as f64
}

/// The MSE over all three planes (each the same size).
fn planes_mse(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    x.iter().zip(y).map(|(x, y)| mse(x, y)).sum::<f64>() / x.len() as f64
}

const HALF: usize = SSIM_SIDE / 2;

/// `p` (w x h) padded by HALF on every side by reflection about the edge
/// pixels (PyTorch's "reflect": the edge itself is not repeated).
fn reflect(p: &[f64], w: usize, h: usize) -> Vec<f64> {
    let at = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let i = if i < 0 { -i } else { i };
        (if i >= n { 2 * (n - 1) - i } else { i }) as usize
    };
    let (pw, ph) = (w + 2 * HALF, h + 2 * HALF);
    let mut out = Vec::with_capacity(pw * ph);
    for r in 0..ph {
        let sr = at(r as isize - HALF as isize, h);
        for c in 0..pw {
            out.push(p[sr * w + at(c as isize - HALF as isize, w)]);
        }
    }
    out
}

/// The normalised 1-D Gaussian over offsets -5..=5.
fn gaussian() -> [f64; SSIM_SIDE] {
    let half = (SSIM_SIDE / 2) as f64;
    let mut g = [0.0; SSIM_SIDE];
    for (i, v) in g.iter_mut().enumerate() {
        let d = i as f64 - half;
        *v = (-(d / SSIM_SIGMA).powi(2) / 2.0).exp();
    }
    let sum: f64 = g.iter().sum();
    g.map(|v| v / sum)
}

/// The mean SSIM of one channel over the window positions that lie inside
/// `x` and `y` (w x h; padded by the caller for [`SsimBorder::Reflect`]).
/// The variances are clamped at 0, as torchmetrics clamps them.
fn ssim_plane(x: &[f64], y: &[f64], w: usize, h: usize) -> f64 {
    let (c1, c2) = ((0.01f64).powi(2), (0.03f64).powi(2));
    let g = gaussian();
    let (ow, oh) = (w - SSIM_SIDE + 1, h - SSIM_SIDE + 1);
    // Horizontal pass of x, y, x^2, y^2, xy over every row, then vertical.
    let mut rows = vec![[0.0f64; 5]; h * ow];
    for r in 0..h {
        for c in 0..ow {
            let mut acc = [0.0; 5];
            for (k, &gk) in g.iter().enumerate() {
                let (a, b) = (x[r * w + c + k], y[r * w + c + k]);
                acc[0] += gk * a;
                acc[1] += gk * b;
                acc[2] += gk * a * a;
                acc[3] += gk * b * b;
                acc[4] += gk * a * b;
            }
            rows[r * ow + c] = acc;
        }
    }
    let mut total = 0.0;
    for r in 0..oh {
        for c in 0..ow {
            let mut s = [0.0; 5];
            for (k, &gk) in g.iter().enumerate() {
                let v = rows[(r + k) * ow + c];
                for (s, v) in s.iter_mut().zip(v) {
                    *s += gk * v;
                }
            }
            let [mx, my, xx, yy, xy] = s;
            let (vx, vy) = ((xx - mx * mx).max(0.0), (yy - my * my).max(0.0));
            let cxy = xy - mx * my;
            total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
        }
    }
    total / (ow * oh) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> Rgb8 {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn identical_images_score_perfectly_and_empty_regions_are_none() {
        let a = img(16, 12, |x, y, c| (x * 7 + y * 3 + c * 50) as u8);
        let get = |n: &str, mask: Option<&[u8]>| {
            pixel_metric(
                &Metric::by_name(n).unwrap(),
                &a,
                &a,
                mask,
                SsimBorder::Reflect,
            )
            .unwrap()
        };
        assert_eq!(get("mse", None), Some(0.0));
        assert!((get("ssim", None).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(get("psnr", None), Some(f64::INFINITY));
        let all = vec![1u8; 16 * 12];
        assert_eq!(get("psnr_unedit_part", Some(&all)), None);
        assert_eq!(get("mse_edit_part", Some(&[0; 16 * 12])), None);
    }

    #[test]
    fn a_uniform_offset_gives_the_closed_form() {
        let a = img(12, 12, |_, _, _| 100);
        let b = img(12, 12, |_, _, _| 110);
        let metric =
            |n: &str| pixel_metric(&Metric::by_name(n).unwrap(), &a, &b, None, SsimBorder::Crop);
        let d = f64::from(110f32 / 255.0) - f64::from(100f32 / 255.0);
        assert!((metric("mse").unwrap().unwrap() - d * d).abs() < 1e-15);
        // Constant images: SSIM is the luminance term alone.
        let (x, y) = (f64::from(100f32 / 255.0), f64::from(110f32 / 255.0));
        let want = (2.0 * x * y + 1e-4) / (x * x + y * y + 1e-4);
        assert!((metric("ssim").unwrap().unwrap() - want).abs() < 1e-12);
        let e = metric("ssim_unedit_part").unwrap_err();
        assert!(e.contains("needs an edit mask"), "{e}");
        let small = img(10, 12, |_, _, _| 0);
        let ssim = Metric::by_name("ssim").unwrap();
        let e = pixel_metric(&ssim, &small, &small, None, SsimBorder::Crop);
        assert!(e.unwrap_err().contains("at least 11x11"));
        let tiny = img(5, 12, |_, _, _| 0);
        let e = pixel_metric(&ssim, &tiny, &tiny, None, SsimBorder::Reflect);
        assert!(e.unwrap_err().contains("at least 6x6"));
        assert!(
            Metric::by_name("psnr_whole")
                .unwrap_err()
                .contains("ssim_unedit_part")
        );
    }
}
