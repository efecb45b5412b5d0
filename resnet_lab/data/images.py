"""Getting images into a network: robust decoding, timm's eval transform, labels.

Every upload goes through `decode_image`, which either returns an 8-bit RGB
image that means what the user sees, or raises `ImageError` with a message a
person can act on, whatever is wrong with the file. Given `min_side` (for a
network, `resize_side(cfg)`), it decodes no larger than needed, so a phone photo
costs a fraction of its full decode. `check_transformable` refuses what the eval
transform's resize would blow up (a 20000x1 strip), and `crop_box` says which
part of the image the transform keeps, so heatmaps can be laid back onto it.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from functools import cache
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # a 64-megapixel photo decodes to ~190 MB of RGB: more is a bomb, not a photo
# The eval transform resizes the shorter side to `resize_side`, so a long thin image grows: 20000x1 would become
# 5,120,000x256. Its 8-bit RGB resize output is capped at 48 MB, what a 16 MP phone photo decodes to; that
# still lets a 2000x40 banner through (12800x256 = 3.3 MP) and at 256 px allows shapes up to about 244:1.
MAX_RESIZED_PIXELS = 16_000_000
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

EXIF_ORIENTATION = 0x0112  # EXIF tag; the same table as `ImageOps.exif_transpose`, applied after any downscale
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# modes whose `Image.reduce` (a box average) means the same as in RGB; palette, 1-bit, 16-bit and float images
# (whose RGB scaling depends on their extremes) go to RGB first
_REDUCE_FIRST = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
_CORRUPT = "the image file is truncated or corrupt"
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})  # more than 8 bits a pixel: scaled by `_to_8bit`
_STRIP_PIXELS = 2**18  # pixels `_to_8bit` scales at a time (2 MB of float64)
# the formats PIL may open (JPEG's reader opens MPO, phones' multi-frame JPEG, too), not every one it knows:
# its ICO reader decodes the embedded PNG while opening, at that PNG's size whatever the header says (a
# 12000x12000 PNG behind a 16x16 icon: 144 MB before any size check)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_UNSUPPORTED = "this file is not an image we can read (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)"


class ImageError(ValueError):
    """An upload we cannot use; the message is meant for the user."""


def _reason(e: BaseException) -> str:
    """PIL's own words for what went wrong, short; the type name where it says nothing."""
    text = " ".join(str(e).split())[:160]
    return text or type(e).__name__


def open_image(src: ImageInput) -> Image.Image:
    """Open lazily (the header only, no pixel decoded), so sizes and EXIF can be checked first; `ImageError` else."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        try:
            return Image.fromarray(src)
        except Exception as e:  # any dtype/shape PIL cannot take is the caller's bad input
            raise ImageError(f"an array of shape {src.shape} and dtype {src.dtype} is not an image") from e
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
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {MAX_PIXELS:,})") from e
    except UnidentifiedImageError as e:
        raise ImageError(_UNSUPPORTED) from e
    except MemoryError as e:
        raise ImageError("the image header asks for more memory than a photo needs; the file is corrupt") from e
    except Exception as e:  # a plugin choking on a corrupt header (struct.error, ValueError, ...)
        raise ImageError(f"{_CORRUPT} ({_reason(e)})") from e


def check_header(path: str | os.PathLike | IO[bytes]) -> tuple[int, int]:
    """(width, height) from a file's header alone, no pixel decoded and no more of the file read than the header:
    `ImageError` for a file PIL cannot identify or one over the pixel limit. What a scan of a large folder (or a
    zip's members, as open file objects) can afford per file; a truncated or corrupt body is found when the file
    is decoded."""
    return read_header(path)[:2]


def read_header(src: str | os.PathLike | IO[bytes]) -> tuple[int, int, str, str]:
    """(width, height, format, mode) from the header alone, as `check_header` (which see)."""
    try:
        with Image.open(src, formats=FORMATS) as img:
            size, info = img.size, (img.format or "", img.mode)
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {MAX_PIXELS:,})") from e
    except UnidentifiedImageError as e:
        raise ImageError(_UNSUPPORTED) from e
    except OSError as e:  # the file system's (with an errno), or PIL's on a header cut short
        raise ImageError(f"cannot read the file: {e.strerror}" if e.errno else f"{_CORRUPT} ({_reason(e)})") from e
    except Exception as e:  # a plugin choking on a corrupt header
        raise ImageError(f"{_CORRUPT} ({_reason(e)})") from e
    check_pixels(*size)
    return (*size, *info)


def check_pixels(w: int, h: int) -> None:
    """Refuse an empty image or one over MAX_PIXELS (a decompression bomb) before any pixel is decoded."""
    if w < 1 or h < 1:
        raise ImageError("the image has no pixels")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is {w}x{h} = {w * h:,} pixels, more than the limit of {MAX_PIXELS:,}; "
            "downscale it and try again"
        )


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image as 8-bit L: integers over 255 scaled from 0..65535 (I;16 always), floats
    stretched from their minimum to their maximum. Strip by strip: the float64 working copies hold `_STRIP_PIXELS`
    at a time, not 8 bytes for every pixel (a 64 MP 16-bit image took 0.5 GB a copy, several at once); a strip is
    also cut into blocks of columns (one row of a 30,000,000x1 image was a strip: 888 MB at the peak)."""
    w, h = img.size
    cols = min(w, _STRIP_PIXELS)
    rows = max(1, _STRIP_PIXELS // cols)

    def strips() -> Iterator[tuple[int, int, np.ndarray]]:
        for y in range(0, h, rows):
            for x in range(0, w, cols):
                yield y, x, np.asarray(img.crop((x, y, min(w, x + cols), min(h, y + rows))), dtype=np.float64)

    if img.mode == "F":
        lo = float(np.min([s.min() for *_, s in strips()]))  # a NaN anywhere makes the image black, as it did
        hi = float(np.max([s.max() for *_, s in strips()]))
        span, offset = (hi - lo if hi > lo else math.inf), lo
    else:
        wide = img.mode.startswith("I;16") or max(float(s.max()) for *_, s in strips()) > 255
        span, offset = (65535.0 if wide else 255.0), 0.0
    out = np.empty((h, w), np.uint8)
    for y, x, strip in strips():
        out[y:y + rows, x:x + cols] = np.clip(np.round(np.nan_to_num((strip - offset) / span * 255.0)), 0, 255)
    return Image.fromarray(out, "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB that looks like the original: alpha on white, 16-bit scaled, not clipped."""
    if img.mode in WIDE_MODES:
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _reduce(img: Image.Image, min_side: int | None) -> Image.Image:
    """Shrink by the largest integer factor that keeps the shorter side >= `min_side` (none if it is None)."""
    factor = min(img.size) // min_side if min_side else 1
    return img.reduce(factor) if factor >= 2 else img


def _decode(img: Image.Image, min_side: int | None, own: bool) -> Image.Image:
    if getattr(img, "is_animated", False):
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
    if own and min_side and isinstance(img, JpegImagePlugin.JpegImageFile):  # JPEG and MPO (phones' multi-frame)
        # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding: PIL picks the largest s with s * min_side <=
        # both sides, so the shorter side stays >= min_side (never on a caller's own image object: it mutates it)
        img.draft(None, (min_side, min_side))
    img.load()
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if img.mode in WIDE_MODES:
        img = _to_8bit(img)  # L, reduced before it becomes RGB (three equal channels: the same pixels, 1/3 the work)
    if img.mode in _REDUCE_FIRST:
        img = _to_rgb(_reduce(img, min_side))
    else:
        img = _reduce(_to_rgb(img), min_side)
    method = _TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def decode_image(src: ImageInput, min_side: int | None = None) -> Image.Image:
    """Bytes, a path, a PIL image or an array -> an upright 8-bit RGB PIL image, or `ImageError`.

    With `min_side`, decode no larger than needed: the image is downscaled by an
    integer factor (JPEG: while decoding, in the DCT domain; other formats:
    `Image.reduce` right after) while its shorter side stays >= `min_side`. A
    12 MP phone photo then costs a fraction of its full decode (see
    benchmarks/bench_decode.py), and since the shorter side does not change under
    rotation, EXIF orientation is applied to the reduced image. Every failure on
    a bad file, whatever PIL or numpy raises, becomes `ImageError`.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels, not {min_side}")
    img = open_image(src)
    check_pixels(*img.size)  # from the header: before a single pixel is decoded
    try:
        return _decode(img, min_side, own=not isinstance(src, Image.Image))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {MAX_PIXELS:,})") from e
    except MemoryError as e:
        raise ImageError("decoding this file needs more memory than a photo does; the file is corrupt") from e
    except Exception as e:  # OSError, SyntaxError, struct.error, IndexError, ...: all mean a bad file
        raise ImageError(f"{_CORRUPT} ({_reason(e)})") from e


# ----------------------------------------------------------------------------- transforms


def eval_config(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's resolved eval config (input size, crop, interpolation, mean/std), test size preferred."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, pretrained_cfg=dict(pretrained_cfg), use_test_size=True)


def eval_transform(pretrained_cfg: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for these weights: resize, center crop, to tensor, normalize."""
    from timm.data import create_transform

    return create_transform(**eval_config(pretrained_cfg), is_training=False)


def eval_shape(size: int, scale_side: int, interpolation: str) -> Callable[[Image.Image], Image.Image]:
    """The eval transform's geometry alone (shorter side to `scale_side`, centre crop to `size`), PIL in and out:
    what a folder held in memory stores, and where the small-image training recipe starts."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    return T.Compose([T.Resize(scale_side, interpolation=str_to_interp_mode(interpolation)), T.CenterCrop(size)])


def resize_side(pretrained_cfg: dict[str, Any]) -> int:
    """The shorter side timm's eval transform resizes to, floor(crop / crop_pct): the `min_side` to decode at."""
    cfg = eval_config(pretrained_cfg)
    return math.floor(cfg["input_size"][-1] / cfg["crop_pct"])


def resized_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(w, h) after torchvision's `Resize(side)`: the shorter side becomes `side`, the longer one is truncated."""
    w, h = size
    short, long = min(w, h), max(w, h)
    new_long = int(side * long / short)
    return (side, new_long) if w <= h else (new_long, side)


def check_transformable(size: tuple[int, int], pretrained_cfg: dict[str, Any]) -> None:
    """`ImageError` if the eval transform's resize would make more than `MAX_RESIZED_PIXELS` of this image."""
    side = resize_side(pretrained_cfg)
    w, h = resized_size(size, side)
    if w * h > MAX_RESIZED_PIXELS:
        longest = MAX_RESIZED_PIXELS // side**2
        raise ImageError(
            f"the image is {size[0]}x{size[1]}: this model's transform resizes its shorter side to {side} px, "
            f"which would make it {w:,}x{h:,} = {w * h:,} pixels, more than the limit of {MAX_RESIZED_PIXELS:,}; "
            f"crop it to at most about {longest}:1"
        )


def crop_box(size: tuple[int, int], pretrained_cfg: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the original image that the eval transform keeps.

    Mirrors timm's center mode (torchvision `Resize(shorter side)` then
    `CenterCrop`), so a heatmap over the network input maps back onto the upload.
    It is proportional, so it holds for an image `decode_image(min_side=...)` reduced.
    """
    cfg = eval_config(pretrained_cfg)
    crop_h, crop_w = cfg["input_size"][1:]
    if cfg.get("crop_mode", "center") != "center" or crop_h != crop_w:
        raise NotImplementedError("only timm's square center crop is supported")
    w, h = size
    new_w, new_h = resized_size(size, resize_side(cfg))
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
