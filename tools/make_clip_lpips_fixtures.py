#!/usr/bin/env python3
"""Tiny CLIP and LPIPS networks with PIE-Bench's real architectures, and their
references from the real Python stack (torchmetrics' CLIPScore and LPIPS).

Run from the repository root:  /work/venv/bin/python tools/make_clip_lpips_fixtures.py
No network access is needed: every weight is random (seeded) except LPIPS'
linear heads, which are the ones bundled with torchmetrics. Deterministic (same
bytes on every run with the same versions; one thread).

PIE-Bench (cure-lab/PnPInversion, evaluation/matrics_calculator.py) scores
  clip_similarity_source_image         CLIPScore(src image, source prompt)
  clip_similarity_target_image         CLIPScore(tgt image, target prompt)
  clip_similarity_target_image_edit_part
                                       CLIPScore(np.uint8(tgt * mask), target prompt)
with torchmetrics' CLIPScore("openai/clip-vit-large-patch14"), the image an
8-bit HxWx3 array made a (3,H,W) uint8 tensor (torch.tensor(img).permute(2,0,1)),
the mask 0/1 repeated over 3 channels; and
  lpips_unedit_part                    LPIPS(src01 * (1-mask) * 2 - 1, tgt01 * (1-mask) * 2 - 1)
with LearnedPerceptualImagePatchSimilarity(net_type='squeeze') on float32
(1,3,H,W) tensors (img01 = img / 255; reduction 'mean', normalize=False).
The image pairs are kernels-tests/fixtures/metrics/<pair>_{src,tgt,mask}.png
(tools/make_metric_fixtures.py; mask 255 = edited).

Writes, under kernels-tests/fixtures/metrics/:

clip-tiny/  a CLIPModel folder laid out like openai/clip-vit-large-patch14:
  * config.json (save_pretrained): text tower hidden 8, 2 heads, MLP 32,
    2 layers, 77 positions, vocab 49408; vision tower hidden 32, 4 heads,
    MLP 64, 2 layers, image 224, patch 14; projection_dim 16; quick_gelu,
    layer_norm_eps 1e-5, and the real model's token ids (text_config
    bos_token_id 0, eos_token_id 2, pad_token_id 1: the pre-#24773 values,
    which select the "argmax of input_ids" pooling) and
    logit_scale_init_value 2.6592. "dtype": "float32".
  * model.safetensors: FLOAT16 (the 49408-row token embedding dominates; text
    hidden 8 and float16 keep the weights under 0.9 MB). The config's dtype
    float32 makes from_pretrained load it as float32 (checked), so the
    references are exact for the float16 values widened to float32.
    Weights: torch.manual_seed(0) init, then every Linear/Conv2d/Embedding
    weight and the class embedding N(0, 0.2), biases N(0, 0.1), LayerNorm
    weight 1 + N(0, 0.1), bias N(0, 0.1) (one seeded generator, modules in
    named_modules() order); logit_scale = ln(100), the trained model's value
    (unused by CLIPScore).
  * vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json:
    byte copies of models/sd15-tiny/tokenizer/ (the CLIP BPE tokenizer).
  * preprocessor_config.json: the content of openai/clip-vit-large-patch14's
    file (legacy format: size 224, crop_size 224, resample 3, CLIP mean/std,
    feature_extractor_type CLIPFeatureExtractor).
  * processor_config.json: CLIPProcessor.save_pretrained's image-processor
    part (transformers 5 writes this name). Loading the folder with only
    either file gives the same processor (asserted).

clip-tiny-ref.safetensors (staged CLIP tensors; metadata "texts" = JSON list
of the prompts, in text<i> order):
  * "big/resized_u8" (UINT8, (1,3,224,224)): the big source image after the
    processor's resize + center crop, before normalisation;
  * "wide/pixel_values" (float32, (1,3,224,224)): the processor output for
    the wide source image, as CLIPScore fed it to the model.
    For every image scored, pixel_values == (float32(resized_u8) - 255*mean)
    / (255*std) bit for bit (asserted; the fused form of the torchvision
    backend, mean and std multiplied by 1/(1/255) in float32), so each of
    the two determines the other exactly: "big/pixel_values" and
    "wide/resized_u8" are left out for size;
  * "<pair>/image_embeds", "<pair>/tgt_image_embeds",
    "<pair>/tgt_edit_part_image_embeds" (float32, (1,16)): the projected image
    embeddings (visual_projection output, before normalisation) of the source
    image, the target image and np.uint8(tgt * mask);
  * "text<i>/input_ids" (INT64, (1,L)): the ids CLIPScore fed to the model
    (after its truncation to 77), "text<i>/text_embeds" (float32, (1,16)):
    projected, before normalisation; one i per prompt of every pair.

lpips-squeeze-tiny.safetensors: every weight LPIPS-squeeze uses.
  * "features.<n>.weight"/"bias" with torchvision's squeezenet1_1 names
    (features.0 conv; features.<n>.squeeze / expand1x1 / expand3x3 for the
    Fire modules 3, 4, 6, 7, 9, 10, 11, 12), FLOAT16 in the file; the
    reference loads them back as float32 (so it is exact for the float16
    values). Random: torch.manual_seed(1) squeezenet1_1(weights=None), then
    conv weights N(0, 0.1), biases N(0, 0.05). (Its classifier is not used.)
  * "lin<k>.model.1.weight" (float32, (1,C_k,1,1)), k = 0..6: the linear
    heads bundled with torchmetrics (lpips_models/squeeze.pth), unchanged.

lpips-ref.safetensors: "wide/feat<k>" (float32), k = 0..6, the seven slice
outputs of the wide source image (scaled to [-1, 1], through the scaling
layer), before the channel normalisation.

clip-lpips-refs.json (sorted keys, indent 1): per pair the prompts, the three
CLIP scores ("<metric>") and the same before the clamp at 0 ("<metric>_raw"),
"lpips" (whole images) and "lpips_unedit_part" (null where 1 - mask sums to
0, the evaluation's "nan"); for wide also "lpips_layers" (the seven per-layer
terms, torchmetrics' retperlayer); the prompts' token counts; versions.

How the references are computed (read from the installed sources):
  * CLIP: torchmetrics.multimodal.CLIPScore with a model_name_or_path
    callable returning (CLIPModel.from_pretrained(clip-tiny),
    CLIPProcessor.from_pretrained(clip-tiny)): what its "openai/..." branch
    does, which only accepts names containing "openai", "jinaai" or
    "zer0int". One shim: torchmetrics 1.9.0 divides get_image_features() /
    get_text_features() by their norm, but transformers 5 returns a
    BaseModelOutputWithPooling from them (an AttributeError in CLIPScore as
    installed); the shim returns its .pooler_output, the projected embedding
    transformers 4.x returned (and PIE-Bench's environment had). Each score is
    metric(image, prompt).item() = max(100 * cos, 0); "_raw" is torchmetrics'
    _clip_score_update (100 * cos) before the clamp.
  * Image processor: transformers 5.24's CLIPImageProcessor is the torchvision
    backend (there is no separate "fast" class any more; the PIL one is
    CLIPImageProcessorPil and is not what CLIPProcessor loads). On the (3,H,W)
    uint8 tensor: shortest edge to 224, the other int(224 * long / short)
    (truncated); torchvision.transforms.v2.functional.resize BICUBIC,
    antialias=True, which for uint8 on CPU is ATen's native uint8 path (the
    tensors are moved to the CPU first by torchmetrics): Pillow-style
    separable resampling, horizontal pass then vertical pass (a pass only if
    that size changes), each rounded to uint8 in between; per output index i,
    scale = in/out, support = 2*scale if scale >= 1 else 2, center =
    scale*(i+0.5), taps j in [max(int(center-support+0.5),0),
    min(int(center+support+0.5),in)), w = K((j-center+0.5)/max(scale,1)) with
    Keys' cubic a = -0.5 evaluated as ATen does (|x|<1: ((a+2)x-(a+3))x^2+1;
    |x|<2: ((a x-5a)x+8a)x-4a), normalised by their sum (float64); then int16
    weights: precision p = the first p in 0..21 with int(0.5 + wmax*2^(p+1))
    >= 2^15 (wmax over all taps of the pass), w16 = trunc(w*2^p +- 0.5);
    out = clamp((2^(p-1) + sum w16*pixel) >> p, 0, 255) (arithmetic shift).
    This script's own port of that is asserted bit-identical to the
    processor on every image it scores. Then center crop top =
    int((H-224)/2), left = int((W-224)/2), and the fused normalisation above.
    It is NOT Pillow's resize (differs by 1-2 levels at ~0.5% of pixels) nor
    float interpolate(bicubic, antialias) + round (differs by up to 10).
  * LPIPS: torchmetrics' own LearnedPerceptualImagePatchSimilarity(
    net_type='squeeze') forward; only the backbone is swapped: its
    SqueezeNet wrapper calls _get_tv_model_features("squeezenet1_1",
    pretrained=True), which downloads torchvision's weights, so that function
    is patched during construction to return this script's random
    squeezenet1_1 .features. The heads load from the bundled file as usual.

Architecture notes (for the Rust port):
  * LPIPS-squeeze (torchmetrics/functional/image/lpips.py): x -> (x - shift)
    / scale, shift = [-0.030, -0.088, -0.188], scale = [0.458, 0.448, 0.450]
    (float32 constants); slices of squeezenet1_1.features: [0,1] conv3x3/2
    (3->64, no padding) + ReLU; [2,3,4] maxpool + Fire(64;16,64,64) +
    Fire(128;16,64,64); [5,6,7] maxpool + Fire(128;32,128,128) +
    Fire(256;32,128,128); [8,9] maxpool + Fire(256;48,192,192); [10]
    Fire(384;48,192,192); [11] Fire(384;64,256,256); [12] Fire(512;64,256,256).
    MaxPool2d(kernel 3, stride 2, padding 0, ceil_mode=True). Fire(in; s, e1,
    e3): ReLU(conv1x1 in->s), then cat([ReLU(conv1x1 s->e1), ReLU(conv3x3
    pad 1 s->e3)], channel). Channels 64,128,256,384,384,512,512. Each slice
    output f: f / sqrt(1e-8 + sum_c f^2) (eps inside the sqrt); d = (f0-f1)^2;
    head = 1x1 conv C->1 without bias (Dropout before it, inactive in eval);
    spatial mean over H,W per layer; the seven means summed. No resize.
  * CLIP: vision = patch conv 14/14 without bias, class embedding, learned
    positions (257), pre_layrnorm, pre-LN encoder layers (LN, attention with
    q/k/v/out biases and scale head_dim^-0.5, residual; LN, fc1, quick_gelu
    x*sigmoid(1.702x), fc2, residual), post_layernorm of the class token,
    visual_projection (no bias). Text = token + position embeddings, causal
    self-attention, same layers, final_layer_norm, pooled at
    argmax(input_ids) (eos_token_id == 2 rule: the first position of the
    largest id, normally the EOS 49407), text_projection (no bias).
  * CLIPScore's text: processor(text=[prompt], padding=True), no tokenizer
    truncation; if longer than max_position_embeddings (77) it warns and keeps
    the first 77 ids and mask entries: the EOS is cut, so argmax pooling picks
    the BOS (49406) at position 0, whose causal hidden state ignores the
    prompt: every over-long prompt gets the same text embedding.

Versions used for the committed files: see "versions" in clip-lpips-refs.json
(torch 2.15.0, torchvision 0.29.2, transformers 5.24.0, torchmetrics 1.9.0).
"""

import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import torchmetrics
import torchvision
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

import torchmetrics.functional.image.lpips as tm_lpips
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
from torchmetrics.multimodal import CLIPScore
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS_DIR = os.path.join(ROOT, "kernels-tests/fixtures/metrics")
CLIP_DIR = os.path.join(METRICS_DIR, "clip-tiny")
TOKENIZER_DIR = os.path.join(ROOT, "kernels-tests/fixtures/models/sd15-tiny/tokenizer")
TOKENIZER_FILES = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
CLIP_REF = os.path.join(METRICS_DIR, "clip-tiny-ref.safetensors")
LPIPS_WEIGHTS = os.path.join(METRICS_DIR, "lpips-squeeze-tiny.safetensors")
LPIPS_REF = os.path.join(METRICS_DIR, "lpips-ref.safetensors")
REFS_JSON = os.path.join(METRICS_DIR, "clip-lpips-refs.json")

PAIRS = ["big", "odd", "wide", "small", "full_mask"]
STAGED_CLIP_PAIRS = ["big", "wide"]  # image embeds
RESIZED_U8_PAIRS = ["big"]
PIXEL_VALUES_PAIRS = ["wide"]
LONG_PROMPT = (
    "a highly detailed oil painting of a small red brick house with a white wooden door, "
    "two square windows with blue shutters, a steep grey slate roof and a tall chimney "
    "with smoke, standing in a green garden full of yellow sunflowers, pink roses and "
    "tall grass, next to an old oak tree with a wooden swing, under a bright blue sky "
    "with soft white clouds, warm afternoon light, long shadows, a winding stone path "
    "leading to the door, a small pond with ducks, and distant purple mountains on the "
    "horizon, painted with thick brush strokes in the style of an impressionist master"
)
PROMPTS = {  # pair -> (source prompt, target prompt)
    "big": ("a photo of a red house with a garden", "a watercolor painting of a blue house"),
    "odd": ("a cat sitting on a wooden chair", LONG_PROMPT),
    "wide": ("a wide landscape with green hills under a cloudy sky",
             "a wide landscape with snowy mountains under a starry night sky"),
    "small": ("a tiny icon of a yellow star", "a tiny icon of a red heart"),
    "full_mask": ("a bowl of fruit on a table", "a bowl of flowers on a table"),
}

# openai/clip-vit-large-patch14's preprocessor_config.json (legacy format).
REAL_PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# One metadata key per file: safetensors writes several in a random order.
SIZE_LIMIT = 4_000_000  # bytes of new content (the tokenizer copies excluded, see main)


# --- inputs -------------------------------------------------------------------

def load_pair(name):
    src = np.array(Image.open(os.path.join(METRICS_DIR, f"{name}_src.png")).convert("RGB"))
    tgt = np.array(Image.open(os.path.join(METRICS_DIR, f"{name}_tgt.png")).convert("RGB"))
    mask = np.array(Image.open(os.path.join(METRICS_DIR, f"{name}_mask.png")))
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}, name
    # PIE-Bench's mask: 0/1 floats repeated over the 3 channels.
    mask01 = (mask.astype(np.float64) / 255)[:, :, None].repeat(3, axis=2)
    return src, tgt, mask01


def chw_u8(img):
    """PIE-Bench's calculate_clip_similarity: torch.tensor(img).permute(2, 0, 1)."""
    return torch.tensor(img).permute(2, 0, 1)


# --- CLIP ---------------------------------------------------------------------

def tiny_clip_config():
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=8, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
            projection_dim=16),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=224, patch_size=14, num_channels=3, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, projection_dim=16),
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )


@torch.no_grad()
def reinit_clip(model):
    g = torch.Generator().manual_seed(1234)

    def normal(t, mean, std):
        t.copy_(mean + std * torch.randn(t.shape, generator=g, dtype=torch.float32))

    for _, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            normal(mod.weight, 0.0, 0.2)
            if mod.bias is not None:
                normal(mod.bias, 0.0, 0.1)
        elif isinstance(mod, torch.nn.Embedding):
            normal(mod.weight, 0.0, 0.2)
        elif isinstance(mod, torch.nn.LayerNorm):
            normal(mod.weight, 1.0, 0.1)
            normal(mod.bias, 0.0, 0.1)
    normal(model.vision_model.embeddings.class_embedding, 0.0, 0.2)
    model.logit_scale.fill_(math.log(100.0))


def write_clip_folder():
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    reinit_clip(model)
    if os.path.isdir(CLIP_DIR):
        shutil.rmtree(CLIP_DIR)
    os.makedirs(CLIP_DIR)
    model.save_pretrained(CLIP_DIR, safe_serialization=True)
    weights = os.path.join(CLIP_DIR, "model.safetensors")
    state = load_file(weights)
    save_file({k: v.to(torch.float16).contiguous() for k, v in sorted(state.items())}, weights,
              metadata={"format": "pt"})
    with open(os.path.join(CLIP_DIR, "config.json")) as f:
        assert json.load(f)["dtype"] == "float32"

    for fn in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(TOKENIZER_DIR, fn), os.path.join(CLIP_DIR, fn))
    with open(os.path.join(CLIP_DIR, "preprocessor_config.json"), "w") as f:
        f.write(json.dumps(REAL_PREPROCESSOR_CONFIG, indent=2) + "\n")

    # CLIPProcessor.save_pretrained of the processor the real file defines; keep
    # its processor_config.json (its tokenizer.json is 3.6 MB: the copied vocab
    # and merges are the same tokenizer).
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    image_processor = CLIPProcessor.from_pretrained(CLIP_DIR).image_processor
    with tempfile.TemporaryDirectory() as tmp:
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        shutil.copyfile(os.path.join(tmp, "processor_config.json"),
                        os.path.join(CLIP_DIR, "processor_config.json"))

    # Either config file alone gives the same processor.
    dicts = []
    for keep in ("preprocessor_config.json", "processor_config.json", None):
        with tempfile.TemporaryDirectory() as tmp:
            for fn in os.listdir(CLIP_DIR):
                if fn in ("preprocessor_config.json", "processor_config.json") and keep not in (fn, None):
                    continue
                shutil.copyfile(os.path.join(CLIP_DIR, fn), os.path.join(tmp, fn))
            p = CLIPProcessor.from_pretrained(tmp)
            assert type(p.image_processor).__name__ == "CLIPImageProcessor"
            assert p.image_processor.backend == "torchvision"
            d = p.image_processor.to_dict()
            d.pop("feature_extractor_type", None)
            dicts.append(json.dumps(d, sort_keys=True))
    assert dicts[0] == dicts[1] == dicts[2], dicts


class FeaturesAsTensors(torch.nn.Module):
    """CLIPModel with transformers 4.x's get_*_features (the projected embedding
    as a tensor), which torchmetrics 1.9.0's CLIPScore expects; transformers 5
    returns a BaseModelOutputWithPooling holding it in .pooler_output. Records
    what went through it for the staged references."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.calls = []

    def get_image_features(self, pixel_values):
        out = self.model.get_image_features(pixel_values).pooler_output
        self.calls.append(("image", pixel_values.detach().clone(), out.detach().clone()))
        return out

    def get_text_features(self, input_ids, attention_mask=None):
        out = self.model.get_text_features(input_ids, attention_mask).pooler_output
        self.calls.append(("text", input_ids.detach().clone(), out.detach().clone()))
        return out


def cubic_aten(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def int16_taps(n_in, n_out):
    """Per output index (first tap, int16 weights) and the precision."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows, w_max = [], 0.0
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = [cubic_aten((j - center + 0.5) * inv) for j in range(lo, hi)]
        total = 0.0
        for v in w:
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        rows.append((lo, w))
        w_max = max([w_max] + w)
    prec = 0
    while prec < 22:
        if int(0.5 + w_max * (1 << (prec + 1))) >= (1 << 15):
            break
        prec += 1
    q = [(lo, [int(v * (1 << prec) + (0.5 if v >= 0 else -0.5)) for v in w]) for lo, w in rows]
    return q, prec


def resample_axis(img, n_out, axis):
    """One uint8 pass along axis (0 = rows/height, 1 = columns/width) of HxWxC int64."""
    n_in = img.shape[axis]
    taps, prec = int16_taps(n_in, n_out)
    moved = np.moveaxis(img, axis, 0)
    out = np.empty((n_out,) + moved.shape[1:], dtype=np.int64)
    for i, (lo, w) in enumerate(taps):
        acc = np.full(moved.shape[1:], 1 << (prec - 1), dtype=np.int64)
        for k, wk in enumerate(w):
            acc += wk * moved[lo + k]
        out[i] = np.clip(acc >> prec, 0, 255)
    return np.moveaxis(out, 0, axis)


def own_resize_crop(img):
    """This script's port of the processor's resize + center crop, HxWx3 uint8."""
    h, w = img.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(224 * long / short)
    nh, nw = (new_long, 224) if w <= h else (224, new_long)
    x = img.astype(np.int64)
    if nw != w:
        x = resample_axis(x, nw, 1)
    if nh != h:
        x = resample_axis(x, nh, 0)
    top, left = int((nh - 224) / 2.0), int((nw - 224) / 2.0)
    return x[top:top + 224, left:left + 224].astype(np.uint8)


def clip_references():
    with open(os.path.join(CLIP_DIR, "config.json")) as f:
        max_positions = json.load(f)["text_config"]["max_position_embeddings"]

    def load():
        model = CLIPModel.from_pretrained(CLIP_DIR).eval()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        return FeaturesAsTensors(model), CLIPProcessor.from_pretrained(CLIP_DIR)

    metric = CLIPScore(model_name_or_path=load)
    shim, processor = metric.model, metric.processor
    ip = processor.image_processor
    mean255 = torch.tensor(ip.image_mean) * (1.0 / ip.rescale_factor)
    std255 = torch.tensor(ip.image_std) * (1.0 / ip.rescale_factor)

    texts, text_index, staged, pairs = [], {}, {}, {}
    for name in PAIRS:
        src, tgt, mask = load_pair(name)
        edit = np.uint8(tgt * mask)
        sp, tp = PROMPTS[name]
        res = {"source_prompt": sp, "target_prompt": tp}
        embeds = {}
        for metric_name, img, prompt, tag in (
            ("clip_similarity_source_image", src, sp, "image_embeds"),
            ("clip_similarity_target_image", tgt, tp, "tgt_image_embeds"),
            ("clip_similarity_target_image_edit_part", edit, tp, "tgt_edit_part_image_embeds"),
        ):
            t = chw_u8(img)
            shim.calls.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                score = metric(t, prompt).item()
            metric.reset()
            truncated = any("longer than" in str(w.message) for w in caught)
            # forward may run update twice (global state, then the batch): same inputs
            assert len(shim.calls) in (2, 4)
            if len(shim.calls) == 4:
                for (_, a, b), (_, c, d) in zip(shim.calls[:2], shim.calls[2:]):
                    assert torch.equal(a, c) and torch.equal(b, d)
            (kind_i, pixel_values, image_embeds), (kind_t, input_ids, text_embeds) = shim.calls[-2:]
            assert kind_i == "image" and kind_t == "text"
            raw, _ = _clip_score_update(t, prompt, shim, processor)
            raw = raw.item()
            assert score == max(raw, 0.0), (name, metric_name, score, raw)
            res[metric_name] = score
            res[metric_name + "_raw"] = raw

            # the processor's resize/crop: own port and the fused normalisation
            resized = ip(images=[t], return_tensors="pt", do_rescale=False,
                         do_normalize=False)["pixel_values"]
            assert resized.dtype == torch.uint8 and resized.shape == (1, 3, 224, 224)
            own = torch.from_numpy(own_resize_crop(img)).permute(2, 0, 1)[None]
            assert torch.equal(own, resized), (name, metric_name, (own.int() - resized.int()).abs().max())
            fused = (resized.to(torch.float32) - mean255[:, None, None]) / std255[:, None, None]
            assert torch.equal(fused, pixel_values), (name, metric_name)

            full_ids = processor.tokenizer(prompt)["input_ids"]
            assert truncated == (len(full_ids) > max_positions)
            assert input_ids[0].tolist() == full_ids[:max_positions]
            if prompt not in text_index:
                text_index[prompt] = len(texts)
                texts.append({"prompt": prompt, "tokens": len(full_ids),
                              "truncated_to": input_ids.shape[1],
                              "pooled_position": int(input_ids[0].argmax())})
                i = text_index[prompt]
                staged[f"text{i}/input_ids"] = input_ids.to(torch.int64).contiguous()
                staged[f"text{i}/text_embeds"] = text_embeds.to(torch.float32).contiguous()
            else:
                prev = staged[f"text{text_index[prompt]}/text_embeds"]
                assert torch.equal(prev, text_embeds)
            embeds[tag] = image_embeds
            if tag == "image_embeds" and name in RESIZED_U8_PAIRS:
                staged[f"{name}/resized_u8"] = resized.contiguous()
            if tag == "image_embeds" and name in PIXEL_VALUES_PAIRS:
                staged[f"{name}/pixel_values"] = pixel_values.contiguous()
        if name in STAGED_CLIP_PAIRS:
            for tag, e in embeds.items():
                staged[f"{name}/{tag}"] = e.to(torch.float32).contiguous()
        res["source_prompt_index"] = text_index[sp]
        res["target_prompt_index"] = text_index[tp]
        pairs[name] = res
        print(f"{name}: " + ", ".join(
            f"{k}={res[k]:.6g} (raw {res[k + '_raw']:.6g})" for k in (
                "clip_similarity_source_image", "clip_similarity_target_image",
                "clip_similarity_target_image_edit_part")))

    # The long prompt pools the BOS (the EOS is cut): same embedding as any other.
    for i, t in enumerate(texts):
        if t["tokens"] > max_positions:
            assert t["pooled_position"] == 0
            print(f"text{i}: {t['tokens']} tokens, truncated to {t['truncated_to']}, pooled at 0 (BOS)")
    save_file(dict(sorted(staged.items())), CLIP_REF,
              metadata={"texts": json.dumps([t["prompt"] for t in texts])})
    return pairs, texts


# --- LPIPS --------------------------------------------------------------------

@torch.no_grad()
def tiny_squeezenet_features():
    torch.manual_seed(1)
    features = torchvision.models.squeezenet1_1(weights=None).features.eval()
    g = torch.Generator().manual_seed(5678)
    for _, mod in features.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.weight.copy_(0.1 * torch.randn(mod.weight.shape, generator=g))
            mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
    # what the file holds: float16, widened back for the reference
    for p in features.parameters():
        p.copy_(p.to(torch.float16).to(torch.float32))
    return features


def build_lpips(features):
    original = tm_lpips._get_tv_model_features

    def offline(net, pretrained=False):
        assert net == "squeezenet1_1"
        return features

    tm_lpips._get_tv_model_features = offline
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
    finally:
        tm_lpips._get_tv_model_features = original
    assert metric.reduction == "mean" and metric.normalize is False
    lp = metric.net
    assert not lp.training and lp.pnet_type == "squeeze" and lp.L == 7
    # backbone = ours, heads = the bundled file
    for k, (slice_, rng) in enumerate(zip(lp.net.slices, [range(0, 2), range(2, 5), range(5, 8),
                                                          range(8, 10), range(10, 11), range(11, 12),
                                                          range(12, 13)])):
        assert [int(n) for n, _ in slice_.named_children()] == list(rng)
        for n, m in slice_.named_children():
            assert m is features[int(n)]
    bundled = torch.load(os.path.join(os.path.dirname(tm_lpips.__file__), "lpips_models", "squeeze.pth"),
                         map_location="cpu")
    for key, value in bundled.items():
        assert torch.equal(lp.state_dict()[key], value), key
    return metric, bundled


def lpips_inputs(src, tgt, mask, unedit):
    """PIE-Bench's calculate_lpips: float32 / 255, times the mask, (1,3,H,W), * 2 - 1."""
    a = np.array(src).astype(np.float32) / 255
    b = np.array(tgt).astype(np.float32) / 255
    if unedit:
        keep = np.array(1 - mask).astype(np.float32)
        if keep.sum() == 0:
            return None
        a, b = a * keep, b * keep
    ta = torch.tensor(a).permute(2, 0, 1).unsqueeze(0)
    tb = torch.tensor(b).permute(2, 0, 1).unsqueeze(0)
    return ta * 2 - 1, tb * 2 - 1


@torch.no_grad()
def lpips_references(pairs):
    features = tiny_squeezenet_features()
    metric, bundled = build_lpips(features)
    weights = {f"features.{k}": v.to(torch.float16).contiguous()
               for k, v in features.state_dict().items()}
    weights.update({k: v.to(torch.float32).contiguous() for k, v in bundled.items()})
    save_file(dict(sorted(weights.items())), LPIPS_WEIGHTS,
              metadata={"generator": "tools/make_clip_lpips_fixtures.py"})

    staged = {}
    for name in PAIRS:
        src, tgt, mask = load_pair(name)
        for key, unedit in (("lpips", False), ("lpips_unedit_part", True)):
            inputs = lpips_inputs(src, tgt, mask, unedit)
            if inputs is None:
                pairs[name][key] = None
                continue
            value = metric(*inputs).item()
            metric.reset()
            pairs[name][key] = value
            if name == "wide" and not unedit:
                lp = metric.net
                total, layers = lp(*inputs, retperlayer=True)
                assert abs(total.item() - value) <= 1e-6 * abs(value)
                pairs[name]["lpips_layers"] = [r.item() for r in layers]
                outs = lp.net(lp.scaling_layer(inputs[0]))
                for k, f in enumerate(outs):
                    staged[f"wide/feat{k}"] = f.to(torch.float32).contiguous()
                    live = (f.abs().sum(1) > 0).float().mean().item()
                    print(f"  wide feat{k} {tuple(f.shape)}: positions with a nonzero feature {live:.3f}")
        shown = pairs[name]["lpips_unedit_part"]
        print(f"{name}: lpips={pairs[name]['lpips']:.8g}, lpips_unedit_part="
              f"{'null' if shown is None else f'{shown:.8g}'}")
    save_file(dict(sorted(staged.items())), LPIPS_REF,
              metadata={"generator": "tools/make_clip_lpips_fixtures.py"})

    # the file reads back to exactly the module's weights
    back = load_file(LPIPS_WEIGHTS)
    for k, v in features.state_dict().items():
        assert torch.equal(back[f"features.{k}"].to(torch.float32), v), k
    return {
        "weights": os.path.basename(LPIPS_WEIGHTS),
        "backbone_dtype_in_file": "float16",
        "scaling_shift": [-0.030, -0.088, -0.188],
        "scaling_scale": [0.458, 0.448, 0.450],
        "normalize_eps": 1e-8,
        "channels": [64, 128, 256, 384, 384, 512, 512],
        "slices": [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9], [10], [11], [12]],
        "maxpool": {"kernel": 3, "stride": 2, "padding": 0, "ceil_mode": True},
    }


# --- main ---------------------------------------------------------------------

def main():
    torch.set_num_threads(1)
    write_clip_folder()
    clip_pairs, texts = clip_references()
    lpips_info = lpips_references(clip_pairs)
    for name in PAIRS:
        src, _, _ = load_pair(name)
        clip_pairs[name]["height"], clip_pairs[name]["width"] = src.shape[:2]
    refs = {
        "generator": "tools/make_clip_lpips_fixtures.py",
        "versions": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "torchmetrics": torchmetrics.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "clip": {
            "model": "clip-tiny",
            "staged": os.path.basename(CLIP_REF),
            "texts": texts,
            "image_processor": "CLIPImageProcessor (torchvision backend): uint8 resize shortest edge "
                               "224 BICUBIC antialias (ATen native uint8 path), center crop 224, "
                               "fused (x - 255 mean) / (255 std) in float32",
            "pooling": "argmax(input_ids) (text_config.eos_token_id == 2)",
            "score": "max(100 * cos(image_embeds, text_embeds), 0); _raw without the clamp",
        },
        "lpips": lpips_info,
        "pairs": clip_pairs,
    }
    with open(REFS_JSON, "w") as f:
        f.write(json.dumps(refs, sort_keys=True, indent=1) + "\n")

    new, copied = 0, 0
    paths = [CLIP_REF, LPIPS_WEIGHTS, LPIPS_REF, REFS_JSON] + [
        os.path.join(CLIP_DIR, fn) for fn in sorted(os.listdir(CLIP_DIR))]
    for p in paths:
        size = os.path.getsize(p)
        same = os.path.basename(p) in TOKENIZER_FILES and os.path.dirname(p) == CLIP_DIR
        if same:
            copied += size
        else:
            new += size
        print(f"{os.path.relpath(p, ROOT)}: {size} bytes{' (copy of sd15-tiny/tokenizer)' if same else ''}")
    print(f"new content {new} bytes; tokenizer copies {copied} bytes (identical to committed files, "
          f"so no new git objects); on disk {new + copied} bytes")
    assert new < SIZE_LIMIT


if __name__ == "__main__":
    main()
