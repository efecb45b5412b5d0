"""Seeded fuzzing of the decoder: whatever bytes arrive, the answer is an RGB image or `ImageError`, never a crash.

The mutations are those a broken upload has: flipped bits, overwritten bytes, a
cut-off tail, a chunk of junk inserted, a slice duplicated, applied to small
valid files of every format we accept. With this seed, the decoder before the
fix (commit 32a3788, which mapped only a few exception types and only around
`load`) let 2,188 of these 16,000 decodes (8,000 files, with and without
`min_side`) escape: OSError 2,150 (mostly WebP and BMP failing inside
`Image.open`), IndexError 24, ValueError 14. Measured by running `escapes` on
that commit's `decode_image`.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from resnet_lab.data.images import ImageError, decode_image

SEED = 20240806
N_MUTATIONS = 8000


def _base_files() -> dict[str, bytes]:
    """Small (48x40) valid files, photo-like so every codec has real data to get wrong."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    arr = np.stack([128 + 90 * np.sin(xx / 5.0), 128 + 90 * np.cos(yy / 4.0), 128 + 60 * np.sin((xx + yy) / 7.0)], -1)
    rgb = Image.fromarray(np.clip(arr + rng.normal(0, 10, arr.shape), 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6

    def enc(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    frames = [rgb, rgb.rotate(180)]
    return {
        "png": enc(rgb, "PNG"),
        "png-rgba": enc(rgb.convert("RGBA"), "PNG"),
        "png-16bit": enc(Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), "PNG"),
        "png-palette": enc(rgb.convert("P"), "PNG", transparency=0),
        "jpeg": enc(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "jpeg-progressive": enc(rgb, "JPEG", quality=80, progressive=True),
        "gif": enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "webp": enc(rgb, "WEBP", quality=80, exif=exif.tobytes()),
        "webp-lossless": enc(rgb.convert("RGBA"), "WEBP", lossless=True),
        "tiff": enc(rgb, "TIFF"),
        "tiff-deflate": enc(rgb, "TIFF", compression="tiff_adobe_deflate", exif=exif.tobytes()),
        "bmp": enc(rgb, "BMP"),
    }


def _mutate(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of a file, named by its kind."""
    b = bytearray(raw)
    kind = ("bitflip", "overwrite", "truncate", "insert", "duplicate")[rng.integers(5)]
    # the header is where parsers go wrong most: half of the edits land in the first 64 bytes
    def pos(n: int) -> int:
        return int(rng.integers(min(64, n))) if rng.random() < 0.5 else int(rng.integers(n))

    if kind == "bitflip":
        for _ in range(rng.integers(1, 9)):
            i = pos(len(b))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        for _ in range(rng.integers(1, 5)):
            b[pos(len(b))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(256))]))
    elif kind == "truncate":
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == "insert":
        i = pos(len(b))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    else:
        i, j = sorted(int(x) for x in rng.integers(0, len(b), 2))
        k = pos(len(b))
        b[k:k] = b[i : j + 1][:256]
    return kind, bytes(b)


def mutations(n: int = N_MUTATIONS, seed: int = SEED) -> Iterator[tuple[str, str, bytes]]:
    """(format, mutation kind, bytes), n of them, the same every run."""
    rng = np.random.default_rng(seed)
    files = _base_files()
    names = sorted(files)
    for _ in range(n):
        fmt = names[rng.integers(len(names))]
        kind, raw = _mutate(files[fmt], rng)
        yield fmt, kind, raw


def escapes(decode: Callable[..., Image.Image], n: int = N_MUTATIONS) -> tuple[Counter, int]:
    """What the decoder raised other than `ImageError` (by format, kind and type), and how many files decoded."""
    bad: Counter = Counter()
    decoded = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about odd EXIF/TIFF tags; only what is raised matters here
        for fmt, kind, raw in mutations(n):
            for kw in ({}, {"min_side": 16}):
                try:
                    out = decode(raw, **kw)
                except ImageError as e:
                    assert str(e), "an ImageError must say what is wrong"
                    continue
                except Exception as e:  # noqa: BLE001 - exactly what this test exists to count
                    bad[(fmt, kind, type(e).__name__, bool(kw))] += 1
                    continue
                assert isinstance(out, Image.Image) and out.mode == "RGB" and min(out.size) >= 1
                decoded += 1
    return bad, decoded


def test_no_mutated_file_escapes_as_anything_but_image_error():
    bad, decoded = escapes(decode_image)
    assert not bad, f"{sum(bad.values())} escapes: {bad.most_common(10)}"
    # the fuzz is not all rejections: many mutations still decode (bit flips in pixel data), both paths run
    assert decoded > N_MUTATIONS // 4


@pytest.mark.parametrize("fmt", sorted(_base_files()))
def test_every_base_file_decodes(fmt):
    """The files the fuzz mutates are valid to begin with (else it would only test rejecting garbage)."""
    raw = _base_files()[fmt]
    out = decode_image(raw)
    assert out.mode == "RGB" and sorted(out.size) == [40, 48]
    assert min(decode_image(raw, min_side=16).size) >= 16


@pytest.mark.parametrize("exc", [MemoryError(), ZeroDivisionError("division by zero"), KeyError(7)])
def test_any_failure_inside_pil_becomes_image_error(monkeypatch, exc):
    """What the fuzz may not reach (a bomb's MemoryError, a plugin's arithmetic) is mapped the same way."""
    raw = _base_files()["png"]

    def boom(self, *a, **k):
        raise exc

    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", boom)
    with pytest.raises(ImageError, match="memory|truncated or corrupt"):
        decode_image(raw)


def test_an_interrupt_is_not_swallowed(monkeypatch):
    def stop(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", stop)
    with pytest.raises(KeyboardInterrupt):
        decode_image(_base_files()["png"])
