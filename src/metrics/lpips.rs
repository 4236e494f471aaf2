//! PIE-Bench's LPIPS (docs/BENCHMARKS.md): torchmetrics'
//! `LearnedPerceptualImagePatchSimilarity(net_type="squeeze")`, on our
//! kernels. Both images pass through LPIPS's scaling layer and SqueezeNet
//! 1.1's features (a strided 3x3 convolution, ceil-mode max pools and Fire
//! modules); at each of its seven taps the two maps are unit-normalised over
//! channels, their squared difference weighted by the learned linear head
//! (`shaders/lpips.wgsl`), and averaged over the pixels; LPIPS is the sum.
//!
//! Weights: torchvision's `squeezenet1_1` names (`features.N...`) and the
//! LPIPS heads (`linK.model.1.weight`) in one safetensors file, as
//! tools/convert_metric_weights.py writes them from the two pickles.

use super::{MetricError, Rgb8};
use crate::gpu::{DType, Gpu, Tensor};
use crate::graph::{Graph, Value};
use crate::models::nn::{Conv, Ctx};
use crate::models::weights::{VarBuilder, WeightError, Weights};
use crate::ops::{self, Conv2d, Unary};
use std::path::Path;
use std::sync::Arc;

/// LPIPS's scaling layer: (x - shift) / scale per channel, on [-1, 1] inputs.
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];
/// Inside the square root of the channel norm.
const EPS: f32 = 1e-8;

/// SqueezeNet's Fire module: a 1x1 squeeze, then 1x1 and 3x3 expansions
/// side by side, each followed by a ReLU.
struct Fire {
    squeeze: Conv,
    expand1: Conv,
    expand3: Conv,
}

impl Fire {
    fn load(
        cx: Ctx,
        vb: &VarBuilder,
        inp: usize,
        sq: usize,
        e: usize,
    ) -> Result<Self, WeightError> {
        Ok(Fire {
            squeeze: Conv::load(cx, &vb.pp("squeeze"), inp, sq, 1, Conv2d::same(0))?,
            expand1: Conv::load(cx, &vb.pp("expand1x1"), sq, e, 1, Conv2d::same(0))?,
            expand3: Conv::load(cx, &vb.pp("expand3x3"), sq, e, 3, Conv2d::same(1))?,
        })
    }

    fn forward(&self, g: &mut Graph, x: &Value) -> Result<Value, MetricError> {
        let s = self.squeeze.forward(g, x, None)?;
        let s = ops::unary(g, &s, Unary::Relu);
        let a = self.expand1.forward(g, &s, None)?;
        let a = ops::unary(g, &a, Unary::Relu);
        let b = self.expand3.forward(g, &s, None)?;
        let b = ops::unary(g, &b, Unary::Relu);
        Ok(ops::concat(g, &[&a, &b], 1)?)
    }
}

/// LPIPS with the SqueezeNet 1.1 backbone, on the device.
pub struct Lpips {
    gpu: Arc<Gpu>,
    conv0: Conv,
    /// SqueezeNet's features 3, 4, 6, 7, 9, 10, 11, 12.
    fires: Vec<Fire>,
    /// One linear head per tap: (C).
    heads: Vec<Tensor>,
}

/// (features index, input channels, squeeze, expand) of SqueezeNet 1.1's Fires.
const FIRES: [(usize, usize, usize, usize); 8] = [
    (3, 64, 16, 64),
    (4, 128, 16, 64),
    (6, 128, 32, 128),
    (7, 256, 32, 128),
    (9, 256, 48, 192),
    (10, 384, 48, 192),
    (11, 384, 64, 256),
    (12, 512, 64, 256),
];
/// Channels at the seven taps.
const TAPS: [usize; 7] = [64, 128, 256, 384, 384, 512, 512];

impl Lpips {
    /// From a safetensors file holding the backbone and the heads.
    pub fn open(gpu: Arc<Gpu>, path: &Path) -> Result<Self, WeightError> {
        let tensors = Weights::read_safetensors(path)?;
        let w = Weights::new(path.display().to_string(), tensors);
        let cx = Ctx {
            gpu: &gpu,
            dtype: DType::F32,
        };
        let root = w.root();
        let conv0 = Conv::load(
            cx,
            &root.pp("features.0"),
            3,
            64,
            3,
            Conv2d {
                stride: 2,
                pad: [0; 4],
            },
        )?;
        let fires = FIRES
            .iter()
            .map(|&(i, inp, sq, e)| Fire::load(cx, &root.pp("features").pp(i), inp, sq, e))
            .collect::<Result<_, _>>()?;
        let heads = TAPS
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let vb = root.pp(format!("lin{k}.model.1"));
                let t = vb.get("weight", &[1, c, 1, 1])?.to_f32();
                cx.upload(&vb, "weight", &t, &[c])
            })
            .collect::<Result<_, _>>()?;
        Ok(Lpips {
            gpu,
            conv0,
            fires,
            heads,
        })
    }

    /// The network's input for `img` with the pixels where `keep` is 0
    /// blacked out first (the benchmark's masking): [-1, 1], then the
    /// scaling layer. (3, H, W).
    pub fn preprocess(img: &Rgb8, keep: Option<&[u8]>) -> Vec<f32> {
        let (w, h) = (img.width, img.height);
        let mut out = vec![0f32; 3 * h * w];
        for (p, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // float32 as the benchmark scales, then masked.
                let v = f64::from(f32::from(px[c]) / 255.0) * keep.map_or(1.0, |k| f64::from(k[p]));
                out[c * h * w + p] = ((v * 2.0 - 1.0 - SHIFT[c]) / SCALE[c]) as f32;
            }
        }
        out
    }

    /// The seven tap outputs of SqueezeNet for `x` (1, 3, H, W).
    fn features(&self, g: &mut Graph, x: &Value) -> Result<Vec<Value>, MetricError> {
        let f0 = self.conv0.forward(g, x, None)?;
        let f0 = ops::unary(g, &f0, Unary::Relu);
        let pool = |g: &mut Graph, v: &Value| ops::max_pool2d(g, v, 3, 2, true);
        let fire = |g: &mut Graph, i: usize, v: &Value| self.fires[i].forward(g, v);
        let p = pool(g, &f0)?;
        let f = fire(g, 0, &p)?;
        let f1 = fire(g, 1, &f)?;
        let p = pool(g, &f1)?;
        let f = fire(g, 2, &p)?;
        let f2 = fire(g, 3, &f)?;
        let p = pool(g, &f2)?;
        let f3 = fire(g, 4, &p)?;
        let f4 = fire(g, 5, &f3)?;
        let f5 = fire(g, 6, &f4)?;
        let f6 = fire(g, 7, &f5)?;
        Ok(vec![f0, f1, f2, f3, f4, f5, f6])
    }

    /// SqueezeNet's seven tap outputs for a preprocessed input (3, H, W),
    /// read back (for staged tests).
    pub async fn taps(&self, x: &[f32], [h, w]: [usize; 2]) -> Result<Vec<Vec<f32>>, MetricError> {
        let mut g = Graph::new(self.gpu.clone(), DType::F32);
        let xin = g.input("image", &[1, 3, h, w], DType::F32);
        let feats = self.features(&mut g, &xin)?;
        for f in &feats {
            g.output(f);
        }
        g.tune().await?;
        let plan = g.plan()?;
        plan.write(&xin, x);
        plan.run();
        let mut out = Vec::new();
        for f in &feats {
            out.push(plan.read(f).await?);
        }
        Ok(out)
    }

    /// LPIPS of two preprocessed inputs (3, H, W) ([`Self::preprocess`]):
    /// the per-tap distances (their sum is the metric).
    pub async fn distances(
        &self,
        a: &[f32],
        b: &[f32],
        [h, w]: [usize; 2],
    ) -> Result<Vec<f64>, MetricError> {
        if h < 3 || w < 3 {
            return Err(MetricError::Input(format!(
                "LPIPS needs images of at least 3x3, got {w}x{h}"
            )));
        }
        let mut g = Graph::new(self.gpu.clone(), DType::F32);
        let xa = g.input("image a", &[1, 3, h, w], DType::F32);
        let xb = g.input("image b", &[1, 3, h, w], DType::F32);
        let fa = self.features(&mut g, &xa)?;
        let fb = self.features(&mut g, &xb)?;
        let mut maps = Vec::new();
        for ((a, b), head) in fa.iter().zip(&fb).zip(&self.heads) {
            let wv = g.external("lpips head", head);
            let d = ops::lpips_distance(&mut g, a, b, &wv, EPS)?;
            g.output(&d);
            maps.push(d);
        }
        g.tune().await?;
        let plan = g.plan()?;
        plan.write(&xa, a);
        plan.write(&xb, b);
        plan.run();
        let mut out = Vec::new();
        for d in &maps {
            let v = plan.read(d).await?;
            out.push(v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64);
        }
        Ok(out)
    }

    /// LPIPS of `a` and `b` over the pixels where `keep` is 1 (all if None):
    /// the benchmark's `lpips` and `lpips_unedit_part`.
    pub async fn lpips(&self, a: &Rgb8, b: &Rgb8, keep: Option<&[u8]>) -> Result<f64, MetricError> {
        let size = [a.height, a.width];
        if (a.width, a.height) != (b.width, b.height) {
            return Err(MetricError::Input(format!(
                "the images are {}x{} and {}x{}",
                a.width, a.height, b.width, b.height
            )));
        }
        let (xa, xb) = (Self::preprocess(a, keep), Self::preprocess(b, keep));
        Ok(self.distances(&xa, &xb, size).await?.iter().sum())
    }
}
