"""Phone-size test photos for the benchmarks, made here (no photo corpus ships at 12 MP and more)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def phone_jpeg(w: int, h: int, orientation: int = 1, seed: int = 0) -> bytes:
    """A photo-like w x h JPEG, quality 90: smooth colour waves (upscaled from a small drawing) plus sensor-like
    noise, the fine detail the DCT must carry. `orientation` is written as EXIF (6: a phone held upright).
    The noise is added in bands, so a 48 MP image needs no float copy of itself."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:300, 0:400] / 50.0
    small = np.stack([128 + 90 * np.sin(xx * 1.3 + np.cos(yy)), 128 + 90 * np.cos(yy * 1.7 - xx * 0.4),
                      128 + 70 * np.sin((xx + yy) * 0.9)], -1)
    big = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC))
    noisy = np.empty_like(big)
    for top in range(0, h, 500):
        band = big[top:top + 500].astype(np.int16) + rng.normal(0, 8, big[top:top + 500].shape).astype(np.int16)
        noisy[top:top + 500] = np.clip(band, 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()
