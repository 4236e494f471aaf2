#!/usr/bin/env python3
"""Generate the fixtures of PIE-Bench's structure_distance (a DINO ViT).

Run from the repository root, after tools/make_metric_fixtures.py (which
writes the image pairs and refs.json; rerunning that script drops the keys
this one adds, so rerun this one after it):

    /work/venv/bin/python tools/make_dino_fixtures.py

Writes, under kernels-tests/fixtures/metrics/:

  * dino-tiny/ (config.json, model.safetensors): a tiny random-weight ViT,
    transformers' ViTModel (no pooler) with D = 32, 2 layers, 4 heads, MLP 64,
    patch 8, image 224 (a 28 x 28 position grid as ViT-B/8's), LayerNorm eps
    1e-6, exact GELU, qkv bias; torch.manual_seed(0), then every Linear/Conv
    weight ~ N(0, 0.2), bias ~ N(0, 0.1), LayerNorm weight 1 + N(0, 0.1) and
    bias N(0, 0.1), class token and position embeddings N(0, 0.5), so that
    attention is far from uniform. save_pretrained writes facebook/dino-vitb8's
    layout (encoder.layer.N.attention.attention.{query,key,value}, ...), although
    transformers 5's ViTModel names its modules layers.N.attention.{q,k,v,o}_proj
    and mlp.fc1/fc2 in memory (it renames on load and save).
  * dino-tiny-hub.safetensors: the same weights in torch hub's layout
    (blocks.N.attn.qkv = query, key, value concatenated along dim 0, ...), made
    by writing them as a hub .pth in a temporary folder and running
    tools/convert_metric_weights.py --kind dino --heads 4 on it (on a wrapped
    training-style checkpoint too, which must give the same bytes).
  * refs.json: per pair, metrics.structure_distance (float32 pipeline) and
    metrics.structure_distance_f64 (cross-check), and a top-level "dino" entry;
    the other keys are left as they are (sorted keys, indent 1, as written by
    make_metric_fixtures.py).
  * dino-tiny-ref.safetensors: for the pairs big and wide, the source image's
    "<pair>/input" (1, 3, h, w), "<pair>/pos_embed" (1, T, D) and
    "<pair>/keys" (T, D) (the self-similarity is left to the test to form
    from the keys: stored, it would be 8 MB), float32; metadata: versions, and "sizes"
    (JSON: per pair the image's and the ViT input's size, the token grid, T).

The reference is PIE-Bench's (cure-lab/PnPInversion,
evaluation/matrics_calculator.py, after Tumanyan et al.'s Splicing ViT
Features): each image as float32 0..255 (not / 255), (1, 3, H, W), through
torchvision's Resize(224, max_size=480) (tensor: bilinear, antialias=True)
and Normalize(ImageNet mean, std) applied to those 0..255 values; the ViT's
last block's keys (the k third of the fused qkv Linear's output, heads
concatenated per token, (T, D), CLS first); S = K K^T / clamp(|k_i| |k_j|,
1e-8); structure_distance = mse_loss(S_src, S_edit). The network is
transformers' ViTModel in eval mode with eager attention; the keys come from a
forward hook on the last layer's key projection (layers[-1].attention.k_proj,
encoder.layer[-1].attention.attention.key on disk). For inputs other than
224 x 224 the position embeddings are the hub's, not transformers' own (which
interpolates to size=(gh, gw) rather than by scale factor): the hub
(facebookresearch/dino vision_transformer.py, interpolate_pos_encoding) keeps
them when the patch count equals the grid's and the input is square, else
calls F.interpolate(pe.reshape(1, 28, 28, D).permute(0, 3, 1, 2),
scale_factor=((gh + 0.1) / 28, (gw + 0.1) / 28), mode="bicubic") with
gh, gw = H // 8, W // 8. They are passed in by setting
embeddings.position_embeddings to them (and embeddings.image_size to the
input's, which ViTEmbeddings checks when interpolate_pos_encoding=False);
ViTEmbeddings then adds them to cat(cls, patches), as is asserted.

Checks (asserted): the converted hub file equals the hub state dict; this
script's own hub-layout forward (hub_keys) matches ViTModel's keys at
224 x 224 within 1e-5 relative in float32 and at every pair's size; the same
forward in float64 (weights, position embeddings and network in float64, on
the float32 preprocessed inputs) gives a structure distance within 1e-6
relative of the float32 pipeline's.

Made with torch 2.15.0, torchvision 0.29.2, transformers 5.24.0, safetensors
0.8.0, numpy 2.4.6, Pillow 13.0.0, Python 3.11.7 (recorded in refs.json's
"dino" entry and the reference file's metadata), on one CPU thread; the
output is the same bytes on every run with these versions.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import PIL
import safetensors
import torch
import torch.nn.functional as F
import torchvision
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms
from transformers import ViTConfig, ViTModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_metric_weights import write_safetensors  # noqa: E402  (deterministic header)

DIR = "kernels-tests/fixtures/metrics"
MODEL_DIR = os.path.join(DIR, "dino-tiny")
HUB_FILE = os.path.join(DIR, "dino-tiny-hub.safetensors")
REF_FILE = os.path.join(DIR, "dino-tiny-ref.safetensors")
REFS = os.path.join(DIR, "refs.json")
CONVERTER = "tools/convert_metric_weights.py"
STAGED_PAIRS = ("big", "wide")

HEADS = 4
EPS = 1e-6
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIM_EPS = 1e-8

VERSIONS = {
    "numpy": np.__version__,
    "pillow": PIL.__version__,
    "python": platform.python_version(),
    "safetensors": safetensors.__version__,
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
    "transformers": transformers.__version__,
}


# ---------------------------------------------------------------------------
# The model


def build_model():
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
        patch_size=8, image_size=224, num_channels=3, layer_norm_eps=EPS, hidden_act="gelu",
        qkv_bias=True,
    )
    model = ViTModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.normal_(0.0, 0.2)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
                m.bias.normal_(0.0, 0.1)
        model.embeddings.cls_token.normal_(0.0, 0.5)
        model.embeddings.position_embeddings.normal_(0.0, 0.5)
    model.eval()
    return model


def hub_state_dict(tf):
    """The torch-hub layout of a transformers-layout (on-disk names) state dict."""
    L = 1 + max(int(k.split(".")[2]) for k in tf if k.startswith("encoder.layer."))
    hub = {
        "cls_token": tf["embeddings.cls_token"],
        "pos_embed": tf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": tf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": tf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": tf["layernorm.weight"],
        "norm.bias": tf["layernorm.bias"],
    }
    for i in range(L):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            hub[d + "norm1." + p] = tf[s + "layernorm_before." + p]
            hub[d + "attn.qkv." + p] = torch.cat(
                [tf[s + f"attention.attention.{n}.{p}"] for n in ("query", "key", "value")], dim=0
            )
            hub[d + "attn.proj." + p] = tf[s + "attention.output.dense." + p]
            hub[d + "norm2." + p] = tf[s + "layernorm_after." + p]
            hub[d + "mlp.fc1." + p] = tf[s + "intermediate.dense." + p]
            hub[d + "mlp.fc2." + p] = tf[s + "output.dense." + p]
    assert len(hub) == len(tf) - 4 * L, (len(hub), len(tf))  # q, k, v fused
    return {k: v.contiguous() for k, v in hub.items()}


# ---------------------------------------------------------------------------
# The hub's semantics, written out


def hub_pos_embed(pe, h, w, patch):
    """facebookresearch/dino's interpolate_pos_encoding for an input h x w."""
    n = pe.shape[1] - 1
    g = int(round(n ** 0.5))
    gh, gw = h // patch, w // patch
    if gh * gw == n and h == w:
        return pe
    d = pe.shape[-1]
    grid = F.interpolate(
        pe[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2),
        scale_factor=((gh + 0.1) / g, (gw + 0.1) / g),
        mode="bicubic",
    )
    assert grid.shape[-2:] == (gh, gw), (grid.shape, gh, gw)
    return torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], dim=1)


def hub_keys(sd, x, heads=HEADS, eps=EPS, dtype=torch.float32):
    """The last block's keys (T, D) of the hub ViT `sd` on x (1, 3, H, W)."""
    w = {k: v.to(dtype) for k, v in sd.items()}
    x = x.to(dtype)
    d = w["cls_token"].shape[-1]
    patch = w["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    t = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    t = torch.cat([w["cls_token"], t.flatten(2).transpose(1, 2)], dim=1)
    t = t + hub_pos_embed(w["pos_embed"], x.shape[2], x.shape[3], patch)
    n_tok = t.shape[1]
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (d,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps)
        qkv = F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"])
        if i == depth - 1:
            # reshape (T, 3, heads, D/heads), the k part, heads concatenated.
            return qkv.reshape(n_tok, 3, heads, d // heads)[:, 1].reshape(n_tok, d)
        q, k, v = qkv.reshape(1, n_tok, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(1, n_tok, d)
        t = t + F.linear(o, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])),
                     w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
        t = t + h
    raise AssertionError("no blocks")


# ---------------------------------------------------------------------------
# The benchmark's pipeline, on transformers' ViTModel


def load_rgb(name):
    img = Image.open(os.path.join(DIR, name))
    assert img.mode == "RGB", (name, img.mode)
    return np.array(img)


def preprocess(rgb):
    x = torch.from_numpy(np.transpose(rgb.astype(np.float32), (2, 0, 1)).copy()).unsqueeze(0)
    t = transforms.Compose([transforms.Resize(224, max_size=480), transforms.Normalize(MEAN, STD)])
    return t(x).contiguous()


def tf_keys(model, x):
    """(keys (T, D), position embeddings added (1, T, D)) of ViTModel on x."""
    emb = model.embeddings
    h, w = x.shape[2], x.shape[3]
    patch = emb.patch_size
    original_pe, original_size = emb.position_embeddings, emb.image_size
    pe = hub_pos_embed(original_pe.detach(), h, w, patch).clone()
    got = {}
    hooks = [
        model.layers[-1].attention.k_proj.register_forward_hook(lambda m, i, o: got.__setitem__("k", o)),
        emb.register_forward_hook(lambda m, i, o: got.__setitem__("emb", o)),
    ]
    try:
        emb.position_embeddings = torch.nn.Parameter(pe, requires_grad=False)
        emb.image_size = (h, w)
        with torch.no_grad():
            model(pixel_values=x, interpolate_pos_encoding=False)
    finally:
        for hk in hooks:
            hk.remove()
        emb.position_embeddings, emb.image_size = original_pe, original_size
    # What ViTEmbeddings added: cat(cls, conv patches) + our position embeddings.
    with torch.no_grad():
        proj = emb.patch_embeddings.projection
        want = torch.cat([emb.cls_token, proj(x).flatten(2).transpose(1, 2)], dim=1) + pe
    assert torch.equal(got["emb"], want), "ViTEmbeddings did not add the given position embeddings"
    k = got["k"]
    assert k.shape == (1, pe.shape[1], pe.shape[2]), k.shape
    return k[0], pe


def self_sim(k):
    """PIE-Bench's attn_cosine_sim on the keys (T, D)."""
    norm = k.norm(dim=1, keepdim=True)
    factor = torch.clamp(norm @ norm.T, min=SIM_EPS)
    return (k @ k.T) / factor


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------


def file_bytes(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in sorted(os.listdir(path)))
    return os.path.getsize(path)


def main():
    if not (os.path.isfile("Cargo.toml") and os.path.isfile(CONVERTER)):
        sys.exit("run from the repository root")
    torch.set_num_threads(1)

    model = build_model()
    model.set_attn_implementation("eager")

    # 1. The transformers layout.
    if os.path.isdir(MODEL_DIR):
        shutil.rmtree(MODEL_DIR)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    assert sorted(os.listdir(MODEL_DIR)) == ["config.json", "model.safetensors"], os.listdir(MODEL_DIR)
    tf_sd = load_file(os.path.join(MODEL_DIR, "model.safetensors"))
    print(f"{MODEL_DIR}/model.safetensors keys:")
    for k in sorted(tf_sd):
        print(f"  {k} {tuple(tf_sd[k].shape)}")
    for k in ("embeddings.cls_token", "embeddings.position_embeddings",
              "encoder.layer.1.attention.attention.key.weight", "encoder.layer.1.attention.output.dense.bias",
              "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.dense.weight",
              "encoder.layer.1.layernorm_before.weight", "layernorm.bias"):
        assert k in tf_sd, f"{k} not in the saved file"
    assert torch.equal(tf_sd["encoder.layer.1.attention.attention.key.weight"], model.layers[1].attention.k_proj.weight)

    # 2. The hub layout, through the converter.
    hub_sd = hub_state_dict(tf_sd)
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "dino_tiny_hub.pth")
        torch.save(hub_sd, pth)
        wrapped = os.path.join(tmp, "dino_tiny_train.pth")
        torch.save({"teacher": {"module.backbone." + k: v for k, v in hub_sd.items()},
                    "student": {}, "epoch": 0}, wrapped)
        out2 = os.path.join(tmp, "wrapped.safetensors")
        if os.path.exists(HUB_FILE):
            os.remove(HUB_FILE)
        for src, dst in ((pth, HUB_FILE), (wrapped, out2)):
            cmd = [sys.executable, CONVERTER, "--kind", "dino", "--heads", str(HEADS), src, dst]
            r = subprocess.run(cmd, capture_output=True, text=True)
            print(f"$ {' '.join(cmd[1:])}\n{r.stdout}{r.stderr}".replace(tmp, "$TMP"), end="")
            assert r.returncode == 0, r.returncode
        with open(HUB_FILE, "rb") as a, open(out2, "rb") as b:
            assert a.read() == b.read(), "the wrapped checkpoint converted differently"
    hub_file = load_file(HUB_FILE)
    assert sorted(hub_file) == sorted(hub_sd)
    for k in hub_sd:
        assert hub_file[k].dtype == torch.float32 and torch.equal(hub_file[k], hub_sd[k]), k
    with safe_open(HUB_FILE, "pt") as f:
        meta = f.metadata()
    assert meta["heads"] == str(HEADS) and float(meta["eps"]) == EPS, meta
    print(f"{HUB_FILE}: {len(hub_file)} tensors equal to the hub state dict, metadata {meta}")

    # The hub forward against ViTModel at 224 x 224.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 224, 224, generator=g) * 2.0
    k_tf, _ = tf_keys(model, x)
    k_hub = hub_keys(hub_file, x)
    e = rel(k_hub, k_tf)
    print(f"hub-layout forward vs ViTModel at 224x224: keys max |diff| / max |k| = {e:.2e}")
    assert e < 1e-5, e

    # 3. The reference values.
    with open(REFS) as f:
        refs = json.load(f)
    staged, sizes, report = {}, {}, []
    for name in sorted(refs["pairs"]):
        p = refs["pairs"][name]
        src, tgt = load_rgb(p["src"]), load_rgb(p["tgt"])
        assert src.shape == (p["height"], p["width"], 3) and tgt.shape == src.shape
        xs, xt = preprocess(src), preprocess(tgt)
        h, w = xs.shape[2], xs.shape[3]
        gh, gw = h // 8, w // 8
        (ks, pes), (kt, _) = tf_keys(model, xs), tf_keys(model, xt)
        ss, st = self_sim(ks), self_sim(kt)
        sd32 = F.mse_loss(ss, st).item()
        # Own hub forward: float32 keys, and the float64 cross-check.
        e32 = max(rel(hub_keys(hub_file, xs), ks), rel(hub_keys(hub_file, xt), kt))
        assert e32 < 1e-5, (name, e32)
        ss64 = self_sim(hub_keys(hub_file, xs, dtype=torch.float64))
        st64 = self_sim(hub_keys(hub_file, xt, dtype=torch.float64))
        sd64 = F.mse_loss(ss64, st64).item()
        r = abs(sd32 - sd64) / abs(sd64)
        report.append((name, (p["height"], p["width"]), (h, w), (gh, gw), ks.shape[0], sd32, sd64, r, e32))
        assert r < 1e-6, (name, sd32, sd64, r)
        p["metrics"]["structure_distance"] = sd32
        p["metrics"]["structure_distance_f64"] = sd64
        sizes[name] = {"image": [p["height"], p["width"]], "input": [h, w], "grid": [gh, gw],
                       "tokens": int(ks.shape[0])}
        if name in STAGED_PAIRS:
            staged[f"{name}/input"] = xs
            staged[f"{name}/pos_embed"] = pes
            staged[f"{name}/keys"] = ks

    refs["dino"] = {
        "generator": "tools/make_dino_fixtures.py",
        "model": "dino-tiny",
        "model_hub_layout": "dino-tiny-hub.safetensors",
        "intermediates": "dino-tiny-ref.safetensors",
        "architecture": "ViT, D 32, 2 layers, 4 heads, MLP 64, patch 8, image 224 (28x28 position grid), "
                        "LayerNorm eps 1e-6, exact GELU, qkv bias; random weights",
        "metric": "structure_distance: PIE-Bench's (Resize(224, max_size=480) bilinear antialias and "
                  "Normalize on 0..255 values; last block's keys; cosine self-similarity, clamp 1e-8; "
                  "mse_loss), float32 on ViTModel with the hub's bicubic position-embedding "
                  "interpolation; structure_distance_f64: own hub-layout forward in float64",
        "input_sizes": {n: s["input"] for n, s in sizes.items()},
        "versions": VERSIONS,
    }
    before = os.path.getsize(REFS)
    text = json.dumps(refs, sort_keys=True, indent=1) + "\n"
    with open(REFS, "w") as f:
        f.write(text)
    # What this script adds to refs.json (its keys removed again).
    bare = json.loads(text)
    bare.pop("dino")
    for p in bare["pairs"].values():
        p["metrics"].pop("structure_distance")
        p["metrics"].pop("structure_distance_f64")
    refs_added = len(text.encode()) - len((json.dumps(bare, sort_keys=True, indent=1) + "\n").encode())

    # 4. Intermediates.
    staged = {k: v.detach().to(torch.float32).contiguous() for k, v in staged.items()}
    meta = {"generator": "tools/make_dino_fixtures.py", "sizes": json.dumps(sizes, sort_keys=True),
            "versions": json.dumps(VERSIONS, sort_keys=True)}
    meta.update({k: v for k, v in VERSIONS.items()})
    write_safetensors(REF_FILE, staged, meta)
    back = load_file(REF_FILE)
    assert all(torch.equal(back[k], staged[k]) for k in staged)

    # 5. Report.
    print("\npair       image      ViT input  grid    T     structure_distance  float64              rel       hub f32 keys")
    for name, img, inp, grid, t, sd32, sd64, r, e32 in report:
        print(f"{name:10} {img[0]:>3}x{img[1]:<5} {inp[0]}x{inp[1]:<5} {grid[0]}x{grid[1]:<4} {t:<5} "
              f"{sd32!r:<19} {sd64!r:<20} {r:.2e}  {e32:.2e}")
    print(f"\n{REF_FILE}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(staged.items())))
    total = 0
    for path in (MODEL_DIR, HUB_FILE, REF_FILE):
        n = file_bytes(path)
        total += n
        print(f"{path}: {n} bytes")
    print(f"{REFS}: +{refs_added} bytes (now {os.path.getsize(REFS)}, was {before} before this run)")
    total += refs_added
    print(f"total added: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
