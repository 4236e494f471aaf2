#!/usr/bin/env python3
"""End-to-end Plug-and-Play reference fixtures (PyTorch, float32, one thread).

    /work/venv/bin/python tools/reference_pnp.py

Writes kernels-tests/fixtures/pnp/:
  square.png, wide.png            deterministic RGB8 guidance images (64x64, 128x64)
  <case>.safetensors              per-case references (all tensors float32)

The algorithm is docs/ALGORITHM.md, "Stages" (the authors' diffusers implementation,
MichalGeyer/pnp-diffusers): VAE posterior mean * scaling_factor; DDIM inversion
with "" (no guidance) over the inversion grid ascending, keeping z_t; sampling on
a batch of 3 [source z_t | x, c_neg | x, c_pos] with (a) the residual-branch
output after conv2 of up_blocks[1].resnets[1] and (b) to_q / to_k outputs of attn1
in the 8 decoder transformer blocks of rows 1,2 replaced by row 0's, while
i < int(n * pnp_f_t) resp. int(n * pnp_attn_t); CFG; scheduler.step (eta 0);
vae.decode(x / scaling_factor), (img / 2 + 0.5).clamp(0, 1).

Injection is done with forward hooks on the conv2 / to_q / to_k modules, so the
rest of the arithmetic is diffusers' classic AttnProcessor and ResnetBlock2D
(the authors instead override the whole forward; same values up to rounding).

The same algorithm is also run in float64 (model.double(), same float32 inputs)
only to report the float32-vs-float64 difference of the final latents
(stored as metadata "f64_max_abs_diff"). Deterministic: rerunning rewrites
identical files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model_fixtures import write_safetensors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "kernels-tests" / "fixtures" / "models"
OUT = ROOT / "kernels-tests" / "fixtures" / "pnp"
GENERATOR = "tools/reference_pnp.py"
NEGATIVE = "ugly, blurry, black, low res, unrealistic"

VARIANTS = {"sd15-tiny": None, "sd2-tiny": "fp16", "sd2v-tiny": "fp16"}

CASES = {
    "sd15_square": dict(
        model="sd15-tiny", image="square.png", prompts=["a photo of a cat"], negative_prompt=NEGATIVE,
        inversion_prompt="", inversion_steps=10, steps=10, guidance=7.5, pnp_f_t=0.8, pnp_attn_t=0.5,
    ),
    "sd15_fine_inversion": dict(
        model="sd15-tiny", image="square.png", prompts=["a photo of a cat"], negative_prompt=NEGATIVE,
        inversion_prompt="", inversion_steps=20, steps=10, guidance=7.5, pnp_f_t=0.8, pnp_attn_t=0.5,
    ),
    "sd2_wide_two_prompts": dict(
        model="sd2-tiny", image="wide.png", prompts=["a watercolor painting of a house", "a photo of a dog!!"],
        negative_prompt=NEGATIVE, inversion_prompt="", inversion_steps=8, steps=8, guidance=7.5,
        pnp_f_t=0.5, pnp_attn_t=0.25,
    ),
    # The original PnP's negative-prompt schedule (MichalGeyer/plug-and-play):
    # base = a_i * e_uncond + (1 - a_i) * e_neg, a_i = alpha * schedule[i].
    "sd15_negative_schedule": dict(
        model="sd15-tiny", image="square.png", prompts=["a photo of a cat"], negative_prompt=NEGATIVE,
        inversion_prompt="", inversion_steps=10, steps=10, guidance=7.5, pnp_f_t=0.8, pnp_attn_t=0.5,
        negative_prompt_alpha=0.75, negative_prompt_schedule="linear",
    ),
    # PIE-Bench's "ddim+pnp" (cure-lab/PnPInversion, run_editing_pnp.py): the
    # source branch walks the DDIM reconstruction of the inverted noise under
    # the inversion prompt (no guidance), one step shifted as that runner
    # keeps it: the source row at t_i and the start take the latent step i
    # produced.
    "sd15_reconstruction": dict(
        model="sd15-tiny", image="square.png", prompts=["a photo of a cat"], negative_prompt=NEGATIVE,
        inversion_prompt="a photo of a house", inversion_steps=10, steps=10, guidance=7.5, pnp_f_t=0.8,
        pnp_attn_t=0.5, source_latents="reconstruction",
    ),
    # SD 2.x 768-style: v-prediction, attention upcast (sd2-tiny's weights).
    "sd2v_wide": dict(
        model="sd2v-tiny", image="wide.png", prompts=["a watercolor painting of a house"],
        negative_prompt=NEGATIVE, inversion_prompt="a photo", inversion_steps=8, steps=8, guidance=7.5,
        pnp_f_t=0.5, pnp_attn_t=0.25,
    ),
}

# decoder self-attention layers whose q/k are injected (the authors' res_dict)
QK_LAYERS = {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}


# --------------------------------------------------------------------------- guidance images
def make_image(width: int, height: int) -> np.ndarray:
    """Smooth gradients plus a few solid shapes; integer arithmetic only (deterministic)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    img = np.zeros((height, width, 3), dtype=np.int64)
    img[..., 0] = 30 + (200 * x) // max(width - 1, 1)
    img[..., 1] = 40 + (180 * y) // max(height - 1, 1)
    img[..., 2] = 220 - (160 * (x + y)) // max(width + height - 2, 1)
    # solid disc
    cx, cy, r = width // 3, height // 2, height // 5
    disc = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    img[disc] = (230, 200, 40)
    # solid rectangle
    rect = (x >= (2 * width) // 3 - 6) & (x < (2 * width) // 3 + 10) & (y >= height // 6) & (y < height // 6 + 14)
    img[rect] = (20, 30, 90)
    # solid triangle (lower right)
    tri = (y >= (3 * height) // 5) & (x >= width - 4 - (y - (3 * height) // 5) * 2) & (x < width - 4)
    img[tri] = (180, 40, 60)
    # thin white horizontal bar
    img[(y >= height - 8) & (y < height - 5) & (x >= 4) & (x < width // 2)] = (250, 250, 250)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in {"square.png": (64, 64), "wide.png": (128, 64)}.items():
        arr = make_image(w, h)
        Image.fromarray(arr, mode="RGB").save(OUT / name, format="PNG", optimize=False, compress_level=9)
        back = np.asarray(Image.open(OUT / name).convert("RGB"))
        assert back.shape == (h, w, 3) and np.array_equal(back, arr)


def load_image(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(OUT / name).convert("RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).to(torch.float32) / 255.0  # [H, W, 3]
    return t.permute(2, 0, 1)[None].contiguous()  # [1, 3, H, W]


# --------------------------------------------------------------------------- models
def write_v_model():
    """sd2v-tiny: sd2-tiny's weights and tokenizer (relative links) with the
    configs of an SD 2.x 768 checkpoint: prediction_type v_prediction and
    upcast_attention true."""
    src, dst = MODELS / "sd2-tiny", MODELS / "sd2v-tiny"
    for f in sorted(src.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(src)
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_symlink() or out.exists():
            out.unlink()
        if f.name in ("config.json", "scheduler_config.json", "model_index.json"):
            cfg = json.loads(f.read_text())
            if rel.parts[0] == "unet":
                cfg["upcast_attention"] = True
            if rel.parts[0] == "scheduler":
                cfg["prediction_type"] = "v_prediction"
            out.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            out.symlink_to(Path("..") / ".." / "sd2-tiny" / rel)


def load_model(model: str):
    folder = MODELS / model
    variant = VARIANTS[model]
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", variant=variant, attn_implementation="eager",
                                       dtype=torch.float32).float().eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant=variant,
                                                torch_dtype=torch.float32).float().eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", variant=variant, torch_dtype=torch.float32).float().eval()
    unet.set_attn_processor(AttnProcessor())
    vae.set_attn_processor(AttnProcessor())
    return folder, tok, te, unet, vae


class Injector:
    """Forward hooks that copy row 0's output into rows 1.. of a batch-3 (source|neg|pos) call
    (batch 4, source|neg|uncond|pos, with the negative-prompt schedule).

    conv2 of up_blocks[1].resnets[1] (the residual branch before the shortcut add and before
    the division by output_scale_factor) and to_q / to_k of the 8 decoder attn1 layers."""

    def __init__(self, unet: UNet2DConditionModel, rows: int = 3):
        self.rows = rows
        self.conv_on = False
        self.qk_on = False
        self.handles = []
        self.calls = {"conv": 0, "qk": 0}
        self.handles.append(unet.up_blocks[1].resnets[1].conv2.register_forward_hook(self._hook("conv")))
        for res, blocks in QK_LAYERS.items():
            for b in blocks:
                attn1 = unet.up_blocks[res].attentions[b].transformer_blocks[0].attn1
                assert not attn1.is_cross_attention
                self.handles.append(attn1.to_q.register_forward_hook(self._hook("qk")))
                self.handles.append(attn1.to_k.register_forward_hook(self._hook("qk")))
        assert len(self.handles) == 17

    def _hook(self, kind):
        def fn(module, inputs, output):
            if not (self.conv_on if kind == "conv" else self.qk_on):
                return None
            assert output.shape[0] % self.rows == 0
            sb = output.shape[0] // self.rows
            out = output.clone()
            for r in range(1, self.rows):
                out[r * sb:(r + 1) * sb] = output[:sb]
            self.calls[kind] += 1
            return out
        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def embed(tok, te, prompt: str, dtype) -> torch.Tensor:
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    return te(ids).last_hidden_state.to(dtype)


@torch.no_grad()
def run_case(case: dict, components, dtype, inject: bool = True) -> dict:
    folder, tok, te, unet, vae = components
    te, unet, vae = te.to(dtype), unet.to(dtype), vae.to(dtype)
    sf = vae.config.scaling_factor

    # Stage 1: encode (posterior mean * scaling factor)
    img = load_image(case["image"]).to(dtype)
    z0 = vae.encode(2 * img - 1).latent_dist.mean * sf

    # text
    c_inv = embed(tok, te, case["inversion_prompt"], dtype)
    c_src = embed(tok, te, "", dtype)
    c_neg = embed(tok, te, case["negative_prompt"], dtype)

    # Stage 2: DDIM inversion over the inversion grid, ascending
    inv_sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    inv_sched.set_timesteps(case["inversion_steps"])
    ac = inv_sched.alphas_cumprod  # float32 (diffusers keeps it so)
    inv_ts = list(reversed(inv_sched.timesteps))
    z = z0
    stored = {}
    for i, t in enumerate(inv_ts):
        a = ac[t]
        ap = ac[inv_ts[i - 1]] if i > 0 else inv_sched.final_alpha_cumprod
        mu, mu_prev = a ** 0.5, ap ** 0.5
        sigma, sigma_prev = (1 - a) ** 0.5, (1 - ap) ** 0.5
        eps = unet(z, t, encoder_hidden_states=c_inv).sample
        if inv_sched.config.prediction_type == "v_prediction":
            # eps from v at the timestep the UNet was given, as DDIMScheduler.step does
            eps = a ** 0.5 * eps + (1 - a) ** 0.5 * z
        x0 = (z - sigma_prev * eps) / mu_prev
        z = mu * x0 + sigma * eps
        stored[int(t)] = z

    # Stage 3: sampling with injection, one loop per target prompt
    sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(case["steps"])
    ts = list(sched.timesteps)
    n = case["steps"]
    n_f, n_qk = int(n * case["pnp_f_t"]), int(n * case["pnp_attn_t"])
    for t in ts:
        assert int(t) in stored, f"sampling timestep {int(t)} not in the inversion grid"
    source = stored
    if case.get("source_latents") == "reconstruction":
        rec_sched = DDIMScheduler.from_pretrained(folder / "scheduler")
        rec_sched.set_timesteps(n)
        x = stored[int(ts[0])]
        source = {}
        for t in ts:
            eps = unet(x, t, encoder_hidden_states=c_inv).sample
            x = rec_sched.step(eps, t, x, eta=0.0).prev_sample
            source[int(t)] = x
    alpha = case.get("negative_prompt_alpha")
    rows = 3 if alpha is None else 4
    if alpha is not None:
        kind = case["negative_prompt_schedule"]
        ramp = np.linspace(0, 1, n)
        shape = {"linear": np.flip(ramp), "constant": np.ones(n), "exp": np.exp(-6 * ramp)}[kind]
        weights = alpha * shape
    injector = Injector(unet, rows)
    finals = []
    try:
        for prompt in case["prompts"]:
            c_pos = embed(tok, te, prompt, dtype)
            # source | negative | (unconditional "") | target
            ctx = torch.cat([c_src, c_neg] + ([c_src] if rows == 4 else []) + [c_pos], 0)
            x = source[int(ts[0])]
            for i, t in enumerate(ts):
                injector.conv_on = inject and i < n_f
                injector.qk_on = inject and i < n_qk
                inp = torch.cat([source[int(t)]] + [x] * (rows - 1), 0)
                out = unet(inp, t, encoder_hidden_states=ctx).sample
                parts = out.chunk(rows)
                eps_neg, eps_pos = parts[1], parts[-1]
                base = eps_neg
                if rows == 4:
                    a_i = float(weights[i])
                    base = a_i * parts[2] + (1 - a_i) * eps_neg
                eps = base + case["guidance"] * (eps_pos - base)
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            finals.append(x)
    finally:
        injector.conv_on = injector.qk_on = False
        injector.remove()
    if inject:
        assert injector.calls["conv"] == n_f * len(case["prompts"]), injector.calls
        assert injector.calls["qk"] == 16 * n_qk * len(case["prompts"]), injector.calls
    assert sched.config.prediction_type == inv_sched.config.prediction_type
    final = torch.cat(finals, 0)

    # Stage 4: decode
    image = (vae.decode(final / sf).sample / 2 + 0.5).clamp(0, 1)

    return {
        "z0": z0,
        "inverted_start": stored[int(ts[0])],
        "inverted": {int(t): stored[int(t)] for t in ts},
        "final": final,
        "image": image,
        "width": img.shape[3],
        "height": img.shape[2],
        "sampling_timesteps": [int(t) for t in ts],
        "inversion_timesteps": [int(t) for t in inv_ts],
    }


def stats(t: torch.Tensor) -> str:
    t = t.double()
    return f"min {t.min().item():+.4f} max {t.max().item():+.4f} mean {t.mean().item():+.4f} std {t.std().item():.4f}"


def main():
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    print("versions:", versions)
    only = sys.argv[1:]  # case names; none: every case
    write_images()
    write_v_model()
    cache = {}
    for name, case in CASES.items():
        if only and name not in only:
            continue
        if case["model"] not in cache:
            cache[case["model"]] = load_model(case["model"])
        comps = cache[case["model"]]
        r32 = run_case(case, comps, torch.float32)
        r64 = run_case(case, comps, torch.float64)
        comps[2].float(), comps[3].float(), comps[4].float()
        d = (r32["final"].double() - r64["final"]).abs().max().item()
        rel = d / r64["final"].abs().max().item()
        print(f"[{name}] inversion grid {r32['inversion_timesteps']}")
        print(f"[{name}] sampling grid  {r32['sampling_timesteps']}")
        print(f"[{name}] final f32 vs f64: max abs diff {d:.3e} (relative to max |final| {rel:.3e})")
        assert rel < 1e-3, rel

        tensors = {
            "z0": r32["z0"].float(),
            "inverted_start": r32["inverted_start"].float(),
            "final": r32["final"].float(),
            "image": r32["image"].float(),
        }
        for t, z in r32["inverted"].items():
            tensors[f"inverted/{t}"] = z.float()
        for k, v in tensors.items():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
        meta_case = {
            "model": case["model"], "image": case["image"], "prompts": case["prompts"],
            "negative_prompt": case["negative_prompt"], "inversion_prompt": case["inversion_prompt"],
            "inversion_steps": case["inversion_steps"], "steps": case["steps"], "guidance": case["guidance"],
            "pnp_f_t": case["pnp_f_t"], "pnp_attn_t": case["pnp_attn_t"],
            "width": r32["width"], "height": r32["height"], "f64_max_abs_diff": d,
        }
        for k in ("negative_prompt_alpha", "negative_prompt_schedule", "source_latents"):
            if k in case:
                meta_case[k] = case[k]
        meta = {"case": json.dumps(meta_case), "generator": GENERATOR, **versions}
        write_safetensors(OUT / f"{name}.safetensors", tensors, meta)
        for k in sorted(tensors):
            print(f"  {k:20s} {list(tensors[k].shape)} {stats(tensors[k])}")

        if name == "sd15_square":
            r_off = run_case(case, comps, torch.float32, inject=False)
            doff = (r_off["final"] - r32["final"]).abs().max().item()
            print(f"[{name}] injection on vs off: max abs diff of final {doff:.4e} "
                  f"(max |final| {r32['final'].abs().max().item():.4f})")
            assert doff > 1e-2, doff

    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(OUT)}  {p.stat().st_size}")
    print(f"total {total} bytes ({total / 2**20:.2f} MiB)")
    assert total < 2 * 2**20


if __name__ == "__main__":
    main()
