#!/usr/bin/env python3
"""Convert a diffusers Stable Diffusion folder into one single-file checkpoint in
the original LDM/CompVis key layout (the layout of sd-v1-5.safetensors and
v2-1_512-ema-pruned.safetensors), and back.

    python tools/ldm_layout.py <diffusers folder> <out.safetensors> [--variant fp16]
                                [--text {auto,clip,openclip}] [--seed N]

Key layout written:
  model.diffusion_model.*                 UNet (input_blocks/middle_block/output_blocks)
  first_stage_model.*                     VAE (encoder.down.N.block.M, mid.attn_1.{norm,q,k,v,proj_out}
                                          with q/k/v/proj_out weights as 1x1 convs [C,C,1,1])
  cond_stage_model.transformer.text_model.*   SD1.x CLIP text encoder (same keys as transformers)
  cond_stage_model.model.*                SD2.x OpenCLIP text encoder: token_embedding.weight,
                                          positional_embedding, transformer.resblocks.N.{ln_1,
                                          attn.in_proj_weight/in_proj_bias (fused q,k,v), attn.out_proj,
                                          ln_2, mlp.c_fc, mlp.c_proj}, ln_final, text_projection.
                                          Real SD2 files carry one resblock more than the diffusers
                                          text encoder (SD2 uses the penultimate layer, diffusers drops
                                          the last one); that block cannot be recovered from a diffusers
                                          folder, so a seeded random one is written, and so is the
                                          (unused) text_projection [d, d].

Every block count comes from the component configs. Tensors keep the dtype of
the files they come from. Only torch and safetensors are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

UNET_RESNET_RENAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]
VAE_RESNET_RENAMES = [
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("conv_shortcut.", "nin_shortcut."),
]
VAE_ATTN_RENAMES = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


# --------------------------------------------------------------------------- tables
# Each table is a list of (diffusers prefix, ldm prefix, inner renames or None).
# A key maps by its (unique) matching prefix; the rest of the key is renamed by
# the first matching inner rename, or kept as is when the renames are None.

def unet_table(cfg: dict) -> list[tuple[str, str, list | None]]:
    nb = len(cfg["block_out_channels"])
    L = cfg["layers_per_block"]
    if not isinstance(L, int):
        raise ValueError("per-block layers_per_block is not supported")
    t: list[tuple[str, str, list | None]] = [
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        ("conv_in.", "input_blocks.0.0.", None),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_RENAMES),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET_RENAMES),
    ]
    down_types = cfg["down_block_types"]
    up_types = cfg["up_block_types"]
    for i in range(nb):
        for j in range(L):
            n = 1 + i * (L + 1) + j
            t.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", UNET_RESNET_RENAMES))
            if "CrossAttn" in down_types[i]:
                t.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", None))
        if i < nb - 1:
            t.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (L + 1)}.0.op.", None))
        for j in range(L + 1):
            n = i * (L + 1) + j
            t.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", UNET_RESNET_RENAMES))
            if "CrossAttn" in up_types[i]:
                t.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", None))
        if i < nb - 1:
            slot = 2 if "CrossAttn" in up_types[i] else 1
            t.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{i * (L + 1) + L}.{slot}.conv.", None))
    return t


def vae_table(cfg: dict) -> list[tuple[str, str, list | None]]:
    nb = len(cfg["block_out_channels"])
    L = cfg["layers_per_block"]
    t: list[tuple[str, str, list | None]] = [("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None)]
    for part in ("encoder", "decoder"):
        t += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTN_RENAMES),
        ]
    for i in range(nb):
        for j in range(L):
            t.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", VAE_RESNET_RENAMES))
        if i < nb - 1:
            t.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", None))
        k = nb - 1 - i
        for j in range(L + 1):
            t.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{k}.block.{j}.", VAE_RESNET_RENAMES))
        if i < nb - 1:
            t.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{k}.upsample.conv.", None))
    return t


def _map_key(key: str, table, forward: bool) -> str:
    hits = []
    for d, l, inner in table:
        src, dst = (d, l) if forward else (l, d)
        if key.startswith(src):
            hits.append((src, dst, inner))
    if len(hits) != 1:
        raise KeyError(f"{key}: {len(hits)} matching prefixes")
    src, dst, inner = hits[0]
    rest = key[len(src):]
    if inner is not None:
        for a, b in inner:
            s, r = (a, b) if forward else (b, a)
            if rest.startswith(s):
                rest = r + rest[len(s):]
                break
        else:
            raise KeyError(f"{key}: no inner rename for {rest!r}")
    return dst + rest


def _is_vae_attn_matrix(ldm_key: str) -> bool:
    return ".mid.attn_1." in ldm_key and ldm_key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and ldm_key.endswith(".weight")


# --------------------------------------------------------------------------- forward
def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    table = unet_table(cfg)
    return {UNET_PREFIX + _map_key(k, table, True): v for k, v in sd.items()}


def vae_to_ldm(sd: dict, cfg: dict) -> dict:
    table = vae_table(cfg)
    out = {}
    for k, v in sd.items():
        lk = _map_key(k, table, True)
        if _is_vae_attn_matrix(lk):
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)
        out[VAE_PREFIX + lk] = v
    return out


def _with_text_model_prefix(sd: dict) -> dict:
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}


def clip_to_ldm(sd: dict) -> dict:
    return {CLIP_PREFIX + k: v for k, v in _with_text_model_prefix(sd).items()}


def _random_like_resblock(d: int, ff: int, dtype, gen: torch.Generator) -> dict:
    def rn(*shape, std=1.0, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=gen, dtype=torch.float32)).to(dtype)

    return {
        "ln_1.weight": rn(d, std=0.3, mean=1.0),
        "ln_1.bias": rn(d, std=0.3),
        "attn.in_proj_weight": rn(3 * d, d, std=d ** -0.5),
        "attn.in_proj_bias": rn(3 * d, std=0.1),
        "attn.out_proj.weight": rn(d, d, std=d ** -0.5),
        "attn.out_proj.bias": rn(d, std=0.1),
        "ln_2.weight": rn(d, std=0.3, mean=1.0),
        "ln_2.bias": rn(d, std=0.3),
        "mlp.c_fc.weight": rn(ff, d, std=d ** -0.5),
        "mlp.c_fc.bias": rn(ff, std=0.1),
        "mlp.c_proj.weight": rn(d, ff, std=ff ** -0.5),
        "mlp.c_proj.bias": rn(d, std=0.1),
    }


def openclip_to_ldm(sd: dict, cfg: dict, seed: int = 0) -> dict:
    sd = _with_text_model_prefix(sd)
    n_layers = cfg["num_hidden_layers"]
    d = cfg["hidden_size"]
    ff = cfg["intermediate_size"]
    P = OPENCLIP_PREFIX
    out = {}
    used = set()

    def take(k):
        used.add(k)
        return sd[k]

    out[P + "token_embedding.weight"] = take("text_model.embeddings.token_embedding.weight")
    out[P + "positional_embedding"] = take("text_model.embeddings.position_embedding.weight")
    out[P + "ln_final.weight"] = take("text_model.final_layer_norm.weight")
    out[P + "ln_final.bias"] = take("text_model.final_layer_norm.bias")
    for n in range(n_layers):
        s = f"text_model.encoder.layers.{n}."
        r = f"{P}transformer.resblocks.{n}."
        out[r + "ln_1.weight"] = take(s + "layer_norm1.weight")
        out[r + "ln_1.bias"] = take(s + "layer_norm1.bias")
        out[r + "attn.in_proj_weight"] = torch.cat([take(s + f"self_attn.{p}_proj.weight") for p in "qkv"], 0)
        out[r + "attn.in_proj_bias"] = torch.cat([take(s + f"self_attn.{p}_proj.bias") for p in "qkv"], 0)
        out[r + "attn.out_proj.weight"] = take(s + "self_attn.out_proj.weight")
        out[r + "attn.out_proj.bias"] = take(s + "self_attn.out_proj.bias")
        out[r + "ln_2.weight"] = take(s + "layer_norm2.weight")
        out[r + "ln_2.bias"] = take(s + "layer_norm2.bias")
        out[r + "mlp.c_fc.weight"] = take(s + "mlp.fc1.weight")
        out[r + "mlp.c_fc.bias"] = take(s + "mlp.fc1.bias")
        out[r + "mlp.c_proj.weight"] = take(s + "mlp.fc2.weight")
        out[r + "mlp.c_proj.bias"] = take(s + "mlp.fc2.bias")
    left = set(sd) - used
    if left:
        raise KeyError(f"text encoder keys not converted: {sorted(left)[:8]}")
    dtype = sd["text_model.final_layer_norm.weight"].dtype
    gen = torch.Generator().manual_seed(seed)
    for k, v in _random_like_resblock(d, ff, dtype, gen).items():
        out[f"{P}transformer.resblocks.{n_layers}.{k}"] = v
    out[P + "text_projection"] = (d ** -0.5 * torch.randn(d, d, generator=gen, dtype=torch.float32)).to(dtype)
    return out


# --------------------------------------------------------------------------- inverse
def unet_from_ldm(sd: dict, cfg: dict) -> dict:
    table = unet_table(cfg)
    return {_map_key(k[len(UNET_PREFIX):], table, False): v for k, v in sd.items() if k.startswith(UNET_PREFIX)}


def vae_from_ldm(sd: dict, cfg: dict) -> dict:
    table = vae_table(cfg)
    out = {}
    for k, v in sd.items():
        if not k.startswith(VAE_PREFIX):
            continue
        lk = k[len(VAE_PREFIX):]
        if _is_vae_attn_matrix(lk):
            v = v[:, :, 0, 0]
        out[_map_key(lk, table, False)] = v
    return out


def clip_from_ldm(sd: dict) -> dict:
    return {k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}


def openclip_from_ldm(sd: dict, cfg: dict) -> dict:
    """Inverse of openclip_to_ldm; drops the extra last resblock and text_projection."""
    P = OPENCLIP_PREFIX
    d = cfg["hidden_size"]
    out = {
        "text_model.embeddings.token_embedding.weight": sd[P + "token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd[P + "positional_embedding"],
        "text_model.final_layer_norm.weight": sd[P + "ln_final.weight"],
        "text_model.final_layer_norm.bias": sd[P + "ln_final.bias"],
    }
    ren = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
           "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
    for n in range(cfg["num_hidden_layers"]):
        r = f"{P}transformer.resblocks.{n}."
        s = f"text_model.encoder.layers.{n}."
        for k, v in sd.items():
            if not k.startswith(r):
                continue
            rest = k[len(r):]
            if rest == "attn.in_proj_weight":
                for i, p in enumerate("qkv"):
                    out[s + f"self_attn.{p}_proj.weight"] = v[i * d:(i + 1) * d]
            elif rest == "attn.in_proj_bias":
                for i, p in enumerate("qkv"):
                    out[s + f"self_attn.{p}_proj.bias"] = v[i * d:(i + 1) * d]
            else:
                for a, b in ren.items():
                    if rest.startswith(a):
                        out[s + b + rest[len(a):]] = v
                        break
                else:
                    raise KeyError(k)
    return out


# --------------------------------------------------------------------------- folders
def _weights(folder: Path, sub: str, stem: str, variant: str | None) -> dict:
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    return load_file(str(folder / sub / name))


def _cfg(folder: Path, sub: str) -> dict:
    return json.loads((folder / sub / "config.json").read_text())


def detect_text_layout(folder: Path) -> str:
    """SD2.x folders carry an OpenCLIP encoder (gelu); SD1.x the OpenAI CLIP (quick_gelu)."""
    act = _cfg(folder, "text_encoder").get("hidden_act", "quick_gelu")
    return "openclip" if act == "gelu" else "clip"


def diffusers_to_ldm(folder, variant: str | None = None, text: str = "auto", seed: int = 0) -> dict:
    folder = Path(folder)
    if text == "auto":
        text = detect_text_layout(folder)
    out = {}
    out.update(unet_to_ldm(_weights(folder, "unet", "diffusion_pytorch_model", variant), _cfg(folder, "unet")))
    out.update(vae_to_ldm(_weights(folder, "vae", "diffusion_pytorch_model", variant), _cfg(folder, "vae")))
    te = _weights(folder, "text_encoder", "model", variant)
    if text == "clip":
        out.update(clip_to_ldm(te))
    elif text == "openclip":
        out.update(openclip_to_ldm(te, _cfg(folder, "text_encoder"), seed=seed))
    else:
        raise ValueError(text)
    return out


def ldm_to_diffusers(sd: dict, folder) -> dict[str, dict]:
    """Own inverse mapping, for verification. Returns {component: state dict}
    (text encoder keys with the text_model. prefix)."""
    folder = Path(folder)
    te_cfg = _cfg(folder, "text_encoder")
    text = "openclip" if any(k.startswith(OPENCLIP_PREFIX) for k in sd) else "clip"
    return {
        "unet": unet_from_ldm(sd, _cfg(folder, "unet")),
        "vae": vae_from_ldm(sd, _cfg(folder, "vae")),
        "text_encoder": openclip_from_ldm(sd, te_cfg) if text == "openclip" else clip_from_ldm(sd),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    ap.add_argument("--text", default="auto", choices=["auto", "clip", "openclip"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the extra OpenCLIP resblock / text_projection")
    a = ap.parse_args(argv)
    sd = diffusers_to_ldm(a.folder, a.variant, a.text, a.seed)
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file(sd, a.out, metadata={"format": "pt"})
    print(f"wrote {a.out}: {len(sd)} tensors, {os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    sys.exit(main())
