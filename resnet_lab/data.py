"""Getting images into a network: robust decoding, timm's eval transform, labels.

Every upload goes through `decode_image`, which either returns an 8-bit RGB
image that means what the user sees, or raises `ImageError` with a message a
person can act on. `crop_box` says which part of the original image the eval
transform keeps, so heatmaps can be laid back onto what the user uploaded.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # a 64-megapixel photo decodes to ~190 MB of RGB: more is a bomb, not a photo
MAX_ASPECT = 25.0
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageError(ValueError):
    """An upload we cannot use; the message is meant for the user."""


def _open(src: ImageInput) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(src)
    data = src if isinstance(src, bytes) else None
    if data is None:
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"cannot read the file: {e.strerror or e}") from e
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        raise ImageError("SVG is a vector format and is not supported: export it as PNG or JPEG first")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {MAX_PIXELS:,})") from e
    except UnidentifiedImageError as e:
        raise ImageError("this file is not an image we can read (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)") from e


def _check_size(w: int, h: int) -> None:
    if w < 1 or h < 1:
        raise ImageError("the image has no pixels")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is {w}x{h} = {w * h:,} pixels, more than the limit of {MAX_PIXELS:,}; "
            "downscale it and try again"
        )
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ImageError(f"the image is {w}x{h}: an aspect ratio above {MAX_ASPECT:.0f}:1 cannot be classified")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB that looks like the original: alpha on white, 16-bit scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.round(arr * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(src: ImageInput) -> Image.Image:
    """Bytes, a path, a PIL image or an array -> an upright 8-bit RGB PIL image, or `ImageError`."""
    img = _open(src)
    _check_size(*img.size)  # from the header: before a single pixel is decoded
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF/WebP/APNG: the first frame
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {MAX_PIXELS:,})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"the image file is truncated or corrupt ({e})") from e
    return _to_rgb(img)


# ----------------------------------------------------------------------------- transforms


def data_config(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's resolved eval config (input size, crop, interpolation, mean/std), test size preferred."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, pretrained_cfg=dict(pretrained_cfg), use_test_size=True)


def eval_transform(pretrained_cfg: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for these weights: resize, center crop, to tensor, normalize."""
    from timm.data import create_transform

    return create_transform(**data_config(pretrained_cfg), is_training=False)


def crop_box(size: tuple[int, int], pretrained_cfg: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the original image that the eval transform keeps.

    Mirrors timm's center mode (torchvision `Resize(shorter side)` then
    `CenterCrop`), so a heatmap over the network input maps back onto the upload.
    """
    cfg = data_config(pretrained_cfg)
    crop_h, crop_w = cfg["input_size"][1:]
    w, h = size
    if cfg.get("crop_mode", "center") != "center" or crop_h != crop_w:
        raise NotImplementedError("only timm's square center crop is supported")
    scale = math.floor(crop_h / cfg["crop_pct"])
    short, long = min(w, h), max(w, h)
    new_short, new_long = scale, int(scale * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    sx, sy = w / new_w, h / new_h
    return left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy


# ----------------------------------------------------------------------------- labels


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, from timm's bundled `ImageNetInfo` (no network)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))
