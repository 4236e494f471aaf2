#!/usr/bin/env python3
"""Build the tiny Stable Diffusion fixtures and their PyTorch references.

    /work/venv/bin/python tools/make_model_fixtures.py

Writes kernels-tests/fixtures/models/:
  sd15-tiny/                 diffusers folder, SD1.x structure, float32 weights
  sd2-tiny/                  diffusers folder, SD2.x structure, float16 "fp16" variant weights
  sd15-tiny.safetensors      the same weights in the original LDM single-file layout (f32)
  sd2-tiny.safetensors       idem (f16), OpenCLIP text-encoder layout
  sd15-tiny-ref.safetensors  references (float64 on one thread, stored as float32)
  sd2-tiny-ref.safetensors

Random weights, seeded; real CLIP BPE vocabulary (from open_clip's
bpe_simple_vocab_16e6.txt.gz). Needs torch, diffusers, transformers,
safetensors, numpy and the open_clip_torch wheel's vocabulary file (the
package need not import). Deterministic: rerunning rewrites identical files.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "kernels-tests" / "fixtures" / "models"
SEED = 20231
GENERATOR = "tools/make_model_fixtures.py"

PROMPTS = [
    "",
    "a photo of a cat",
    "A PHOTO of a Cat!!",
    "detailed!! painting, 4k.",
    "naïve café — ünïcödé ☃ 日本語",
    "numbers 1234567 and 3.14159",
    "don't you'll they're",
    "  lots   of\tspaces\n",
]
_LONG_WORDS = (
    "a quiet harbor at dawn with wooden fishing boats resting on calm silver water while gulls circle "
    "above old stone houses painted in faded blue and ochre and a lighthouse stands on the rocky point "
    "beyond the pier where nets are drying in the cool morning wind"
).split()
PROMPTS.append(" ".join(_LONG_WORDS[i % len(_LONG_WORDS)] for i in range(100)))
N_TEXT_REFS = 4  # text/<i> for prompts 0..3
SIZES = {"8x8": (8, 8), "16x16": (16, 16), "8x16": (8, 16)}
TIMESTEPS = [1, 981]

CLIP_BPE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"

SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 32, 32],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.18215,
)

UNET_COMMON = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 32, 64, 64],
    layers_per_block=2,
    cross_attention_dim=32,
    norm_num_groups=8,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    center_input_sample=False,
)

MODELS = {
    "sd15-tiny": dict(
        seed=SEED,
        pad_token="<|endoftext|>",
        text=dict(num_hidden_layers=2, hidden_act="quick_gelu"),
        unet=dict(attention_head_dim=8, use_linear_projection=False),
        dtype=torch.float32,
        variant=None,
    ),
    "sd2-tiny": dict(
        seed=SEED + 1000,
        pad_token="!",
        text=dict(num_hidden_layers=3, hidden_act="gelu"),
        unet=dict(attention_head_dim=[2, 2, 4, 4], use_linear_projection=True, upcast_attention=False),
        dtype=torch.float16,
        variant="fp16",
    ),
}


# --------------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """CLIP's own derivation (openai/CLIP simple_tokenizer.py)."""
    lines = gzip.open(CLIP_BPE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # lines 1..48894
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m.split()))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    assert len(merges) == 48894
    return {v: i for i, v in enumerate(vocab)}, merges


def write_tokenizer(d: Path, vocab: dict, merges: list[str], pad_token: str):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # transformers 5.x CLIPTokenizer.save_pretrained writes only tokenizer.json + tokenizer_config.json;
    # real SD folders ship vocab.json/merges.txt + these two small files, so we write them in that shape.
    tok_cfg = {
        "backend": "tokenizers",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    stm = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    (d / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- safetensors
_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.int64: "I64"}


def write_safetensors(path: Path, tensors: dict, metadata: dict):
    """Byte-deterministic safetensors writer (the library's writer orders __metadata__
    keys at random); tensors in name order, header keys sorted, header padded to 8 bytes."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, off = [], 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        b = t.numpy().tobytes() if t.dtype != torch.float16 else t.view(torch.int16).numpy().tobytes()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(str(path))
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


# --------------------------------------------------------------------------- perturbation
@torch.no_grad()
def perturb_norms(model: torch.nn.Module):
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            if m.weight is not None:
                m.weight.copy_(1.0 + 0.3 * torch.randn_like(m.weight))
            if m.bias is not None:
                m.bias.copy_(0.3 * torch.randn_like(m.bias))


@torch.no_grad()
def perturb_diffusers_attention(model: torch.nn.Module, qk_scale: float = 3.0):
    n = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.to_q.weight.mul_(qk_scale)
            m.to_k.weight.mul_(qk_scale)
            n += 1
    return n


@torch.no_grad()
def perturb_text(model: CLIPTextModel):
    emb = model.embeddings
    emb.token_embedding.weight.copy_(0.5 * torch.randn_like(emb.token_embedding.weight))
    emb.position_embedding.weight.copy_(0.5 * torch.randn_like(emb.position_embedding.weight))
    perturb_norms(model)
    for layer in model.encoder.layers:
        a = layer.self_attn
        a.q_proj.weight.mul_(3.0)
        a.k_proj.weight.mul_(3.0)
        # transformers initialises linear biases to 0: make them non-zero so bias paths are exercised.
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.out_proj, layer.mlp.fc1, layer.mlp.fc2):
            lin.bias.copy_(0.2 * torch.randn_like(lin.bias))


# --------------------------------------------------------------------------- building
def text_config(spec) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=spec["text"]["num_hidden_layers"],
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=spec["text"]["hidden_act"],
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        # the (legacy) ids real SD text_encoder/config.json files carry
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def save_text_encoder(model: CLIPTextModel, d: Path, dtype, variant):
    d.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    model.config.architectures = ["CLIPTextModel"]
    model.config.save_pretrained(d)
    sd = model.state_dict()
    # transformers >= 5.6 flattened CLIPTextModel (keys without "text_model."); real SD files have the prefix.
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v.detach().contiguous() for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    name = f"model.{variant}.safetensors" if variant else "model.safetensors"
    save_file(sd, str(d / name), metadata={"format": "pt"})
    return sd


def build_model(name: str, spec: dict, vocab, merges) -> Path:
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(spec["seed"])

    write_tokenizer(folder / "tokenizer", vocab, merges, spec["pad_token"])

    te = CLIPTextModel(text_config(spec)).float().eval()
    perturb_text(te)

    unet = UNet2DConditionModel(**UNET_COMMON, **spec["unet"]).float().eval()
    perturb_norms(unet)
    n_unet_attn = perturb_diffusers_attention(unet)

    vae = AutoencoderKL(**VAE).float().eval()
    perturb_norms(vae)
    n_vae_attn = perturb_diffusers_attention(vae)
    print(f"[{name}] attention layers perturbed: unet {n_unet_attn}, vae {n_vae_attn}")

    dtype, variant = spec["dtype"], spec["variant"]
    save_text_encoder(te, folder / "text_encoder", dtype, variant)
    unet.to(dtype).save_pretrained(folder / "unet", safe_serialization=True, variant=variant)
    vae.to(dtype).save_pretrained(folder / "vae", safe_serialization=True, variant=variant)
    sched = DDIMScheduler(**SCHEDULER)
    sched.save_pretrained(folder / "scheduler")

    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_config(folder)  # model_index.json
    return folder


# --------------------------------------------------------------------------- loading / checks
def load_components(folder: Path, variant):
    """Load every component back from disk (as a user of the folder would) and upcast to float64."""
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    te, info = CLIPTextModel.from_pretrained(
        folder / "text_encoder", variant=variant, attn_implementation="eager", output_loading_info=True,
        dtype=torch.float32,
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    assert not bad, f"text encoder loading info: {bad}"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant=variant, torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder / "vae", variant=variant, torch_dtype=torch.float32)
    te, unet, vae = te.double().eval(), unet.double().eval(), vae.double().eval()
    unet.set_attn_processor(AttnProcessor())
    vae.set_attn_processor(AttnProcessor())
    return tok, te, unet, vae


def check_loaded_equals_files(folder: Path, variant, te, unet, vae):
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    te_file = load_file(str(folder / "text_encoder" / f"model{suffix}"))
    te_sd = {"text_model." + k if not k.startswith("text_model.") else k: v for k, v in te.state_dict().items()
             if not k.endswith("position_ids")}
    for comp, file_sd, mod_sd in (
        ("text_encoder", te_file, te_sd),
        ("unet", load_file(str(folder / "unet" / f"diffusion_pytorch_model{suffix}")), unet.state_dict()),
        ("vae", load_file(str(folder / "vae" / f"diffusion_pytorch_model{suffix}")), vae.state_dict()),
    ):
        assert set(file_sd) == set(mod_sd), (comp, sorted(set(file_sd) ^ set(mod_sd))[:6])
        for k, v in file_sd.items():
            assert torch.equal(v.double(), mod_sd[k].double()), (comp, k)


def pipeline_sanity(folder: Path, variant):
    """diffusers itself can load the folder as a StableDiffusionPipeline."""
    kw = {"variant": variant} if variant else {}
    p = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, **kw)
    assert p.tokenizer.pad_token == json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"]
    return p


def verify_single_file(name: str, folder: Path, variant, single: Path, dtype):
    """(1) own inverse mapping: bit-exact round trip; (2) diffusers' from_single_file loader."""
    sd = load_file(str(single))
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    orig = {
        "unet": load_file(str(folder / "unet" / f"diffusion_pytorch_model{suffix}")),
        "vae": load_file(str(folder / "vae" / f"diffusion_pytorch_model{suffix}")),
        "text_encoder": load_file(str(folder / "text_encoder" / f"model{suffix}")),
    }
    back = ldm_layout.ldm_to_diffusers(sd, folder)
    for comp, o in orig.items():
        b = back[comp]
        assert set(o) == set(b), (comp, sorted(set(o) ^ set(b))[:6])
        for k in o:
            assert o[k].dtype == b[k].dtype and torch.equal(o[k], b[k]), (comp, k)
    assert all(v.dtype == dtype for v in sd.values()), "single-file dtype"
    print(f"[{name}] single file: own inverse mapping round-trips bit-exactly ({len(sd)} tensors)")

    # diffusers' own single-file loader, offline, configs from the local folder
    result = {}
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(single), config=str(folder), local_files_only=True, torch_dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
        for comp in ("unet", "vae", "text_encoder"):
            m = getattr(pipe, comp)
            msd = m.state_dict()
            if comp == "text_encoder":
                msd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in msd.items()
                       if not k.endswith("position_ids")}
            o = orig[comp]
            missing = sorted(set(o) - set(msd))
            extra = sorted(set(msd) - set(o))
            diff = [k for k in o if k in msd and not torch.equal(o[k], msd[k].to(o[k].dtype))]
            result[comp] = (missing, extra, diff)
        ok = all(not any(v) for v in result.values())
        print(f"[{name}] diffusers from_single_file: {'bit-exact match' if ok else result}")
        return "diffusers-ok" if ok else f"diffusers-mismatch {result}"
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}"
        print(f"[{name}] diffusers from_single_file failed: {msg[:600]}")
        return "diffusers-failed: " + msg[:300]


# --------------------------------------------------------------------------- references
def stats(t: torch.Tensor) -> str:
    t = t.double()
    return f"min {t.min().item():+.4f} max {t.max().item():+.4f} mean {t.mean().item():+.4f} std {t.std().item():.4f}"


@torch.no_grad()
def make_refs(name: str, spec: dict, folder: Path) -> dict:
    tok, te, unet, vae = load_components(folder, spec["variant"])
    check_loaded_equals_files(folder, spec["variant"], te, unet, vae)
    gen = torch.Generator().manual_seed(spec["seed"] + 7)
    refs: dict[str, torch.Tensor] = {}

    for i, p in enumerate(PROMPTS):
        ids = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77
        refs[f"ids/{i}"] = torch.tensor(ids, dtype=torch.int64)
    for i in range(N_TEXT_REFS):
        h = te(refs[f"ids/{i}"][None]).last_hidden_state
        assert h.dtype == torch.float64 and h.shape == (1, 77, 32)
        refs[f"text/{i}"] = h.float()

    ctx = torch.cat([refs["text/1"], refs["text/2"]], 0)  # float32 values
    refs["unet/context"] = ctx
    for s, (h, w) in SIZES.items():
        lat = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float32)
        refs[f"unet/{s}/latent"] = lat
        for t in TIMESTEPS:
            eps = unet(lat.double(), t, encoder_hidden_states=ctx.double()).sample
            assert eps.dtype == torch.float64
            refs[f"unet/{s}/eps_t{t}"] = eps.float()

    for s, (h, w) in SIZES.items():
        H, W = 8 * h, 8 * w
        coarse = torch.rand(1, 3, h, w, generator=gen, dtype=torch.float32) * 2 - 1
        img = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
        img = (img + 0.15 * torch.randn(1, 3, H, W, generator=gen, dtype=torch.float32)).clamp(-1, 1)
        refs[f"vae/{s}/image"] = img
        post = vae.encode(img.double()).latent_dist
        refs[f"vae/{s}/mean"] = post.mean.float()
        refs[f"vae/{s}/logvar"] = post.logvar.float()
        lat = torch.randn(1, 4, h, w, generator=gen, dtype=torch.float32)
        refs[f"vae/{s}/latent"] = lat
        refs[f"vae/{s}/decoded"] = vae.decode(lat.double()).sample.float()

    for k, v in refs.items():
        if v.dtype != torch.int64:
            assert torch.isfinite(v).all(), k
            assert v.std() > 1e-2 and v.abs().max() < 100, (k, stats(v))
    return refs


def attention_diagnostics(folder: Path, variant):
    """Max attention probability per attention layer on one UNet call (to show attention is not uniform)."""
    _, te, unet, _ = load_components(folder, variant)
    rec = []

    class Probe(AttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
            x = hidden_states if hidden_states.ndim == 3 else hidden_states.flatten(2).transpose(1, 2)
            if attn.norm_cross and encoder_hidden_states is not None:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            c = x if encoder_hidden_states is None else encoder_hidden_states
            q = attn.head_to_batch_dim(attn.to_q(x))
            kk = attn.head_to_batch_dim(attn.to_k(c))
            pr = attn.get_attention_scores(q, kk, None)
            rec.append((pr.shape[-1], pr.max(-1).values.mean().item()))
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *a, **k)

    unet.set_attn_processor(Probe())
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
    ctx = te(ids).last_hidden_state
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16, generator=g).double(), 500, encoder_hidden_states=ctx)
    return rec


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    print("versions:", versions)
    report = {}
    for name, spec in MODELS.items():
        folder = build_model(name, spec, vocab, merges)
        pipeline_sanity(folder, spec["variant"])

        single = OUT / f"{name}.safetensors"
        sd = ldm_layout.diffusers_to_ldm(folder, spec["variant"], "auto", seed=spec["seed"] + 3)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(single), metadata={"format": "pt"})
        report[name] = verify_single_file(name, folder, spec["variant"], single, spec["dtype"])

        refs = make_refs(name, spec, folder)
        meta = {
            "prompts": json.dumps(PROMPTS, ensure_ascii=False),
            "generator": GENERATOR,
            "seed": str(spec["seed"]),
            "model": name,
            **versions,
        }
        write_safetensors(OUT / f"{name}-ref.safetensors", refs, meta)

        print(f"[{name}] references:")
        for k, v in refs.items():
            if v.dtype == torch.int64:
                print(f"  {k:24s} {list(v.shape)} int64 {v[:min(12, len(v))].tolist()}...")
            else:
                print(f"  {k:24s} {list(v.shape)} {stats(v)}")
        diag = attention_diagnostics(folder, spec["variant"])
        print(f"[{name}] mean max-attention-prob per layer (keys, value): "
              + ", ".join(f"{n}:{p:.2f}" for n, p in diag))

    print("single-file verification:", json.dumps(report, indent=1))
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(OUT)}  {p.stat().st_size}")
    print(f"total {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
