//! AutoencoderKL (diffusers' models/autoencoders/autoencoder_kl.py and vae.py):
//! the encoder to the posterior's mean and log-variance, and the decoder.

use super::config::VaeConfig;
use super::nn::{Attention, Conv, Ctx, Norm};
use super::unet_blocks::{Resnet, Sampler};
use super::weights::{VarBuilder, WeightError, Weights};
use crate::graph::{Graph, ShapeError, Value};
use crate::ops::{self, Conv2d};

/// The mid block: resnet, single-head self-attention over all pixels, resnet.
struct Mid {
    resnets: [Resnet; 2],
    norm: Norm,
    attn: Attention,
}

impl Mid {
    fn load(cx: Ctx, vb: &VarBuilder, c: usize, groups: usize) -> Result<Self, WeightError> {
        let a = vb.pp("attentions.0");
        Ok(Mid {
            resnets: [
                Resnet::load(cx, &vb.pp("resnets.0"), c, c, None, groups, 1e-6)?,
                Resnet::load(cx, &vb.pp("resnets.1"), c, c, None, groups, 1e-6)?,
            ],
            norm: Norm::group(cx, &a.pp("group_norm"), c, groups, 1e-6)?,
            attn: Attention::load(
                cx,
                &a,
                ["to_q", "to_k", "to_v", "to_out.0"],
                c,
                c,
                c,
                1,
                true,
            )?,
        })
    }

    fn forward(&self, g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
        let h = self.resnets[0].forward(g, x, None)?;
        let (b, c, hh, ww) = (h.dim(0), h.dim(1), h.dim(2), h.dim(3));
        let n = self.norm.forward(g, &h, false)?;
        let n = g.reshape(&n, &[b, c, hh * ww])?;
        let tok = ops::transpose_last2(g, &n)?; // (B, HW, C)
        let res = g.reshape(&h, &[b, c, hh * ww])?;
        let res = ops::transpose_last2(g, &res)?;
        let a = self.attn.forward(g, &tok, None, false, Some(&res))?;
        let a = ops::transpose_last2(g, &a)?;
        let a = g.reshape(&a, &[b, c, hh, ww])?;
        self.resnets[1].forward(g, &a, None)
    }
}

/// DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional sampler.
struct Stage {
    resnets: Vec<Resnet>,
    sampler: Option<Sampler>,
}

impl Stage {
    fn forward(&self, g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(g, &h, None)?;
        }
        match &self.sampler {
            Some(s) => s.forward(g, &h),
            None => Ok(h),
        }
    }
}

pub struct Vae {
    pub config: VaeConfig,
    enc_conv_in: Conv,
    enc_down: Vec<Stage>,
    enc_mid: Mid,
    enc_norm_out: Norm,
    enc_conv_out: Conv,
    quant_conv: Conv,
    post_quant_conv: Conv,
    dec_conv_in: Conv,
    dec_mid: Mid,
    dec_up: Vec<Stage>,
    dec_norm_out: Norm,
    dec_conv_out: Conv,
}

impl Vae {
    pub fn load(cx: Ctx, w: &Weights, config: VaeConfig) -> Result<Self, WeightError> {
        let c = &config;
        let vb = w.root();
        let ch = &c.block_out_channels;
        let n = ch.len();
        let groups = c.norm_num_groups;
        let lat = c.latent_channels;
        let one = Conv2d::same(0);

        // The VAE's resnets have no time embedding and use eps 1e-6.
        let resnet = |vb: &VarBuilder, inp: usize, out: usize| {
            Resnet::load(cx, vb, inp, out, None, groups, 1e-6)
        };

        let e = vb.pp("encoder");
        let mut enc_down = Vec::new();
        let mut out = ch[0];
        for (i, &ch_i) in ch.iter().enumerate() {
            let inp = out;
            out = ch_i;
            let vb = e.pp("down_blocks").pp(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| resnet(&vb.pp("resnets").pp(j), if j == 0 { inp } else { out }, out))
                .collect::<Result<_, _>>()?;
            let sampler = if i + 1 < n {
                Some(Sampler::load_down(
                    cx,
                    &vb.pp("downsamplers.0"),
                    out,
                    [0, 1, 0, 1],
                )?)
            } else {
                None
            };
            enc_down.push(Stage { resnets, sampler });
        }
        let top = ch[n - 1];

        let d = vb.pp("decoder");
        let mut dec_up = Vec::new();
        let mut prev = top;
        for (i, &out) in ch.iter().rev().enumerate() {
            let vb = d.pp("up_blocks").pp(i);
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    resnet(
                        &vb.pp("resnets").pp(j),
                        if j == 0 { prev } else { out },
                        out,
                    )
                })
                .collect::<Result<_, _>>()?;
            let sampler = if i + 1 < n {
                Some(Sampler::load_up(cx, &vb.pp("upsamplers.0"), out)?)
            } else {
                None
            };
            dec_up.push(Stage { resnets, sampler });
            prev = out;
        }

        Ok(Vae {
            enc_conv_in: Conv::load3(cx, &e.pp("conv_in"), c.in_channels, ch[0])?,
            enc_down,
            enc_mid: Mid::load(cx, &e.pp("mid_block"), top, groups)?,
            enc_norm_out: Norm::group(cx, &e.pp("conv_norm_out"), top, groups, 1e-6)?,
            enc_conv_out: Conv::load3(cx, &e.pp("conv_out"), top, 2 * lat)?,
            quant_conv: Conv::load(cx, &vb.pp("quant_conv"), 2 * lat, 2 * lat, 1, one)?,
            post_quant_conv: Conv::load(cx, &vb.pp("post_quant_conv"), lat, lat, 1, one)?,
            dec_conv_in: Conv::load3(cx, &d.pp("conv_in"), lat, top)?,
            dec_mid: Mid::load(cx, &d.pp("mid_block"), top, groups)?,
            dec_up,
            dec_norm_out: Norm::group(cx, &d.pp("conv_norm_out"), ch[0], groups, 1e-6)?,
            dec_conv_out: Conv::load3(cx, &d.pp("conv_out"), ch[0], c.out_channels)?,
            config,
        })
    }

    /// image (B, 3, H, W) in [-1, 1] -> the posterior's moments (B, 2 * latent, H/8, W/8):
    /// channels [0, latent) are the mean, [latent, 2 latent) the log-variance (unclamped).
    pub fn encode_moments(&self, g: &mut Graph, x: &Value) -> Result<Value, ShapeError> {
        let mut h = self.enc_conv_in.forward(g, x, None)?;
        for s in &self.enc_down {
            h = s.forward(g, &h)?;
        }
        h = self.enc_mid.forward(g, &h)?;
        let h = self.enc_norm_out.forward(g, &h, true)?;
        let h = self.enc_conv_out.forward(g, &h, None)?;
        self.quant_conv.forward(g, &h, None)
    }

    /// z (B, latent, h, w), already divided by the scaling factor -> image (B, 3, 8h, 8w).
    pub fn decode(&self, g: &mut Graph, z: &Value) -> Result<Value, ShapeError> {
        let z = self.post_quant_conv.forward(g, z, None)?;
        let mut h = self.dec_conv_in.forward(g, &z, None)?;
        h = self.dec_mid.forward(g, &h)?;
        for s in &self.dec_up {
            h = s.forward(g, &h)?;
        }
        let h = self.dec_norm_out.forward(g, &h, true)?;
        self.dec_conv_out.forward(g, &h, None)
    }
}
