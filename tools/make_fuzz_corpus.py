"""Writes the seed corpus of the fuzz targets (tools/fuzz/corpus/<target>/):
valid inputs to start from, and every bad input the robustness issue lists
(non-float and non-finite tensors, inconsistent configs, damaged inversion
files, odd images). The `fuzz_corpus` test replays every file through the
targets on stable Rust, so each of these stays a regression test.

    python3 tools/make_fuzz_corpus.py        # from the repository root

Needs Pillow (JPEG with an EXIF orientation); everything else is written by
hand with the standard library, so the bytes are exactly what is named.
Inputs that crashed a target are added by hand as `crash-<what>` files.
"""

import io
import json
import pathlib
import struct
import zlib

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tools" / "fuzz" / "corpus"
MODELS = ROOT / "kernels-tests" / "fixtures" / "models"

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I8": 1, "U8": 1}


def safetensors(tensors, metadata=None, header_extra=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_extra:
        header.update(header_extra)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def f16(*values):
    return struct.pack(f"<{len(values)}e", *values)


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def seed_safetensors():
    t = "safetensors"
    write(t, "valid-f32", safetensors([("a.weight", "F32", [2, 2], f32(1, 2, 3, 4)),
                                      ("a.bias", "F32", [2], f32(0, 1))]))
    write(t, "valid-f16-meta", safetensors([("w", "F16", [3], f16(1, -2, 0.5))],
                                           {"format": "pt"}))
    write(t, "bf16-inf", safetensors([("w", "BF16", [2], b"\x80\x7f\x00\x00")]))
    write(t, "f32-nan", safetensors([("w", "F32", [3], f32(1, float("nan"), 3))]))
    write(t, "f16-inf", safetensors([("w", "F16", [2], f16(1, float("inf")))]))
    write(t, "f64", safetensors([("w", "F64", [2], struct.pack("<2d", 1, 2))]))
    write(t, "i8", safetensors([("w", "I8", [4], b"\x01\x02\x03\x04")]))
    write(t, "i64-position-ids", safetensors([("position_ids", "I64", [1, 2],
                                               struct.pack("<2q", 0, 1))]))
    write(t, "empty", b"")
    write(t, "header-length-huge", struct.pack("<Q", 1 << 62) + b"{}")
    write(t, "header-truncated", struct.pack("<Q", 64) + b'{"w":{"dtype":"F32"')
    write(t, "not-json-object", safetensors([]).replace(b"{}", b"[]"))
    write(t, "offsets-overlap", safetensors([], header_extra={
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}) + f32(1, 2, 3))
    write(t, "shape-overflow", safetensors([], header_extra={
        "a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 0]}}))
    write(t, "zero-dim", safetensors([("w", "F32", [0, 3], b"")]))
    write(t, "scalar", safetensors([("w", "F32", [], f32(7))]))


def seed_config():
    t = "config"
    for family in ("sd15-tiny", "sd2-tiny"):
        for part in ("unet", "vae", "text_encoder"):
            write(t, f"{family}-{part}", (MODELS / family / part / "config.json").read_bytes())
        write(t, f"{family}-scheduler",
              (MODELS / family / "scheduler" / "scheduler_config.json").read_bytes())
    unet = json.loads((MODELS / "sd15-tiny" / "unet" / "config.json").read_bytes())
    vae = json.loads((MODELS / "sd15-tiny" / "vae" / "config.json").read_bytes())
    text = json.loads((MODELS / "sd15-tiny" / "text_encoder" / "config.json").read_bytes())
    sched = json.loads((MODELS / "sd15-tiny" / "scheduler" / "scheduler_config.json").read_bytes())

    def variant(name, base, **changes):
        write(t, name, json.dumps({**base, **changes}).encode())

    write(t, "empty-object", b"{}")
    write(t, "not-json", b"{\"in_channels\": 4,")
    variant("unet-groups-0", unet, norm_num_groups=0)
    variant("unet-groups-7", unet, norm_num_groups=7)
    variant("unet-head-dim-0", unet, attention_head_dim=0)
    variant("unet-heads-empty-list", unet, attention_head_dim=[])
    variant("unet-heads-not-dividing", unet, attention_head_dim=[3, 5])
    variant("unet-eight-blocks", unet, block_out_channels=[32] * 8,
            down_block_types=["DownBlock2D"] * 8, up_block_types=["UpBlock2D"] * 8)
    variant("unet-blocks-mismatch", unet, down_block_types=["DownBlock2D"])
    variant("unet-channels-0", unet, block_out_channels=[0, 0])
    variant("vae-scaling-0", vae, scaling_factor=0.0)
    variant("vae-scaling-negative", vae, scaling_factor=-1.0)
    variant("vae-groups-7", vae, norm_num_groups=7)
    variant("text-heads-0", text, num_attention_heads=0)
    variant("text-heads-not-dividing", text, num_attention_heads=5)
    variant("scheduler-betas-above-1", sched, beta_end=2.0)
    variant("scheduler-betas-negative", sched, beta_start=-0.1)
    variant("scheduler-train-huge", sched, num_train_timesteps=10 ** 12)
    variant("scheduler-offset-huge", sched, steps_offset=10 ** 6)
    variant("scheduler-v-prediction", sched, prediction_type="v_prediction")


def seed_ldm():
    """The key set of the tiny single-file checkpoints, every tensor shrunk to
    one or two elements: the key mapping runs; shapes then disagree."""
    t = "ldm"
    for family in ("sd15-tiny", "sd2-tiny"):
        raw = (MODELS / f"{family}.safetensors").read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        tensors = []
        for name, info in sorted(header.items()):
            if name == "__metadata__":
                continue
            shape = [1] * len(info["shape"])
            tensors.append((name, "F32", shape, f32(0.5)))
        write(t, f"{family}-keys", safetensors(tensors))
    write(t, "no-known-prefix", safetensors([("foo.weight", "F32", [1], f32(1))]))
    write(t, "unet-only", safetensors([
        ("model.diffusion_model.input_blocks.0.0.weight", "F32", [1, 1, 1, 1], f32(1))]))


def inversion(latents, steps=1, hw=(1, 1), dtype="F32", meta=None, channels=4):
    pack = {"F32": lambda v: f32(*v), "F16": lambda v: f16(*v),
            "F64": lambda v: struct.pack(f"<{len(v)}d", *v),
            "I8": lambda v: bytes(int(x) & 0xff for x in v)}[dtype]
    n = channels * hw[0] * hw[1]
    tensors = [("z0", dtype, [1, channels, *hw], pack([0.25] * n))]
    for t, value in latents:
        tensors.append((f"inverted/{t}", dtype, [1, channels, *hw], pack([value] * n)))
    md = {"inversion_steps": str(steps), "latent_hw": f"{hw[0]}x{hw[1]}"}
    md.update(meta or {})
    return safetensors(tensors, md)


def seed_inversion():
    t = "inversion"
    # First byte: latent size (0 -> 1x1), second: sampling steps - 1.
    one = b"\x00\x00"
    two = b"\x00\x01"
    # SD's scheduler (steps_offset 1): 1 step -> [1]; 2 steps -> [501, 1].
    write(t, "valid-1-step", one + inversion([(1, 0.5)]))
    write(t, "valid-2-steps", two + inversion([(1, 0.5), (501, 0.7)], steps=2))
    write(t, "valid-with-model", one + inversion([(1, 0.5)], meta={"model": "0123456789abcdef"}))
    write(t, "incomplete", two + inversion([(1, 0.5)], steps=2))
    write(t, "does-not-cover", two + inversion([(1, 0.5)], steps=1))
    write(t, "f64", one + inversion([(1, 0.5)], dtype="F64"))
    write(t, "f16", one + inversion([(1, 0.5)], dtype="F16"))
    write(t, "i8", one + inversion([(1, 1)], dtype="I8"))
    write(t, "nan", one + inversion([(1, float("nan"))]))
    write(t, "inf", one + inversion([(1, float("inf"))]))
    write(t, "no-metadata", one + safetensors([("z0", "F32", [1, 4, 1, 1], f32(0, 0, 0, 0))]))
    write(t, "steps-0", one + inversion([(1, 0.5)], steps=0))
    write(t, "steps-huge", one + inversion([(1, 0.5)], steps=10 ** 9))
    write(t, "wrong-size", b"\x11\x00" + inversion([(1, 0.5)]))
    write(t, "three-channels", one + inversion([(1, 0.5)], channels=3))
    write(t, "bad-step-name", one + inversion([("x", 0.5)]))


def png(w, h, mode="RGB", fill=None):
    img = Image.new(mode, (w, h), fill or (200, 100, 50, 128)[:len(mode)])
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def png_claiming(w, h):
    """A PNG whose header claims w x h with one tiny, wrong IDAT."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def jpeg_oriented(w, h, orientation):
    img = Image.new("RGB", (w, h), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes(), quality=50)
    return out.getvalue()


def seed_image():
    t = "image"
    none = b"\x00\x00"          # default size rule
    w64 = b"\x05\x05"           # --width 64 --height 64
    write(t, "png-1x1", none + png(1, 1))
    write(t, "png-rgba", none + png(8, 8, "RGBA"))
    write(t, "png-62-to-1", w64 + png(62, 1))
    write(t, "png-gray", none + png(4, 4, "L", 7))
    write(t, "png-claims-99968", none + png_claiming(99968, 99968))
    write(t, "png-claims-99968-wide", none + png_claiming(99968, 64))
    write(t, "png-requested-huge", b"\xff\xff" + png(2, 2))
    write(t, "png-requested-odd", b"\x06\x06" + png(2, 2))
    write(t, "jpeg-exif-rotate90", none + jpeg_oriented(16, 8, 6))
    write(t, "jpeg-exif-flip", w64 + jpeg_oriented(8, 8, 2))
    write(t, "png-truncated", none + png(8, 8)[:40])
    write(t, "gif", none + b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    write(t, "empty", none)


if __name__ == "__main__":
    for f in (seed_safetensors, seed_config, seed_ldm, seed_inversion, seed_image):
        f()
    for d in sorted(OUT.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
