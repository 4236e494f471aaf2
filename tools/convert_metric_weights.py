#!/usr/bin/env python3
"""Convert a metric network's PyTorch checkpoint to .safetensors for `pnp eval`.

Run once, wherever PyTorch is installed; `pnp` itself reads only the
.safetensors this writes. Kinds:

  dino   A DINO ViT from torch hub (facebookresearch/dino, e.g. `dino_vitb8`,
         the network of PIE-Bench's structure_distance): the .pth the hub
         downloads (dino_vitbase8_pretrain.pth, a plain state dict), or a DINO
         training checkpoint (a dict with "teacher"/"student", or a
         "state_dict"), whose "module." / "backbone." prefixes are stripped
         and whose projection head ("head.*") is dropped. The tensors are
         written as float32, contiguous, under their hub names (cls_token,
         pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,
         norm2,mlp.fc1,mlp.fc2}.*, norm.*), with the metadata "kind",
         "heads" (--heads, else D / 64 as in every released DINO ViT),
         "eps" (--eps, 1e-6), "patch", "layers" and "dim" (pnp reads
         "heads" and "eps"). Shapes and the block numbering are checked.

The output is the same bytes on every run: its header is written here, with
sorted metadata keys and the tensors in name order (safetensors' own writer
orders the metadata at random).

  lpips  LPIPS with the SqueezeNet backbone (PIE-Bench's lpips_unedit_part):
         the input is torchvision's squeezenet1_1 state dict
         (squeezenet1_1-b8a52dc0.pth, in ~/.cache/torch/hub/checkpoints/
         after torchvision.models.squeezenet1_1(weights="DEFAULT")), and
         --lpips-heads names the LPIPS linear heads (the lpips package's
         weights/v0.1/squeeze.pth, which torchmetrics also ships as
         torchmetrics/functional/image/lpips_models/squeeze.pth). Written:
         the backbone's features.* (the classifier dropped) and the heads
         lin0..lin6.model.1.weight, float32, metadata "kind".

More kinds get one entry each in KINDS.

Usage:
  python tools/convert_metric_weights.py --kind dino dino_vitbase8_pretrain.pth dino-vitb8.safetensors
  python tools/convert_metric_weights.py --kind lpips squeezenet1_1-b8a52dc0.pth \
      --lpips-heads squeeze.pth lpips-squeeze.safetensors

The hub's file is in ~/.cache/torch/hub/checkpoints/ after
`torch.hub.load("facebookresearch/dino:main", "dino_vitb8")`, or at
https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth.
Plain state dicts load with torch.load(weights_only=True); a training
checkpoint also pickles its argparse arguments, which needs --trust-pickle
(full unpickling runs code from the file: only for files you trust).
"""

import argparse
import json
import os
import re
import sys


class ConvertError(Exception):
    """A problem with the input, reported without a traceback."""


def load_checkpoint(path, trust_pickle):
    import pickle

    import torch

    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if not trust_pickle and "weights only load failed" in str(e).lower():
            raise ConvertError(
                f"{path}: the file pickles objects other than tensors (a training checkpoint's "
                "arguments, say); if you trust it, rerun with --trust-pickle"
            )
        raise ConvertError(f"{path}: not a PyTorch checkpoint (cannot unpickle: {str(e).splitlines()[0]})")
    except Exception as e:  # torch.load raises many kinds on a file that is not a checkpoint
        raise ConvertError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})")


def strip_prefixes(sd, prefixes):
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        if k in out:
            raise ConvertError(f"two tensors map to {k!r} after stripping {prefixes}")
        out[k] = v
    return out


def write_safetensors(path, tensors, metadata):
    """Writes float32 `tensors` as .safetensors, the same bytes on every run.

    (safetensors' own writer emits __metadata__ from a hash map, in an order
    that changes between runs.) Header: __metadata__ with sorted keys, then
    the tensors in name order, compact JSON padded with spaces to 8 bytes;
    data little-endian, in the same order.
    """
    import struct

    import torch

    header = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype != torch.float32:
            raise ConvertError(f"{name}: {t.dtype}, only float32 is written")
        b = t.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------
# DINO


def dino_unwrap(ckpt, branch):
    """The backbone state dict inside a hub file or a training checkpoint."""
    if not isinstance(ckpt, dict):
        raise ConvertError(f"expected a dict (state dict or checkpoint), got {type(ckpt).__name__}")
    where = "the file"
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt, where = ckpt["state_dict"], '"state_dict"'
    if branch in ckpt and isinstance(ckpt[branch], dict):
        ckpt, where = ckpt[branch], f'"{branch}"'
    elif "teacher" in ckpt or "student" in ckpt:
        have = [b for b in ("teacher", "student") if isinstance(ckpt.get(b), dict)]
        raise ConvertError(f'no "{branch}" in the checkpoint (it has {have}); pick one with --branch')
    sd = strip_prefixes(ckpt, ("module.", "backbone."))
    import torch

    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConvertError(f"{where} holds non-tensor entries, not a state dict: {not_tensors[:8]}")
    return sd


def dino_convert(sd, args):
    import torch

    dropped = sorted(k for k in sd if k.startswith("head."))
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    missing = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight") if k not in sd]
    if missing:
        raise ConvertError(f"not a DINO ViT state dict: missing {missing} (keys: {sorted(sd)[:12]}...)")

    cls = sd["cls_token"]
    dim = cls.shape[-1]
    if tuple(cls.shape) != (1, 1, dim):
        raise ConvertError(f"cls_token has shape {tuple(cls.shape)}, expected (1, 1, D)")
    pw = sd["patch_embed.proj.weight"]
    if pw.ndim != 4 or pw.shape[0] != dim or pw.shape[1] != 3 or pw.shape[2] != pw.shape[3]:
        raise ConvertError(f"patch_embed.proj.weight has shape {tuple(pw.shape)}, expected ({dim}, 3, p, p)")
    patch = pw.shape[2]
    pe = sd["pos_embed"]
    n = pe.shape[1] - 1 if pe.ndim == 3 else -1
    grid = int(round(max(n, 0) ** 0.5))
    if pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != dim or grid * grid != n or n == 0:
        raise ConvertError(f"pos_embed has shape {tuple(pe.shape)}, expected (1, 1 + g*g, {dim})")

    layers = set()
    for k in sd:
        m = re.match(r"blocks\.(\d+)\.", k)
        if m:
            layers.add(int(m.group(1)))
    if not layers or layers != set(range(len(layers))):
        raise ConvertError(f"blocks must be numbered 0..L-1, found {sorted(layers)}")
    depth = len(layers)
    ff = sd.get("blocks.0.mlp.fc1.weight")
    if ff is None:
        raise ConvertError("missing blocks.0.mlp.fc1.weight")
    ff = ff.shape[0]

    want = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + n, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        want.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (ff, dim), b + "mlp.fc1.bias": (ff,),
            b + "mlp.fc2.weight": (dim, ff), b + "mlp.fc2.bias": (dim,),
        })
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing:
        raise ConvertError(f"missing tensors: {missing[:12]}{' ...' if len(missing) > 12 else ''}")
    if extra:
        raise ConvertError(f"unexpected tensors (not a DINO ViT backbone?): {extra[:12]}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ConvertError(f"{k} has shape {tuple(sd[k].shape)}, expected {shape}")
        if not sd[k].is_floating_point():
            raise ConvertError(f"{k} has dtype {sd[k].dtype}, expected a float type")

    heads = args.heads
    if heads is None:
        if dim % 64:
            raise ConvertError(f"D = {dim} is not a multiple of 64; give the head count with --heads")
        heads = dim // 64
    if heads <= 0 or dim % heads:
        raise ConvertError(f"--heads {heads} does not divide D = {dim}")

    out = {k: sd[k].detach().to(torch.float32).contiguous() for k in sorted(want)}
    meta = {
        "kind": "dino",
        "dim": str(dim),
        "heads": str(heads),
        "eps": repr(float(args.eps)),
        "patch": str(patch),
        "layers": str(depth),
    }
    notes = [f"ViT D={dim}, {depth} blocks, {heads} heads, patch {patch}, position grid {grid}x{grid}"]
    if dropped:
        notes.append(f"dropped the projection head ({len(dropped)} tensors)")
    return out, meta, notes


# SqueezeNet 1.1's Fire modules by features index, and the heads' widths.
SQUEEZE_FIRES = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
                 9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
LPIPS_TAPS = (64, 128, 256, 384, 384, 512, 512)


def lpips_convert(sd, args):
    import torch
    if not args.lpips_heads:
        raise ConvertError("--kind lpips needs --lpips-heads (the LPIPS squeeze.pth)")
    heads = strip_prefixes(load_checkpoint(args.lpips_heads, args.trust_pickle), ("module.",))
    want = {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,)}
    for i, (inp, sq, e) in SQUEEZE_FIRES.items():
        want[f"features.{i}.squeeze.weight"] = (sq, inp, 1, 1)
        want[f"features.{i}.squeeze.bias"] = (sq,)
        want[f"features.{i}.expand1x1.weight"] = (e, sq, 1, 1)
        want[f"features.{i}.expand1x1.bias"] = (e,)
        want[f"features.{i}.expand3x3.weight"] = (e, sq, 3, 3)
        want[f"features.{i}.expand3x3.bias"] = (e,)
    out = {}
    for k, shape in want.items():
        if k not in sd:
            raise ConvertError(f"{args.input}: no {k}: not torchvision's squeezenet1_1")
        if tuple(sd[k].shape) != shape:
            raise ConvertError(f"{args.input}: {k} is {tuple(sd[k].shape)}, expected {shape}")
        out[k] = sd[k].to(torch.float32).contiguous()
    for k, c in enumerate(LPIPS_TAPS):
        name = f"lin{k}.model.1.weight"
        if name not in heads:
            raise ConvertError(f"{args.lpips_heads}: no {name}: not LPIPS's squeeze heads")
        if tuple(heads[name].shape) != (1, c, 1, 1):
            raise ConvertError(f"{args.lpips_heads}: {name} is {tuple(heads[name].shape)}, expected (1, {c}, 1, 1)")
        out[name] = heads[name].to(torch.float32).contiguous()
    dropped = sorted(set(sd) - set(out))
    notes = [f"dropped {len(dropped)} backbone tensors outside the features LPIPS taps ({', '.join(dropped[:3])}...)"] if dropped else []
    return out, {"kind": "lpips-squeeze"}, notes


KINDS = {
    # kind: (unwrap(checkpoint, args) -> state dict, convert(state dict, args) -> (tensors, metadata, notes))
    "dino": (lambda ckpt, args: dino_unwrap(ckpt, args.branch), dino_convert),
    "lpips": (lambda ckpt, args: strip_prefixes(ckpt, ("module.",)), lpips_convert),
}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert a metric network's PyTorch checkpoint (.pth) to .safetensors for `pnp eval`.",
        epilog="Example: %(prog)s --kind dino dino_vitbase8_pretrain.pth dino-vitb8.safetensors",
    )
    ap.add_argument("--kind", required=True, choices=sorted(KINDS), help="which network the checkpoint holds")
    ap.add_argument("input", help="the checkpoint (.pth)")
    ap.add_argument("output", help="the .safetensors to write")
    ap.add_argument("--heads", type=int, default=None, help="dino: attention heads (default D / 64)")
    ap.add_argument("--eps", type=float, default=1e-6, help="dino: LayerNorm eps (default 1e-6)")
    ap.add_argument(
        "--branch", default="teacher", choices=("teacher", "student"),
        help='dino: which network of a training checkpoint (default "teacher", what DINO releases)',
    )
    ap.add_argument(
        "--trust-pickle", action="store_true",
        help="unpickle arbitrary objects (training checkpoints); runs code from the file",
    )
    ap.add_argument("--lpips-heads", help="lpips: the LPIPS linear heads (squeeze.pth)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = ap.parse_args(argv)

    try:
        if os.path.exists(args.output) and not args.force:
            raise ConvertError(f"{args.output} exists; pass --force to overwrite it")
        if os.path.abspath(args.output) == os.path.abspath(args.input):
            raise ConvertError("the output would overwrite the input")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise ConvertError(f"{out_dir}: no such directory")
        unwrap, convert = KINDS[args.kind]
        ckpt = load_checkpoint(args.input, args.trust_pickle)
        tensors, meta, notes = convert(unwrap(ckpt, args), args)
        write_safetensors(args.output, tensors, meta)
    except ConvertError as e:
        print(f"convert_metric_weights: error: {e}", file=sys.stderr)
        return 1
    n = sum(t.numel() for t in tensors.values())
    for line in notes:
        print(line)
    print(f"wrote {args.output}: {len(tensors)} tensors, {n} parameters, float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
