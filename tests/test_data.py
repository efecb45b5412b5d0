"""Decoding every odd kind of upload, refusing what cannot be used, and the crop geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import encode
from PIL import Image

from resnet_lab.data import images as data
from resnet_lab.data.images import ImageError, decode_image


def test_plain_rgb_round_trips(photo):
    out = decode_image(encode(photo))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(photo))


def test_grayscale_and_cmyk_become_rgb(photo):
    gray = decode_image(encode(photo.convert("L")))
    assert gray.mode == "RGB" and np.array_equal(np.asarray(gray)[..., 0], np.asarray(photo.convert("L")))
    cmyk = decode_image(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk, float) - np.asarray(photo, float)).mean() < 12


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 10))
    out = np.asarray(decode_image(encode(rgba)))
    assert tuple(out[5, 15]) == (255, 255, 255)  # fully transparent -> white, not black or red
    assert tuple(out[5, 5]) == (0, 0, 255)


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0
    out = np.asarray(decode_image(encode(p)))
    assert tuple(out[0, 0]) == (200, 10, 10) and tuple(out[0, 7]) == (255, 255, 255)


def test_16bit_is_scaled_not_clipped(photo):
    gray8 = np.asarray(photo.convert("L"))
    img16 = Image.fromarray(gray8.astype(np.uint16) * 257)  # mode I;16
    assert img16.mode == "I;16"
    out = np.asarray(decode_image(encode(img16)))
    assert np.array_equal(out[..., 0], gray8)  # PIL's own convert("L") would make this almost white


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_16bit_and_float_images_become_8_bits_in_strips_not_whole_float64_copies(mode):
    """They went through float64 copies of the whole image, ~24 bytes a pixel at the peak (1.5 GB for a 64 MP
    16-bit PNG); now strip by strip: the 8-bit result and a few strips' working copies. numpy reports its arrays
    to tracemalloc, so the peak counts them (PIL's own decoded image, in C, is not counted either way)."""
    import tracemalloc

    w, h = 3000, 2000
    ramp = np.linspace(0, 1, w * h).reshape(h, w)
    img = Image.fromarray((ramp * 65535).astype(np.uint16) if mode == "I;16" else ramp.astype(np.float32))
    src = encode(img, "PNG" if mode == "I;16" else "TIFF")
    assert Image.open(io.BytesIO(src)).mode == mode
    tracemalloc.start()
    try:
        decoded = decode_image(src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = np.asarray(decoded)  # after the count: this copies the RGB result
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]  # still scaled, not clipped
    assert peak < w * h + 8 * 8 * data._STRIP_PIXELS, f"{peak / (w * h):.1f} bytes a pixel"



@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_a_row_longer_than_a_strip_is_scaled_in_blocks_of_columns(mode):
    """A strip was whole rows, so one row of a 30,000,000x1 16-bit PNG (58 KB, under every pixel limit) was a
    float64 strip with its working copies: 888 MB at the peak. Measured on `_to_8bit` alone (PIL's TIFF reader
    holds a one-strip file's bytes in Python while decoding, which is not this function's)."""
    import tracemalloc

    w = 8 * data._STRIP_PIXELS
    ramp = np.linspace(0, 1, w).reshape(1, w)
    img = Image.fromarray((ramp * 65535).astype(np.uint16) if mode == "I;16" else ramp.astype(np.float32))
    assert img.mode == mode
    tracemalloc.start()
    try:
        out = data._to_8bit(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.mode == "L" and np.asarray(out)[0, [0, -1]].tolist() == [0, 255]  # scaled, not clipped
    assert peak < w + 8 * 8 * data._STRIP_PIXELS, f"{peak / w:.1f} bytes a pixel"

def test_exif_orientation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(encode(photo, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (photo.height, photo.width)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(decode_image(raw))
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 50


def test_tiny_image_is_upsampled_by_the_transform():
    from resnet_lab import build

    tiny = decode_image(encode(Image.new("RGB", (3, 2), (10, 200, 30))))
    x = data.eval_transform(build("resnet18").pretrained_cfg)(tiny)
    assert x.shape == (3, 224, 224)


@pytest.mark.parametrize("raw,match", [
    (b"", "empty"),
    (b"hello, this is text and not an image at all", "not an image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    (b"<svg width='10' height='10'></svg>", "SVG"),
])
def test_unusable_input_has_a_clear_message(raw, match):
    with pytest.raises(ImageError, match=match):
        decode_image(raw)


def test_truncated_file(photo):
    raw = encode(photo, "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(raw[: len(raw) // 3])
    png = encode(photo)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(png[: len(png) // 2])


def test_too_many_pixels_is_refused_before_decoding(monkeypatch):
    big = encode(Image.new("L", (3000, 3000)))
    monkeypatch.setattr(data, "MAX_PIXELS", 4_000_000)
    with pytest.raises(ImageError, match=r"9,000,000 pixels, more than the limit of 4,000,000"):
        decode_image(big)


def test_a_banner_classifies_and_a_strip_is_refused_by_what_the_resize_makes():
    from resnet_lab import build

    cfg = build("resnet18").pretrained_cfg
    banner = decode_image(encode(Image.new("RGB", (2000, 40), (90, 120, 200))), min_side=data.resize_side(cfg))
    data.check_transformable(banner.size, cfg)  # 12800x256 after the resize: 3.3 MP, fine
    assert data.eval_transform(cfg)(banner).shape == (3, 224, 224)
    strip = decode_image(encode(Image.new("L", (20000, 1))))  # decoding alone: 20,000 pixels are no risk
    with pytest.raises(ImageError, match=r"resizes its shorter side to 256 px.*5,120,000x256.*at most about 244:1"):
        data.check_transformable(strip.size, cfg)
    assert data.MAX_RESIZED_PIXELS // 256 // 256 == 244  # the ratio the message quotes


def _jpeg(size: tuple[int, int], orientation: int = 1) -> bytes:
    rng = np.random.default_rng(size[0] * 7919 + size[1])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=80, exif=exif.tobytes())


@pytest.mark.parametrize("min_side", [20, 37, 64])
@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_min_side_is_never_undershot_and_never_twice_exceeded(min_side, orientation, fmt):
    """Around every draft scale (1/2, 1/4, 1/8): the shorter side lands in [min_side, 2 * min_side)."""
    for scale in (1, 2, 4, 8):
        for short in (min_side * scale - 1, min_side * scale, min_side * scale + 1):
            for w, h in ((short, short * 4 // 3 + 1), (short * 3 // 2, short)):
                raw = _jpeg((w, h), orientation)
                if fmt == "PNG":
                    img = Image.open(io.BytesIO(raw))
                    raw = encode(img, "PNG", exif=img.getexif().tobytes())
                out = decode_image(raw, min_side=min_side)
                upright = (h, w) if orientation in (6, 8) else (w, h)
                full = decode_image(raw)
                assert full.size == upright
                if short < min_side:  # never enlarged
                    assert out.size == upright
                    continue
                assert min_side <= min(out.size) < 2 * min_side, (fmt, w, h, out.size)
                # the same shape, rotated like the full decode
                assert (out.size[0] >= out.size[1]) == (upright[0] >= upright[1])
                assert abs(out.size[0] / out.size[1] - upright[0] / upright[1]) < 0.1


def test_jpeg_and_mpo_are_scaled_while_decoding():
    """1600x1200 at min_side 100: JPEG (and MPO, what some phones write) take the DCT draft at 1/8 (200x150, then
    no further reduce); a PNG, decoded in full, is reduced by 12 (134x100)."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    assert decode_image(encode(img, "JPEG"), min_side=100).size == (200, 150)
    mpo = encode(img, "MPO", save_all=True, append_images=[img.rotate(180)])
    assert decode_image(mpo, min_side=100).size == (200, 150)
    assert decode_image(encode(img, "PNG"), min_side=100).size == (134, 100)
    pil = Image.open(io.BytesIO(encode(img, "JPEG")))
    assert decode_image(pil, min_side=100).size == (134, 100) and pil.size == (1600, 1200)  # the caller's untouched


def test_reduced_decode_keeps_exif_orientation_content(photo):
    """The reduced image is the full one, smaller: same orientation, same picture (not a mirrored copy)."""
    big = photo.resize((1280, 960), Image.Resampling.BICUBIC)
    for orientation in (1, 3, 6, 8, 2, 5, 7):
        exif = Image.Exif()
        exif[0x0112] = orientation
        raw = encode(big, "JPEG", quality=95, exif=exif.tobytes())
        full = decode_image(raw)
        small = decode_image(raw, min_side=100)
        assert min(small.size) < 2 * 100
        shrunk = np.asarray(full.resize(small.size, Image.Resampling.BOX), float)
        assert np.abs(shrunk - np.asarray(small, float)).mean() < 6, orientation


def _offered_geometries() -> dict[tuple[int, float], str]:
    """Every distinct (input size, crop_pct) the app's timm tags resolve to, with one tag that has it (offline)."""
    import timm

    from resnet_lab.models.weights import list_tags

    found: dict[tuple[int, float], str] = {}
    for depth in (18, 34, 50, 101, 152):
        for tag in list_tags(f"resnet{depth}"):
            cfg = data.eval_config(timm.models.get_pretrained_cfg(tag).to_dict())
            found.setdefault((cfg["input_size"][-1], cfg["crop_pct"]), tag)
    return found


GEOMETRIES = _offered_geometries()


def test_the_offered_tags_span_several_geometries():
    # what the parametrization below covers: 224 px and 288 px, crops from 0.875 to 1.0
    assert {224, 288} <= {size for size, _ in GEOMETRIES} and len(GEOMETRIES) >= 4
    assert {0.875, 1.0} <= {pct for _, pct in GEOMETRIES}


def _marker_check(img: Image.Image, cfg: dict, box: tuple[float, float, float, float]) -> None:
    """Pixel coordinates encoded as intensities, read back at the crop's edges, land on `box`."""
    w, h = img.size
    cfg_nonorm = {**cfg, "mean": (0, 0, 0), "std": (1, 1, 1)}
    x = data.eval_transform(cfg_nonorm)(img)
    assert isinstance(x, torch.Tensor) and x.shape[-1] == data.eval_config(cfg)["input_size"][-1]
    left, top, right, bottom = box
    x0 = float(x[0, :, 0].mean()) * w  # left column of the crop, in the image's pixels
    x1 = float(x[0, :, -1].mean()) * w
    y0 = float(x[1, 0, :].mean()) * h
    y1 = float(x[1, -1, :].mean()) * h
    # intensities step every max(w, h) / 255 px; measured errors stay under 2.5 steps over all geometries. A crop_box
    # that took crop 0.95 for 1.0 would be 6 px off at 320x240, more elsewhere
    tol = 3 * max(w, h) / 255 + 1
    assert abs(x0 - left) < tol and abs(x1 - (right - 1)) < tol
    assert abs(y0 - top) < tol and abs(y1 - (bottom - 1)) < tol


def _marker(w: int, h: int) -> Image.Image:
    xs = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    return Image.fromarray(np.stack([xs / w * 255, ys / h * 255, np.zeros_like(xs)], -1).astype(np.uint8))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES), ids=lambda g: f"{g[0]}px-crop{g[1]}")
@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 500), (33, 77)])
def test_crop_box_matches_timm_transform(size, geometry):
    """A marker image through timm's transform lands where crop_box says the crop is, for every offered geometry."""
    import timm

    cfg = timm.models.get_pretrained_cfg(GEOMETRIES[geometry]).to_dict()
    w, h = size
    box = data.crop_box(size, cfg)
    assert 0 <= box[0] < box[2] <= w + 1e-6 and 0 <= box[1] < box[3] <= h + 1e-6
    _marker_check(_marker(w, h), cfg, box)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES), ids=lambda g: f"{g[0]}px-crop{g[1]}")
def test_crop_box_holds_on_the_reduced_decode(geometry):
    """crop_box is proportional: on the image decoded at min_side=resize_side it marks the same region."""
    import timm

    cfg = timm.models.get_pretrained_cfg(GEOMETRIES[geometry]).to_dict()
    w, h = 1600, 1200
    small = decode_image(encode(_marker(w, h)), min_side=data.resize_side(cfg))
    assert small.size[0] < w and min(small.size) >= data.resize_side(cfg)
    _marker_check(small, cfg, data.crop_box(small.size, cfg))
    sx, sy = w / small.size[0], h / small.size[1]
    full = data.crop_box((w, h), cfg)
    reduced = data.crop_box(small.size, cfg)
    for a, b, s in zip(full, reduced, (sx, sy, sx, sy)):
        assert abs(a - b * s) <= s  # within one reduced pixel of the full-size box


def test_imagenet_labels_offline():
    labels = data.imagenet_labels()
    assert len(labels) == 1000 and "tench" in labels[0].lower() and "goldfish" in labels[1].lower()
