#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the WGSL kernel tests.

Writes one safetensors file per kernel family into kernels-tests/fixtures/:

    gemm, conv2d, groupnorm, layernorm, softmax, attention, elementwise, misc

Contract (read by the Rust tests):
  * tensor names are "<case_name>/<tensor_name>", all float32, contiguous;
  * metadata "cases" is a JSON list of dicts, one per case, each with "name"
    plus the family's parameters (see the *_CASES tables below);
  * metadata also holds "generator", "torch", "python", "seed" (the base seed),
    "case_seeds" (JSON {case_name: seed}) and "size_mode" ("default"|"full").

Inputs are drawn as float32 after torch.manual_seed(per-case seed); references
are computed in float64 from those float32 inputs and cast to float32. The one
exception is the timestep embedding, computed in float32 by diffusers' own
get_timestep_embedding exactly as the UNet runs it.

Size: the real Stable Diffusion shapes of some cases (e.g. a 2560->1280 3x3
conv weight is 118 MB) do not fit the ~12 MB budget of the committed folder.
By default those cases are shrunk (see REDUCE): the large, characteristic
dimension (K, C_in, N, L_k, ...) is kept and the others are cut. Run with
--full --out DIR to write the exact real-model shapes (about 290 MB) to
another folder; never commit those.

Usage:  python tools/make_kernel_fixtures.py [--full] [--out DIR]
"""

import argparse
import hashlib
import json
import math
import os
import platform
import struct
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

BASE_SEED = 20240611
GENERATOR = "tools/make_kernel_fixtures.py"
FAMILIES = ["gemm", "conv2d", "groupnorm", "layernorm", "softmax", "attention", "elementwise", "misc"]

# ---------------------------------------------------------------------------
# Case tables: (name, params). Param keys and their order follow the contract.
# ---------------------------------------------------------------------------


def G(batch, m, n, k, b_layout="nk", b_batched=False, bias=False, act="none", residual=False):
    return dict(batch=batch, m=m, n=n, k=k, b_layout=b_layout, b_batched=b_batched, bias=bias, act=act,
                residual=residual)


GEMM_CASES = [
    ("square64", G(1, 64, 64, 64)),
    ("clip_proj", G(1, 77, 768, 768, bias=True)),
    ("kn_odd", G(2, 33, 47, 29, b_layout="kn")),
    ("tiny", G(1, 1, 5, 3, bias=True)),
    ("kn_batched", G(3, 65, 130, 67, b_layout="kn", b_batched=True)),
    ("silu_320", G(1, 256, 320, 320, bias=True, act="silu")),
    ("k2560", G(1, 64, 1280, 2560, bias=True)),
    ("geglu", G(1, 100, 96, 80, bias=True, act="geglu")),
    ("quick_gelu", G(1, 77, 64, 128, bias=True, act="quick_gelu")),
    ("gelu_residual", G(2, 50, 70, 90, bias=True, act="gelu", residual=True)),
    ("residual_1280", G(1, 16, 1280, 640, bias=True, residual=True)),
    ("n2560", G(1, 7, 2560, 1280, bias=True)),
    ("odd_129", G(1, 129, 31, 257, bias=True)),
]


def C(batch, cin, cout, h, w, k, stride=1, pad=(1, 1, 1, 1), residual=False):
    return dict(batch=batch, cin=cin, cout=cout, h=h, w=w, k=k, stride=stride, pad=list(pad), residual=residual)


CONV2D_CASES = [
    ("basic", C(1, 4, 8, 8, 8, 3)),
    ("unet_down", C(1, 8, 8, 8, 8, 3, stride=2)),
    ("vae_down", C(1, 8, 8, 8, 8, 3, stride=2, pad=(0, 1, 0, 1))),
    ("pointwise", C(2, 16, 24, 5, 7, 1, pad=(0, 0, 0, 0))),
    ("c320", C(1, 320, 320, 8, 8, 3)),
    ("c640", C(1, 640, 640, 4, 4, 3)),
    ("c1280", C(1, 1280, 1280, 4, 4, 3)),
    ("c2560_residual", C(1, 2560, 1280, 4, 4, 3, residual=True)),
    ("shortcut_2560", C(1, 2560, 1280, 4, 4, 1, pad=(0, 0, 0, 0))),
    ("odd", C(1, 5, 7, 7, 9, 3)),
    ("batch2_residual", C(2, 3, 6, 6, 10, 3, residual=True)),
    ("conv_in", C(1, 4, 320, 16, 16, 3)),
    ("conv_out", C(1, 320, 4, 8, 8, 3)),
    ("down_640_1280", C(1, 640, 1280, 8, 8, 3, stride=2)),
]


def GN(batch, c, h, w, groups, eps=1e-5, silu=False):
    return dict(batch=batch, c=c, h=h, w=w, groups=groups, eps=eps, silu=silu)


GROUPNORM_CASES = [
    ("basic", GN(2, 32, 8, 8, 8)),
    ("c320_silu", GN(1, 320, 4, 4, 32, silu=True)),
    ("c640_silu", GN(1, 640, 3, 5, 32, silu=True)),
    ("c2560", GN(1, 2560, 2, 2, 32)),
    ("one_pixel", GN(1, 1280, 1, 1, 32)),
    ("vae_silu", GN(1, 128, 8, 8, 32, eps=1e-6, silu=True)),
    ("odd", GN(1, 12, 7, 9, 4, eps=1e-6)),
    ("vae_batch2", GN(2, 64, 16, 16, 32, eps=1e-6)),
]


def LN(rows, dim, eps=1e-5):
    return dict(rows=rows, dim=dim, eps=eps)


LAYERNORM_CASES = [
    ("clip_l", LN(77, 768)),
    ("sd2_clip", LN(154, 1024)),
    ("small", LN(5, 32)),
    ("d320", LN(300, 320)),
    ("d1280", LN(10, 1280)),
    ("odd", LN(3, 33)),
]

SOFTMAX_CASES = [
    ("clip", dict(rows=4, cols=77)),
    ("single", dict(rows=1, cols=1)),
    ("long", dict(rows=16, cols=4096)),
    ("odd", dict(rows=7, cols=100)),
    ("cols1025", dict(rows=3, cols=1025)),
]


def A(batch, heads, lq, lk, head_dim, causal=False):
    return dict(batch=batch, heads=heads, lq=lq, lk=lk, head_dim=head_dim, causal=causal,
                scale=1.0 / math.sqrt(head_dim))


ATTENTION_CASES = [
    ("basic", A(1, 2, 16, 16, 8)),
    ("cross_d40", A(2, 8, 64, 77, 40)),
    ("sd2_cross", A(1, 5, 256, 77, 64)),
    ("self_4096", A(1, 1, 4096, 4096, 40)),
    ("self_d80", A(1, 2, 1024, 1024, 80)),
    ("self_d160", A(1, 1, 256, 256, 160)),
    ("single_token", A(1, 4, 1, 1, 64)),
    ("clip_l_causal", A(2, 12, 77, 77, 64, causal=True)),
    ("sd2_clip_causal", A(1, 16, 77, 77, 64, causal=True)),
    ("odd", A(1, 3, 33, 45, 16)),
    ("tiny", A(2, 2, 5, 3, 4)),
    ("heads20", A(1, 20, 64, 77, 64)),
    ("causal_300", A(1, 1, 300, 300, 8, causal=True)),
    # The VAE's mid-block attention: one head of 512 (the score-matrix path).
    ("vae_mid_d512", A(1, 1, 64, 64, 512)),
    ("vae_d512_odd", A(2, 1, 19, 19, 512)),
]

ELEMENTWISE_CASES = [
    ("silu", dict(op="silu", shape=[2, 5, 7])),
    ("gelu", dict(op="gelu", shape=[1000])),
    ("quick_gelu", dict(op="quick_gelu", shape=[3, 77])),
    ("scale", dict(op="scale", shape=[4, 9], alpha=0.18215)),
    ("add_same", dict(op="add", shape=[2, 3, 4, 5], b_shape=[2, 3, 4, 5])),
    ("add_temb", dict(op="add", shape=[2, 6, 4, 5], b_shape=[2, 6, 1, 1])),
    ("add_channel", dict(op="add", shape=[1, 6, 4, 5], b_shape=[1, 6, 1, 1])),
    ("add_lastdim", dict(op="add", shape=[2, 7, 10], b_shape=[1, 1, 10])),
    ("mul_same", dict(op="mul", shape=[3, 11], b_shape=[3, 11])),
]

MISC_CASES = [
    ("upsample_a", dict(op="upsample2x", shape=[1, 3, 4, 5])),
    ("upsample_b", dict(op="upsample2x", shape=[2, 8, 1, 1])),
    ("concat_a", dict(op="concat", a_shape=[1, 4, 3, 3], b_shape=[1, 6, 3, 3])),
    ("concat_b", dict(op="concat", a_shape=[2, 5, 2, 7], b_shape=[2, 3, 2, 7])),
    ("transpose_a", dict(op="transpose", shape=[2, 5, 7])),
    ("transpose_b", dict(op="transpose", shape=[1, 320, 64])),
    ("timestep_unet", dict(op="timestep", dim=320, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000)),
    ("timestep_32", dict(op="timestep", dim=32, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000)),
    ("timestep_8", dict(op="timestep", dim=8, flip_sin_to_cos=False, freq_shift=1.0, max_period=10000)),
]

# Default-mode overrides that keep the committed folder under ~12 MB. Each keeps
# the dimension that makes the case interesting and cuts the others.
REDUCE = {
    "gemm": {
        "clip_proj": dict(n=64),              # K=768, M=77 kept
        "silu_320": dict(m=32),               # N=K=320 kept
        "k2560": dict(m=8, n=32),             # K=2560 kept
        "residual_1280": dict(k=32),          # N=1280 kept
        "n2560": dict(k=24),                  # N=2560 kept
    },
    "conv2d": {
        "c320": dict(cout=16),                # C_in=320 kept
        "c640": dict(cout=12),                # C_in=640 kept
        "c1280": dict(cout=6),                # C_in=1280 kept
        "c2560_residual": dict(cout=4),       # C_in=2560 kept
        "shortcut_2560": dict(cout=16),       # C_in=2560 kept
        "down_640_1280": dict(cout=8),        # C_in=640, 8x8, stride 2 kept
    },
    "layernorm": {
        "sd2_clip": dict(rows=12),            # dim=1024 kept
        "d320": dict(rows=64),                # dim=320 kept
    },
    "softmax": {
        "long": dict(rows=6),                 # cols=4096 kept, all three row classes twice
    },
    "attention": {
        "cross_d40": dict(lq=16),             # batch 2, 8 heads x d40, lk=77 kept
        "sd2_cross": dict(lq=32),             # 5 heads x d64, lk=77 kept
        "self_4096": dict(lq=16),             # lk=4096 (a 16 KiB f32 score row) and d40 kept
        "self_d80": dict(lq=48, lk=200),      # 2 heads x d80 kept
        "self_d160": dict(lq=32),             # d160, lk=256 kept
        "clip_l_causal": dict(heads=2),       # batch 2, 77x77 causal, d64 kept
        "sd2_clip_causal": dict(heads=4),     # 77x77 causal, d64 kept
        "heads20": dict(lq=8, lk=24),         # 20 heads x d64 kept
    },
}

# ---------------------------------------------------------------------------
# Builders: params -> dict of float32 tensors (inputs + "out").
# ---------------------------------------------------------------------------


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def f32(t):
    return t.to(torch.float32).contiguous()


def act_fn(y, act):
    if act == "none":
        return y
    if act == "gelu":
        return F.gelu(y, approximate="none")
    if act == "quick_gelu":
        return y * torch.sigmoid(1.702 * y)
    if act == "silu":
        return y * torch.sigmoid(y)
    if act == "geglu":
        h, g = y.chunk(2, dim=-1)
        return h * F.gelu(g, approximate="none")
    raise ValueError(act)


def build_gemm(p):
    batch, m, n, k = p["batch"], p["m"], p["n"], p["k"]
    nb = 2 * n if p["act"] == "geglu" else n
    bshape = (nb, k) if p["b_layout"] == "nk" else (k, nb)
    if p["b_batched"]:
        bshape = (batch,) + bshape
    t = {}
    t["a"] = randn(batch, m, k)
    t["b"] = randn(*bshape) / math.sqrt(k)  # keeps y ~ O(1) so activations see their nonlinear range
    if p["bias"]:
        t["bias"] = randn(nb)
    if p["residual"]:
        t["residual"] = randn(batch, m, n)
    a, b = t["a"].double(), t["b"].double()
    bt = b.transpose(-1, -2) if p["b_layout"] == "nk" else b
    y = torch.matmul(a, bt)
    if p["bias"]:
        y = y + t["bias"].double()
    y = act_fn(y, p["act"])
    if p["residual"]:
        y = y + t["residual"].double()
    assert y.shape == (batch, m, n)
    t["out"] = y
    return t


def build_conv2d(p):
    b, cin, cout, h, w, k, s = p["batch"], p["cin"], p["cout"], p["h"], p["w"], p["k"], p["stride"]
    top, bottom, left, right = p["pad"]
    t = {}
    t["x"] = randn(b, cin, h, w)
    t["weight"] = randn(cout, cin, k, k) / math.sqrt(cin * k * k)
    t["bias"] = randn(cout)
    ho = (h + top + bottom - k) // s + 1
    wo = (w + left + right - k) // s + 1
    if p["residual"]:
        t["residual"] = randn(b, cout, ho, wo)
    y = F.conv2d(F.pad(t["x"].double(), (left, right, top, bottom)), t["weight"].double(), t["bias"].double(),
                 stride=s)
    if p["residual"]:
        y = y + t["residual"].double()
    assert y.shape == (b, cout, ho, wo), (y.shape, ho, wo)
    t["out"] = y
    return t


def norm_inputs(x_shape, c):
    # Nonzero mean and non-unit scale (catches one-pass variance bugs); gamma/beta
    # clearly distinct (catches a swap).
    x = randn(*x_shape) * 2.0 + 3.0
    weight = 1.0 + 0.5 * randn(c)
    bias = 0.5 * randn(c)
    return x, weight, bias


def build_groupnorm(p):
    t = {}
    t["x"], t["weight"], t["bias"] = norm_inputs((p["batch"], p["c"], p["h"], p["w"]), p["c"])
    y = F.group_norm(t["x"].double(), p["groups"], t["weight"].double(), t["bias"].double(), p["eps"])
    if p["silu"]:
        y = F.silu(y)
    t["out"] = y
    return t


def build_layernorm(p):
    t = {}
    t["x"], t["weight"], t["bias"] = norm_inputs((p["rows"], p["dim"]), p["dim"])
    t["out"] = F.layer_norm(t["x"].double(), (p["dim"],), t["weight"].double(), t["bias"].double(), p["eps"])
    return t


def build_softmax(p):
    rows, cols = p["rows"], p["cols"]
    x = randn(rows, cols)
    # Row classes: moderate; large positive (exp overflows without max subtraction);
    # large negative (exp underflows to 0 without max subtraction). A single row is large.
    for r in range(rows):
        cls = 1 if rows == 1 else r % 3
        if cls == 0:
            x[r] = x[r] * 2.0
        elif cls == 1:
            x[r] = x[r] * 10.0 + 50.0
        else:
            x[r] = x[r] * 10.0 - 100.0
    return {"x": x, "out": torch.softmax(x.double(), dim=-1)}


def build_attention(p):
    b, hds, lq, lk, d = p["batch"], p["heads"], p["lq"], p["lk"], p["head_dim"]
    t = {}
    t["q"] = randn(b, lq, hds * d) * 1.5
    t["k"] = randn(b, lk, hds * d) * 1.5
    t["v"] = randn(b, lk, hds * d)

    def split(x, l):
        return x.double().reshape(b, l, hds, d).permute(0, 2, 1, 3)

    q, k, v = split(t["q"], lq), split(t["k"], lk), split(t["v"], lk)
    s = torch.matmul(q, k.transpose(-1, -2)) * p["scale"]
    if p["causal"]:
        i = torch.arange(lq)[:, None]
        j = torch.arange(lk)[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    o = torch.matmul(torch.softmax(s, dim=-1), v)
    t["out"] = o.permute(0, 2, 1, 3).reshape(b, lq, hds * d)
    return t


def build_elementwise(p):
    op = p["op"]
    t = {}
    if op in ("silu", "gelu", "quick_gelu"):
        t["a"] = randn(*p["shape"]) * 2.0  # widen so the tails of the activations are exercised
        t["out"] = act_fn(t["a"].double(), op)
    elif op == "scale":
        t["a"] = randn(*p["shape"])
        t["out"] = t["a"].double() * p["alpha"]
    elif op in ("add", "mul"):
        t["a"] = randn(*p["shape"])
        t["b"] = randn(*p["b_shape"])
        a, bb = t["a"].double(), t["b"].double()
        t["out"] = a + bb if op == "add" else a * bb
        assert list(t["out"].shape) == p["shape"]
    else:
        raise ValueError(op)
    return t


def build_misc(p):
    op = p["op"]
    t = {}
    if op == "upsample2x":
        t["x"] = randn(*p["shape"])
        t["out"] = F.interpolate(t["x"], scale_factor=2.0, mode="nearest")
    elif op == "concat":
        t["a"] = randn(*p["a_shape"])
        t["b"] = randn(*p["b_shape"])
        t["out"] = torch.cat([t["a"], t["b"]], 1)
    elif op == "transpose":
        t["x"] = randn(*p["shape"])
        t["out"] = t["x"].transpose(1, 2)
    elif op == "timestep":
        from diffusers.models.embeddings import get_timestep_embedding

        t["t"] = torch.tensor([0, 1, 21, 500, 981, 999], dtype=torch.float32)
        # float32 on purpose: this is the function the UNet runs.
        t["out"] = get_timestep_embedding(t["t"], p["dim"], flip_sin_to_cos=p["flip_sin_to_cos"],
                                          downscale_freq_shift=p["freq_shift"], max_period=p["max_period"])
        assert t["out"].dtype == torch.float32
    else:
        raise ValueError(op)
    return t


BUILDERS = {
    "gemm": (GEMM_CASES, build_gemm),
    "conv2d": (CONV2D_CASES, build_conv2d),
    "groupnorm": (GROUPNORM_CASES, build_groupnorm),
    "layernorm": (LAYERNORM_CASES, build_layernorm),
    "softmax": (SOFTMAX_CASES, build_softmax),
    "attention": (ATTENTION_CASES, build_attention),
    "elementwise": (ELEMENTWISE_CASES, build_elementwise),
    "misc": (MISC_CASES, build_misc),
}


def case_params(family, name, params, full):
    p = dict(params)
    if not full:
        p.update(REDUCE.get(family, {}).get(name, {}))
    if family == "attention":
        p["scale"] = 1.0 / math.sqrt(p["head_dim"])
    return p


def make_family(fi, family, full):
    cases, build = BUILDERS[family]
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names), family
    unknown = set(REDUCE.get(family, {})) - set(names)
    assert not unknown, (family, unknown)
    tensors, meta_cases, seeds = {}, [], {}
    for ci, (name, params) in enumerate(cases):
        p = case_params(family, name, params, full)
        seed = BASE_SEED + 1000 * fi + ci
        torch.manual_seed(seed)
        for tname, tensor in build(p).items():
            out = f32(tensor)
            assert torch.isfinite(out).all(), (family, name, tname)
            tensors[f"{name}/{tname}"] = out
        meta_cases.append({"name": name, **p})
        seeds[name] = seed
    meta = {
        "cases": json.dumps(meta_cases),
        "generator": GENERATOR,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": str(BASE_SEED),
        "case_seeds": json.dumps(seeds),
        "size_mode": "full" if full else "default",
    }
    return tensors, meta


def canonicalize_header(path):
    """Make the file byte-deterministic.

    safetensors serializes __metadata__ from a hash map, so its key order changes
    between runs. Rewrite the header JSON in place with __metadata__ first and its
    keys sorted, tensor entries in data-offset order, in the same compact form
    (same length, since only the order changes). Tensor data is untouched.
    """
    with open(path, "r+b") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        raw = fh.read(n)
        header = json.loads(raw.decode("utf-8"))
        meta = header.pop("__metadata__")
        ordered = {"__metadata__": {k: meta[k] for k in sorted(meta)}}
        for name in sorted(header, key=lambda k: (header[k]["data_offsets"], k)):
            info = header[name]
            ordered[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": info["data_offsets"]}
        new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert len(new) <= n, (path, len(new), n)
        new = new + b" " * (n - len(new))  # safetensors pads the header with spaces
        fh.seek(8)
        fh.write(new)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "kernels-tests", "fixtures"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output folder (default: kernels-tests/fixtures)")
    ap.add_argument("--full", action="store_true", help="exact real-model shapes (~290 MB; use another --out)")
    ap.add_argument("--only", nargs="*", choices=FAMILIES, help="only these families")
    args = ap.parse_args()
    if args.full and os.path.normpath(os.path.abspath(args.out)) == default_out:
        sys.exit("--full writes ~290 MB: pass --out to a folder outside the repository")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    total = 0
    for fi, family in enumerate(FAMILIES):
        if args.only and family not in args.only:
            continue
        tensors, meta = make_family(fi, family, args.full)
        path = os.path.join(args.out, f"{family}.safetensors")
        save_file(tensors, path, metadata=meta)
        canonicalize_header(path)
        os.chmod(path, 0o644)
        # Reload and check.
        with safe_open(path, framework="pt") as f:
            m = f.metadata()
            ncases = len(json.loads(m["cases"]))
            keys = list(f.keys())
            for key in keys:
                r = f.get_tensor(key)
                assert r.dtype == torch.float32 and torch.equal(r, tensors[key]), key
        size = os.path.getsize(path)
        total += size
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()[:16]
        print(f"{family + '.safetensors':26s} {size:>11,d} bytes  {ncases:3d} cases  {len(keys):4d} tensors  "
              f"sha256 {digest}")
    print(f"{'total':26s} {total:>11,d} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
