#!/usr/bin/env python3
"""Generate the pixel-metric and PIE-Bench-format fixtures.

Writes two folders (run from the repository root):

kernels-tests/fixtures/metrics/
  * <pair>_src.png, <pair>_tgt.png: 8-bit RGB, and <pair>_mask.png: 8-bit
    grayscale, 0 or 255 (255 = edited), for the pairs in PAIRS (big 512x512
    with PIE-Bench's 1-pixel mask border, odd 61x47, wide 96x64, small 23x17,
    full_mask 40x40 with an all-255 mask). Synthetic, from seeded numpy
    Generators: gradients, a sinusoid, rectangles/ellipses and noise; the
    edited image is the source plus blurred noise plus a recoloured rectangle
    inside the mask.
  * refs.json: per pair "psnr", "mse", "ssim" and the "_unedit_part"
    variants, computed as PIE-Bench's evaluation (cure-lab/PnPInversion,
    evaluation/matrics_calculator.py and evaluate.py) computes them: both
    images as float32 HxWx3 arrays / 255, for "_unedit_part" both multiplied
    by (1 - mask/255) (JSON null where that factor sums to 0, the evaluation's
    "nan"), then a fresh torchmetrics object per call with pred = source,
    target = edited:
      PeakSignalNoiseRatio(data_range=1.0) on (1,3,H,W),
      MeanSquaredError() on contiguous (3,H,W),
      StructuralSimilarityIndexMeasure(data_range=1.0) on (1,3,H,W),
    each .item()'d. "<metric>_f64" are the same values from this script's own
    float64 code (on the float32 inputs widened). PSNR and MSE agree with
    torchmetrics within 1e-5 relative (asserted; ~1e-7 in practice); the
    float32 SSIM differs from the float64 one by up to ~2e-5 relative (float32
    rounding in E[x^2] - mu^2 against c2), so it is asserted within 1e-4, and
    the own SSIM map is asserted equal, within 1e-10, to torchmetrics' map
    computed with float64 inputs (same algorithm, only the dtype differs).
    The float32 values also move in the last bits with the thread count
    (the script runs on one thread). "ssim_crop5_f64" and
    "ssim_unedit_part_crop5_f64" are the SSIM of torchmetrics releases
    before its PR #2721 (2024-09), which averaged only the map positions
    whose 11x11 window lies inside the image (likely what the PIE-Bench
    paper's numbers used: its evaluation code dates from 2023).

  What the installed torchmetrics (1.9.0) does, read from its source:
    - SSIM: the 1-D Gaussian exp(-(d/1.5)^2/2) over d = -5..5 is built in the
      input dtype (float32) and normalised, the 2-D kernel is its outer
      product (the size is int(3.5*sigma+0.5)*2+1 = 11; kernel_size is
      ignored for the Gaussian); both images are reflect-padded by 5 (edge not
      repeated), one grouped conv2d filters x, y, x*x, y*y, x*y;
      sigma_x^2 = E[x^2] - mu_x^2 and sigma_y^2 are clamped at >= 0,
      sigma_xy is not; c1 = (0.01*1)^2, c2 = (0.03*1)^2; the SSIM map is
      averaged over channels and all HxW positions. It does NOT crop the
      padding any more (PR #2721 removed the crop), so the border positions,
      whose windows include reflected pixels, count.
    - PSNR: 10/ln(10) * (2 ln(data_range) - ln(sse / n)), sse summed in
      float32 over all 3*H*W values (reduction over everything, dim=None).
    - MSE: view(-1) (needs a contiguous tensor, hence the evaluation's
      .contiguous()), sse / n in float32.
    - The "_unedit_part" means are over all 3*H*W values, the masked pixels
      counting as zeros that agree.

kernels-tests/fixtures/piebench/
  * mapping_file.json: three items in PIE-Bench's format (12-digit ids,
    image_path, original_prompt, editing_prompt with [bracketed] words,
    editing_instruction, editing_type_id, blended_word, mask as run-length
    pairs [start, length, ...] over the 512x512 image in row-major order,
    one run per maximal horizontal run).
  * annotation_images/<image_path>: 512x512 RGB JPEGs (quality 90),
    gradients and shapes without noise.
  Each mask is decoded back the way PIE-Bench's mask_decode does (zeros, set
  the runs, cut a run at the end of the image, then the first/last rows and
  columns set to 1) and checked against the intended mask plus border.

Usage:  /work/venv/bin/python tools/make_metric_fixtures.py
"""

import json
import os

import numpy as np
import PIL
import torch
import torchmetrics
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanSquaredError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS_DIR = os.path.join(ROOT, "kernels-tests/fixtures/metrics")
PIE_DIR = os.path.join(ROOT, "kernels-tests/fixtures/piebench")

# name -> (width, height, seed, mask shapes, border, edit noise amplitude)
# shapes: (kind, x0, y0, x1, y1) as fractions of the size, "all" = every pixel.
PAIRS = {
    "big": (512, 512, 1, [("rect", 0.10, 0.15, 0.45, 0.50), ("ellipse", 0.52, 0.53, 0.88, 0.77)], True, 5.0),
    "odd": (61, 47, 2, [("ellipse", 0.20, 0.25, 0.70, 0.80), ("rect", 0.60, 0.05, 0.90, 0.40)], False, 9.0),
    "wide": (96, 64, 3, [("rect", 0.05, 0.30, 0.40, 0.90), ("rect", 0.55, 0.10, 0.95, 0.45)], False, 14.0),
    "small": (23, 17, 4, [("rect", 0.25, 0.20, 0.75, 0.70)], False, 20.0),
    "full_mask": (40, 40, 5, [("all", 0, 0, 1, 1)], False, 7.0),
}

C1, C2 = 0.01 ** 2, 0.03 ** 2
# torchmetrics float32 vs own float64, relative. The float32 SSIM is off by up
# to ~2e-5 here (E[x^2] - mu^2 cancels in float32 against c2 = 9e-4), so SSIM
# gets 1e-4; its algorithm is checked to 1e-10 against torchmetrics in float64.
TOLERANCE = {"psnr": 1e-5, "mse": 1e-5, "ssim": 1e-4}


def shape_mask(w, h, shapes):
    """Boolean HxW mask of the union of the shapes."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for kind, fx0, fy0, fx1, fy1 in shapes:
        x0, y0, x1, y1 = round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h)
        if kind == "all":
            m[:] = True
        elif kind == "rect":
            m[y0:y1, x0:x1] = True
        else:
            cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    return m


def scene(rng, w, h, n_shapes):
    """Float HxWx3 picture in 0..255: per-channel gradients, a sinusoid and
    flat-coloured rectangles/ellipses."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w], float)[:, None, None]
    img = np.empty((h, w, 3))
    for c in range(3):
        a, b, c0 = rng.uniform(-90, 90), rng.uniform(-90, 90), rng.uniform(70, 180)
        f1, f2, ph = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0, 6.3)
        img[..., c] = c0 + a * (xx - 0.5) + b * (yy - 0.5) + 25 * np.sin(6.283 * (f1 * xx + f2 * yy) + ph)
    for _ in range(n_shapes):
        fx0, fy0 = rng.uniform(0, 0.8, 2)
        fw, fh = rng.uniform(0.1, 0.4, 2)
        kind = "rect" if rng.uniform() < 0.5 else "ellipse"
        img[shape_mask(w, h, [(kind, fx0, fy0, fx0 + fw, fy0 + fh)])] = rng.uniform(0, 255, 3)
    return img


def blur(a, sigma):
    """Separable Gaussian blur of an HxWxC array (reflect edges)."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        r_ax = min(r, a.shape[axis] - 1)
        kk = k[r - r_ax:r + r_ax + 1] / k[r - r_ax:r + r_ax + 1].sum()
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r_ax, r_ax)
        p = np.pad(a, pad, mode="reflect")
        n = a.shape[axis]
        a = sum(kk[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(len(kk)))
    return a


def make_pair(w, h, seed, shapes, border, amp):
    rng = np.random.default_rng(seed)
    src = scene(rng, w, h, 4) + rng.normal(0, 1.5, (h, w, 3))
    src = np.clip(np.rint(src), 0, 255).astype(np.uint8)
    mask = shape_mask(w, h, shapes)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    noise = blur(rng.normal(0, 1, (h, w, 3)), max(1.0, min(w, h) / 40))
    tgt = src + amp * noise / noise.std()
    kind, fx0, fy0, fx1, fy1 = shapes[0]
    # The recoloured rectangle: the middle of the first shape's box (inside the mask).
    x0, y0 = round((0.75 * fx0 + 0.25 * fx1) * w), round((0.75 * fy0 + 0.25 * fy1) * h)
    x1, y1 = round((0.25 * fx0 + 0.75 * fx1) * w), round((0.25 * fy0 + 0.75 * fy1) * h)
    assert mask[y0:y1, x0:x1].all()
    tgt[y0:y1, x0:x1] = 0.5 * tgt[y0:y1, x0:x1] + rng.uniform(0, 128, 3)
    tgt = np.clip(np.rint(tgt), 0, 255).astype(np.uint8)
    return src, tgt, mask


# --- the evaluation's way, torchmetrics in float32 ---------------------------

def eval_inputs(src, tgt, mask, unedit):
    a = src.astype(np.float32) / 255
    b = tgt.astype(np.float32) / 255
    if unedit:
        mask01 = (mask.astype(np.uint8) * 255).astype(np.float32) / 255  # as read from the PNG
        keep = (1 - mask01)[:, :, None].repeat(3, axis=2)
        if keep.sum() == 0:
            return None
        a, b = a * keep, b * keep
    return a, b


def tm_metrics(a, b):
    pa = torch.tensor(a).permute(2, 0, 1)
    pb = torch.tensor(b).permute(2, 0, 1)
    psnr = PeakSignalNoiseRatio(data_range=1.0)(pa.unsqueeze(0), pb.unsqueeze(0)).item()
    mse = MeanSquaredError()(pa.contiguous(), pb.contiguous()).item()
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)(pa.unsqueeze(0), pb.unsqueeze(0)).item()
    # torchmetrics' own SSIM map with float64 inputs, to check f64_metrics' algorithm.
    _, full = structural_similarity_index_measure(
        pa.unsqueeze(0).double(), pb.unsqueeze(0).double(), data_range=1.0, return_full_image=True)
    return {"psnr": psnr, "mse": mse, "ssim": ssim}, full[0].permute(1, 2, 0).numpy()


# --- own float64 code ---------------------------------------------------------

def filter11(p, g, n_h, n_w):
    """Correlate the padded HxWxC array p with outer(g, g), 'valid' positions."""
    rows = sum(g[i] * p[i:i + n_h] for i in range(len(g)))
    return sum(g[j] * rows[:, j:j + n_w] for j in range(len(g)))


def f64_metrics(a, b):
    x, y = a.astype(np.float64), b.astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    d = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-((d / 1.5) ** 2) / 2)
    g /= g.sum()
    h, w = x.shape[:2]
    px = np.pad(x, ((5, 5), (5, 5), (0, 0)), mode="reflect")
    py = np.pad(y, ((5, 5), (5, 5), (0, 0)), mode="reflect")
    mx, my = filter11(px, g, h, w), filter11(py, g, h, w)
    vx = np.maximum(filter11(px * px, g, h, w) - mx * mx, 0)
    vy = np.maximum(filter11(py * py, g, h, w) - my * my, 0)
    cxy = filter11(px * py, g, h, w) - mx * my
    smap = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return {
        "psnr": float(10 * np.log10(1 / mse)),
        "mse": mse,
        "ssim": float(smap.mean()),
        "ssim_crop5": float(smap[5:-5, 5:-5].mean()),
    }, smap


def write_metrics():
    os.makedirs(METRICS_DIR, exist_ok=True)
    pairs, max_rel = {}, {"psnr": 0.0, "mse": 0.0, "ssim": 0.0}
    for name, (w, h, seed, shapes, border, amp) in PAIRS.items():
        src, tgt, mask = make_pair(w, h, seed, shapes, border, amp)
        Image.fromarray(src, "RGB").save(os.path.join(METRICS_DIR, f"{name}_src.png"))
        Image.fromarray(tgt, "RGB").save(os.path.join(METRICS_DIR, f"{name}_tgt.png"))
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(os.path.join(METRICS_DIR, f"{name}_mask.png"))
        metrics = {}
        for suffix, unedit in (("", False), ("_unedit_part", True)):
            inputs = eval_inputs(src, tgt, mask, unedit)
            if inputs is None:
                for k in ("psnr", "mse", "ssim"):
                    metrics[k + suffix] = metrics[k + suffix + "_f64"] = None
                metrics["ssim" + suffix + "_crop5_f64"] = None
                continue
            tm, tm_map = tm_metrics(*inputs)
            own, own_map = f64_metrics(*inputs)
            assert np.abs(tm_map - own_map).max() < 1e-10, name
            for k in ("psnr", "mse", "ssim"):
                rel = abs(tm[k] - own[k]) / abs(own[k])
                assert rel < TOLERANCE[k], (name, k + suffix, tm[k], own[k])
                max_rel[k] = max(max_rel[k], rel)
                metrics[k + suffix] = tm[k]
                metrics[k + suffix + "_f64"] = own[k]
            metrics["ssim" + suffix + "_crop5_f64"] = own["ssim_crop5"]
        pairs[name] = {
            "width": w, "height": h, "metrics": metrics,
            "src": f"{name}_src.png", "tgt": f"{name}_tgt.png", "mask": f"{name}_mask.png",
        }
        shown = ", ".join(f"{k}={'null' if metrics[k] is None else f'{metrics[k]:.8g}'}"
                          for k in ("psnr", "mse", "ssim", "psnr_unedit_part", "mse_unedit_part",
                                    "ssim_unedit_part", "ssim_crop5_f64", "ssim_unedit_part_crop5_f64"))
        print(f"{name} {w}x{h} mask={int(mask.sum())}px: {shown}")
    refs = {
        "generator": "tools/make_metric_fixtures.py",
        "versions": {"torch": torch.__version__, "torchmetrics": torchmetrics.__version__,
                     "numpy": np.__version__, "pillow": PIL.__version__},
        "pairs": pairs,
    }
    with open(os.path.join(METRICS_DIR, "refs.json"), "w") as f:
        f.write(json.dumps(refs, sort_keys=True, indent=1) + "\n")
    print("max relative difference torchmetrics float32 vs own float64: "
          + ", ".join(f"{k} {v:.3e}" for k, v in max_rel.items()))


# --- PIE-Bench-format folder --------------------------------------------------

ITEMS = [
    ("000000000000", "0_random_140/000000000000.jpg", "0", "",
     "a cat sitting on a [wooden] chair", "a cat sitting on a [red] chair",
     "Make the chair red", [("ellipse", 0.45, 0.40, 0.49, 0.43)]),
    ("000000000001", "1_change_object_80/1_artificial/1_animal/000000000001.jpg", "1", "cat dog",
     "a [cat] sitting on a wooden chair", "a [dog] sitting on a wooden chair",
     "Change the cat to a dog", [("ellipse", 0.25, 0.20, 0.70, 0.75), ("rect", 0.55, 0.60, 0.85, 0.95)]),
    ("000000000002", "2_add_object_80/2_nature/000000000002.jpg", "2", "hill hill",
     "a green hill under a blue sky", "a green hill with [a house] under a blue sky",
     "Add a house on the hill", [("rect", 0.30, 0.00, 0.62, 0.35), ("ellipse", 0.50, 0.30, 0.95, 0.65)]),
]
SIDE = 512


def rle_encode(mask):
    """[start, length, ...] of the maximal horizontal runs, row-major."""
    out = []
    for y in range(mask.shape[0]):
        d = np.diff(np.concatenate([[0], mask[y].astype(np.int8), [0]]))
        for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
            out += [int(y * mask.shape[1] + s), int(e - s)]
    return out


def rle_decode(runs, h, w):
    flat = np.zeros(h * w, bool)
    for start, length in zip(runs[0::2], runs[1::2]):
        flat[start:start + min(length, h * w - start)] = True
    m = flat.reshape(h, w)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def write_piebench():
    mapping = {}
    for k, (key, path, type_id, blended, orig, edit, instr, shapes) in enumerate(ITEMS):
        mask = shape_mask(SIDE, SIDE, shapes)
        # Runs never touch the side columns, so per-row runs are also maximal in the flat order.
        assert not mask[:, 0].any() and not mask[:, -1].any()
        runs = rle_encode(mask)
        want = mask.copy()
        want[0, :] = want[-1, :] = want[:, 0] = want[:, -1] = True
        got = rle_decode(runs, SIDE, SIDE)
        assert (got == want).all(), key
        print(f"{key}: {len(runs) // 2} runs, mask {int(mask.sum())} px, decoded with border {int(got.sum())} px")
        mapping[key] = {
            "image_path": path, "original_prompt": orig, "editing_prompt": edit,
            "editing_instruction": instr, "editing_type_id": type_id,
            "blended_word": blended, "mask": runs,
        }
        img = np.clip(np.rint(scene(np.random.default_rng(100 + k), SIDE, SIDE, 5)), 0, 255).astype(np.uint8)
        out = os.path.join(PIE_DIR, "annotation_images", path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        Image.fromarray(img, "RGB").save(out, quality=90)
    with open(os.path.join(PIE_DIR, "mapping_file.json"), "w") as f:
        f.write(json.dumps(mapping) + "\n")


def main():
    torch.set_num_threads(1)
    write_metrics()
    write_piebench()
    total = 0
    for top in (METRICS_DIR, PIE_DIR):
        for dirpath, _, files in sorted(os.walk(top)):
            for fn in sorted(files):
                p = os.path.join(dirpath, fn)
                total += os.path.getsize(p)
                print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")
    print(f"total {total} bytes")
    assert total < 1_500_000


if __name__ == "__main__":
    main()
