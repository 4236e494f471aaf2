#!/usr/bin/env python3
"""Generate the DDIM scheduler fixture for kernels-tests/scheduler.rs.

Writes kernels-tests/fixtures/scheduler.safetensors with:
  * "alphas_cumprod" float32 [1000] and "final_alpha_cumprod" float32 [1],
    straight from diffusers.DDIMScheduler built from the SD scheduler config;
  * "timesteps/<n>" int64 for n in STEP_COUNTS (scheduler.set_timesteps(n));
  * "step/<n>/x", "step/<n>/eps" float32 [1,4,8,8] and "step/<n>/t<t>" =
    scheduler.step(eps, t, x).prev_sample, float32 as diffusers computes it;
  * "invert/<n>/i<i>": the PnP inversion update of docs/ALGORITHM.md
    ("DDIM inversion") for the same x/eps at timestep t_i of the ascending
    grid, computed in float64 from the float32 alphas and cast to float32.
Metadata: "generator", "torch", "diffusers", "python", "seed", "config"
(JSON) and "cases" (JSON list, one dict per step/invert case).

Usage:  /work/venv/bin/python tools/make_scheduler_fixtures.py [--out FILE]
"""

import argparse
import json
import os
import platform

import diffusers
import torch
from diffusers import DDIMScheduler
import struct

SEED = 1234
STEP_COUNTS = [1, 10, 25, 50, 999]
CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
# n -> (sampling timesteps for step(), ascending-grid indices for inversion)
STEP_CASES = {50: ([981, 501, 1], [0, 25, 49]), 10: ([901, 401, 1], [0, 4, 9])}


def write_safetensors(path, tensors, meta):
    """safetensors writer with a sorted header (the library's metadata order
    varies between runs), so the file is byte-for-byte deterministic."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "kernels-tests/fixtures/scheduler.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    sched = DDIMScheduler(**CONFIG)
    ac = sched.alphas_cumprod
    assert ac.dtype == torch.float32
    final = torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float32).reshape(1)
    out = {"alphas_cumprod": ac.clone().contiguous(), "final_alpha_cumprod": final}
    for n in STEP_COUNTS:
        sched.set_timesteps(n)
        out[f"timesteps/{n}"] = sched.timesteps.to(torch.int64).clone().contiguous()

    cases = []
    gen = torch.Generator().manual_seed(SEED)
    for n, (ts, idxs) in STEP_CASES.items():
        x = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float32)
        eps = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float32)
        out[f"step/{n}/x"] = x
        out[f"step/{n}/eps"] = eps
        sched.set_timesteps(n)
        for t in ts:
            prev = sched.step(eps, t, x).prev_sample
            assert prev.dtype == torch.float32
            out[f"step/{n}/t{t}"] = prev.contiguous()
            cases.append({"name": f"step/{n}/t{t}", "kind": "step", "n": n, "t": t})
        asc = sorted(int(v) for v in sched.timesteps)
        ac64 = ac.to(torch.float64)
        x64, eps64 = x.to(torch.float64), eps.to(torch.float64)
        for i in idxs:
            t = asc[i]
            a = ac64[t]
            ap_ = ac64[asc[i - 1]] if i > 0 else final.to(torch.float64)[0]
            x0 = (x64 - (1 - ap_).sqrt() * eps64) / ap_.sqrt()
            z = a.sqrt() * x0 + (1 - a).sqrt() * eps64
            out[f"invert/{n}/i{i}"] = z.to(torch.float32).contiguous()
            cases.append({
                "name": f"invert/{n}/i{i}", "kind": "invert", "n": n, "i": i, "t": t,
                "t_prev": asc[i - 1] if i > 0 else None,
            })

    meta = {
        "generator": "tools/make_scheduler_fixtures.py",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seed": str(SEED),
        "config": json.dumps(CONFIG, sort_keys=True),
        "cases": json.dumps(cases),
    }
    write_safetensors(args.out, out, meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
