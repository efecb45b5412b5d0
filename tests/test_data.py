"""Decoding every odd kind of upload, refusing what cannot be used, and the crop geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import encode
from PIL import Image

from resnet_lab import data
from resnet_lab.data import ImageError, decode_image


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


def test_absurd_aspect_ratio():
    with pytest.raises(ImageError, match="aspect ratio"):
        decode_image(encode(Image.new("RGB", (3000, 10))))


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 500), (33, 77)])
def test_crop_box_matches_timm_transform(size):
    """A marker image through timm's transform lands where crop_box says the crop is."""
    from resnet_lab import build

    cfg = build("resnet18").pretrained_cfg
    w, h = size
    left, top, right, bottom = data.crop_box(size, cfg)
    assert 0 <= left < right <= w + 1e-6 and 0 <= top < bottom <= h + 1e-6
    xs = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    # encode pixel coordinates as intensities and read them back at the crop's corners
    img = Image.fromarray(np.stack([xs / w * 255, ys / h * 255, np.zeros_like(xs)], -1).astype(np.uint8))
    cfg_nonorm = {**cfg, "mean": (0, 0, 0), "std": (1, 1, 1)}
    x = data.eval_transform(cfg_nonorm)(img)
    assert isinstance(x, torch.Tensor)
    x0 = float(x[0, :, 0].mean()) * w  # left column of the crop, in original pixels
    x1 = float(x[0, :, -1].mean()) * w
    y0 = float(x[1, 0, :].mean()) * h
    y1 = float(x[1, -1, :].mean()) * h
    tol = max(w, h) / 40 + 2
    assert abs(x0 - left) < tol and abs(x1 - (right - 1)) < tol
    assert abs(y0 - top) < tol and abs(y1 - (bottom - 1)) < tol


def test_imagenet_labels_offline():
    labels = data.imagenet_labels()
    assert len(labels) == 1000 and "tench" in labels[0].lower() and "goldfish" in labels[1].lower()
