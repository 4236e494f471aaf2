//! UNet2DConditionModel (diffusers' models/unets/unet_2d_condition.py) for
//! the SD 1.x/2.x block layout: CrossAttnDownBlock2D / DownBlock2D,
//! UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D.

use super::config::UnetConfig;
use super::hooks::{Hooks, QkHook};
use super::nn::{Conv, Ctx, Linear, Norm};
use super::unet_blocks::{Resnet, Sampler, Transformer2d};
use super::weights::{VarBuilder, WeightError, Weights};
use crate::gpu::DType;
use crate::gpu::Tensor;
use crate::graph::{Graph, ShapeError, Value};
use crate::ops::{self, Act};

struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2d>,
    sampler: Option<Sampler>,
}

pub struct Unet {
    pub config: UnetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    /// Every ResNet's time-embedding projection stacked into one (S, T):
    /// one GEMM per step projects SiLU(emb) for all of them.
    time_proj: Linear,
    conv_in: Conv,
    down: Vec<Block>,
    mid_resnets: [Resnet; 2],
    mid_attention: Transformer2d,
    up: Vec<Block>,
    conv_norm_out: Norm,
    conv_out: Conv,
}

fn bad_config(w: &Weights, msg: String) -> WeightError {
    WeightError::Config {
        path: w.source.clone().into(),
        msg,
    }
}

impl Unet {
    pub fn load(cx: Ctx, w: &Weights, config: UnetConfig) -> Result<Self, WeightError> {
        let c = &config;
        let vb = w.root();
        let ch = &c.block_out_channels;
        let n = ch.len();
        if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(bad_config(
                w,
                "block_out_channels, down_block_types and up_block_types differ in length".into(),
            ));
        }
        let temb = 4 * ch[0];
        // Every resnet and transformer of the UNet shares these settings; a
        // transformer's head and layer counts follow its resolution level.
        let resnet = |vb: &VarBuilder, inp: usize, out: usize| {
            Resnet::load(cx, vb, inp, out, Some(temb), c.norm_num_groups, c.norm_eps)
        };
        let transformer = |vb: &VarBuilder, channels: usize, level: usize| {
            Transformer2d::load(
                cx,
                vb,
                channels,
                c.heads(level),
                c.cross_attention_dim,
                c.norm_num_groups,
                c.use_linear_projection,
                c.transformer_layers_per_block.get(level),
            )
        };
        let block_kind =
            |types: &[String], i: usize, cross: &str, plain: &str| match types[i].as_str() {
                t if t == cross => Ok(true),
                t if t == plain => Ok(false),
                other => Err(bad_config(
                    w,
                    format!("block type {other} is not supported ({cross} or {plain})"),
                )),
            };

        let mut down = Vec::new();
        let mut out = ch[0];
        for (i, &ch_i) in ch.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let cross = block_kind(
                &c.down_block_types,
                i,
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            )?;
            let inp = out;
            out = ch_i;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                resnets.push(resnet(
                    &vb.pp("resnets").pp(j),
                    if j == 0 { inp } else { out },
                    out,
                )?);
                if cross {
                    attentions.push(transformer(&vb.pp("attentions").pp(j), out, i)?);
                }
            }
            let sampler = if i + 1 < n {
                Some(Sampler::load_down(
                    cx,
                    &vb.pp("downsamplers.0"),
                    out,
                    [1, 1, 1, 1],
                )?)
            } else {
                None
            };
            down.push(Block {
                resnets,
                attentions,
                sampler,
            });
        }

        let top = ch[n - 1];
        let mid = vb.pp("mid_block");
        let mut mid_resnets = [
            resnet(&mid.pp("resnets.0"), top, top)?,
            resnet(&mid.pp("resnets.1"), top, top)?,
        ];
        let mid_attention = transformer(&mid.pp("attentions.0"), top, n - 1)?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut prev = rev[0];
        for (i, &out) in rev.iter().enumerate() {
            let vb = vb.pp("up_blocks").pp(i);
            let cross = block_kind(&c.up_block_types, i, "CrossAttnUpBlock2D", "UpBlock2D")?;
            let skip_in = rev[(i + 1).min(n - 1)];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=c.layers_per_block {
                let res_skip = if j == c.layers_per_block {
                    skip_in
                } else {
                    out
                };
                let rin = if j == 0 { prev } else { out };
                resnets.push(resnet(&vb.pp("resnets").pp(j), rin + res_skip, out)?);
                if cross {
                    attentions.push(transformer(&vb.pp("attentions").pp(j), out, n - 1 - i)?);
                }
            }
            let sampler = if i + 1 < n {
                Some(Sampler::load_up(cx, &vb.pp("upsamplers.0"), out)?)
            } else {
                None
            };
            up.push(Block {
                resnets,
                attentions,
                sampler,
            });
            prev = out;
        }

        let resnets = (down.iter_mut())
            .chain(up.iter_mut())
            .flat_map(|b| b.resnets.iter_mut())
            .chain(mid_resnets.iter_mut());
        let time_proj = stack_time_projections(cx, resnets)?;
        Ok(Unet {
            time_linear_1: Linear::load(cx, &vb.pp("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear_2: Linear::load(cx, &vb.pp("time_embedding.linear_2"), temb, temb, true)?,
            time_proj,
            conv_in: Conv::load3(cx, &vb.pp("conv_in"), c.in_channels, ch[0])?,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out: Norm::group(
                cx,
                &vb.pp("conv_norm_out"),
                ch[0],
                c.norm_num_groups,
                c.norm_eps,
            )?,
            conv_out: Conv::load3(cx, &vb.pp("conv_out"), ch[0], c.out_channels)?,
            config: config.clone(),
        })
    }

    /// eps = UNet(x, t, context): x (B, 4, h, w), t (B) float32 timesteps,
    /// context (B, 77, Cc) -> (B, 4, h, w).
    pub fn forward(
        &self,
        g: &mut Graph,
        x: &Value,
        t: &Value,
        context: &Value,
    ) -> Result<Value, ShapeError> {
        self.forward_hooked(g, x, t, context, &Hooks::default())
    }

    /// [`Self::forward`] with feature hooks in the up blocks.
    pub fn forward_hooked(
        &self,
        g: &mut Graph,
        x: &Value,
        t: &Value,
        context: &Value,
        hooks: &Hooks,
    ) -> Result<Value, ShapeError> {
        self.check_hooks(hooks)?;
        let c = &self.config;
        // 1. time embedding: sinusoid (B, C0) -> linear, SiLU -> linear (B, 4 C0).
        let t_emb = ops::timestep_embedding(
            g,
            t,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        )?;
        let e = self.time_linear_1.forward(g, &t_emb, Act::Silu, None)?;
        // The resnets take emb only through SiLU: fused into linear_2; then
        // every resnet's projection in one GEMM.
        let emb_silu = self.time_linear_2.forward(g, &e, Act::Silu, None)?;
        let emb_silu = self.time_proj.forward(g, &emb_silu, Act::None, None)?;

        // 2. down: keep every intermediate for the skip connections.
        let mut h = self.conv_in.forward(g, x, None)?; // (B, C0, h, w)
        let mut skips = vec![h.clone()];
        for blk in &self.down {
            for (j, r) in blk.resnets.iter().enumerate() {
                h = r.forward(g, &h, Some(&emb_silu))?;
                if let Some(a) = blk.attentions.get(j) {
                    h = a.forward(g, &h, context, QkHook::default())?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &blk.sampler {
                h = d.forward(g, &h)?;
                skips.push(h.clone());
            }
        }

        // 3. mid.
        h = self.mid_resnets[0].forward(g, &h, Some(&emb_silu))?;
        h = self
            .mid_attention
            .forward(g, &h, context, QkHook::default())?;
        h = self.mid_resnets[1].forward(g, &h, Some(&emb_silu))?;

        // 4. up: each resnet takes the channel concat with the newest skip.
        for (i, blk) in self.up.iter().enumerate() {
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    crate::graph::shape_err("unet", "ran out of skip connections")
                })?;
                h = r.forward_cat(g, &h, Some(&skip), Some(&emb_silu), hooks.resnet(i, j))?;
                if let Some(a) = blk.attentions.get(j) {
                    h = a.forward(g, &h, context, hooks.attn(i, j))?;
                }
            }
            if let Some(u) = &blk.sampler {
                h = u.forward(g, &h)?;
            }
        }

        // 5. out: GN + SiLU, conv_out.
        let h = self.conv_norm_out.forward(g, &h, true)?;
        self.conv_out.forward(g, &h, None)
    }

    /// Refuses a hook whose tap names no layer of this UNet: it would never
    /// capture or inject, and nothing else would say so.
    fn check_hooks(&self, hooks: &Hooks) -> Result<(), ShapeError> {
        let missing = |what: String| {
            let blocks: Vec<(usize, usize)> = self
                .up
                .iter()
                .map(|b| (b.resnets.len(), b.attentions.len()))
                .collect();
            crate::graph::shape_err(
                "unet hooks",
                format!(
                    "{what} is no layer of this UNet (up blocks as (resnets, attentions): {blocks:?})"
                ),
            )
        };
        // (up block, layer index, layer kind, layers of that kind in the block).
        let layers = |up: usize, count: fn(&Block) -> usize| self.up.get(up).map(count);
        let resnets = hooks
            .resnets
            .iter()
            .map(|(t, _)| (t.up, t.resnet, "resnets", layers(t.up, |b| b.resnets.len())));
        let attentions = hooks.attn1.iter().map(|(t, _)| {
            (
                t.up,
                t.attn,
                "attentions",
                layers(t.up, |b| b.attentions.len()),
            )
        });
        for (up, i, kind, n) in resnets.chain(attentions) {
            if n.is_none_or(|n| i >= n) {
                return Err(missing(format!("up_blocks[{up}].{kind}[{i}]")));
            }
        }
        Ok(())
    }

    /// The timestep input a graph needs: (B) float32.
    pub fn timestep_input(g: &mut Graph, batch: usize) -> Value {
        g.input("timesteps", &[batch], DType::F32)
    }
}

/// Stacks the time-embedding projections of `resnets` into one Linear (S,
/// T) on the device (buffer copies) and points each ResNet at its columns;
/// the separate weights are freed. Each part starts at an even row so that
/// every copy is 4-byte aligned in f16 too (an unused row may sit between).
fn stack_time_projections<'a>(
    cx: Ctx,
    resnets: impl Iterator<Item = &'a mut Resnet>,
) -> Result<Linear, WeightError> {
    let bad = |msg: &str| WeightError::Prepare {
        what: "the stacked time-embedding projections".into(),
        msg: msg.into(),
    };
    // (first row, weight, bias) of each ResNet's projection.
    let mut parts = Vec::new();
    let mut rows = 0;
    for r in resnets {
        if let Some(Linear { weight, bias }) = r.time_emb_proj.take() {
            let bias = bias.ok_or_else(|| bad("a projection lacks its bias"))?;
            r.time_off = Some(rows);
            parts.push((rows, weight, bias));
            rows += parts[parts.len() - 1].1.shape[0].next_multiple_of(2);
        }
    }
    let t = parts.first().map_or(2, |(_, w, _)| w.shape[1]);
    if t % 2 != 0 || parts.iter().any(|(_, w, _)| w.shape[1] != t) {
        return Err(bad("the projections differ in width or have an odd one"));
    }
    let weight = Tensor::empty(cx.gpu, "time projections", &[rows.max(2), t], cx.dtype);
    let bias = Tensor::empty(cx.gpu, "time projection biases", &[rows.max(2)], cx.dtype);
    let size = cx.dtype.size() as u64;
    let mut enc = cx.gpu.device.create_command_encoder(&Default::default());
    for (at, w, b) in &parts {
        let (at, out) = (*at as u64, w.shape[0] as u64);
        let row_bytes = t as u64 * size;
        enc.copy_buffer_to_buffer(
            &w.buffer,
            w.offset,
            &weight.buffer,
            at * row_bytes,
            out * row_bytes,
        );
        // The bias buffer is padded to 4 bytes, so an odd f16 count copies whole.
        let bbytes = (out * size).next_multiple_of(4);
        enc.copy_buffer_to_buffer(&b.buffer, b.offset, &bias.buffer, at * size, bbytes);
    }
    cx.gpu.queue.submit([enc.finish()]);
    cx.gpu.counters.submit();
    Ok(Linear {
        weight,
        bias: Some(bias),
    })
}
