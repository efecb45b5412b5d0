"""A small labelled image set from an uploaded zip: `<class>/<image>` folders, for the Playground.

The zip is never extracted: each member is read into memory (at most its declared size, checked while reading) and
decoded by `data.decode_image`, so an upload obeys the rules of every other image here (pixel limits, EXIF
orientation, one `ImageError` for any bad file) and nothing is written to disk. The zip itself is refused as a
whole, with a message that says why, when it is not a zip, names a path outside its own folder (absolute, `..`,
a drive, a link), holds more than `MAX_FILES` files, or expands past `MAX_BYTES` in all or past `MAX_RATIO` times
its compressed size in one member (a zip bomb). A bad image inside a good zip is skipped and listed.

Layout: `<class>/<image>` (torchvision's ImageFolder), optionally inside one top folder; files at the top level,
hidden files and macOS's `__MACOSX/` are ignored. Images are resized (shorter side) and centre-cropped to `size`
and normalized with the training images' own mean and std, which the checkpoint JSON then records.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..data import ImageError, decode_image
from .datasets import DatasetError

MAX_FILES = 5000  # members of the zip
MAX_BYTES = 256 * 2**20  # bytes all members expand to
MAX_RATIO = 200  # expanded / compressed bytes of one member: a photo compresses ~1x, a bomb ~1000x
MIN_CLASSES = 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ZipImages:
    """Normalized train/held-out tensors of the zip's images, and what was skipped."""

    x_train: torch.Tensor  # float32 [n, 3, size, size]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)

    def record(self, name: str) -> dict:
        """What the checkpoint JSON says about the data (no held-out set can be rebuilt from it later)."""
        return {"name": "zip", "file": name, "classes": self.classes, "n_train": len(self.y_train),
                "n_val": len(self.y_val), "skipped": len(self.skipped)}


def _unsafe(info: zipfile.ZipInfo) -> bool:
    """A member naming a place outside the zip's folder: absolute, a drive, `..`, or a symbolic link."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    return name.startswith("/") or (len(parts) > 0 and ":" in parts[0]) or ".." in parts or is_link


def members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's image members after the whole-zip checks (`DatasetError` naming the first failing one)."""
    infos = zf.infolist()
    if len(infos) > MAX_FILES:
        raise DatasetError(f"the zip holds {len(infos):,} entries; at most {MAX_FILES:,} are taken")
    bad = next((i for i in infos if _unsafe(i)), None)
    if bad is not None:
        raise DatasetError(f"the zip names a path outside its own folder ({bad.filename!r}); it is refused whole")
    total = sum(i.file_size for i in infos)
    if total > MAX_BYTES:
        raise DatasetError(f"the zip expands to {total / 2**20:,.0f} MiB; at most {MAX_BYTES / 2**20:.0f} MiB "
                           "are taken")
    bomb = next((i for i in infos if i.file_size > MAX_RATIO * max(i.compress_size, 1) and i.file_size > 2**20),
                None)
    if bomb is not None:
        raise DatasetError(f"{bomb.filename!r} expands {bomb.file_size / max(bomb.compress_size, 1):,.0f} times "
                           f"(more than {MAX_RATIO}x: a zip bomb); the zip is refused")
    return [i for i in infos if not i.is_dir() and not any(p.startswith((".", "__MACOSX"))
                                                          for p in PurePosixPath(i.filename).parts)]


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, never more than its header declares (a lying header is a corrupt zip, not a bomb)."""
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise ImageError("it expands past the size its zip entry declares")
    return data


def _labelled(infos: list[zipfile.ZipInfo]) -> tuple[list[tuple[zipfile.ZipInfo, str]], list[tuple[str, str]]]:
    """(member, class) pairs: the class is the folder above the file, under at most one common top folder."""
    parts = [PurePosixPath(i.filename).parts for i in infos]
    tops = {p[0] for p in parts}
    strip = 1 if len(tops) == 1 and all(len(p) >= 2 for p in parts) and any(len(p) >= 3 for p in parts) else 0
    out, skipped = [], []
    for info, p in zip(infos, parts):
        p = p[strip:]
        if len(p) != 2:
            skipped.append((info.filename, "not in a <class>/<image> folder"))
        elif PurePosixPath(p[1]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((info.filename, "not an image file name"))
        else:
            out.append((info, p[0]))
    return out, skipped


def _square(img, size: int) -> np.ndarray:
    """Shorter side to `size`, centre crop: uint8 [3, size, size]."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def load_zip(path: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> ZipImages:
    """The zip's images as training and held-out tensors (see the module docstring); `DatasetError` for a zip that
    cannot be used, with the reason. The held-out split is drawn per class with its own generator (`seed`)."""
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # BadZipFile, OSError, NotImplementedError (a bogus version), ...: all a broken zip
        raise DatasetError(f"this is not a readable zip file ({type(e).__name__})") from e
    with zf:
        labelled, skipped = _labelled(members(zf))
        images, labels, names = [], [], sorted({c for _, c in labelled})
        for info, cls in labelled:
            try:
                img = decode_image(_read(zf, info), min_side=size)
                images.append(_square(img, size))
                labels.append(names.index(cls))
            except ImageError as e:
                skipped.append((info.filename, str(e)))
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error, NotImplementedError,
                    ValueError) as e:  # a damaged member: CRC, deflate stream, unknown method, encrypted
                skipped.append((info.filename, f"damaged in the zip ({type(e).__name__})"))
    present = sorted(set(labels))
    if len(present) < MIN_CLASSES:
        raise DatasetError(f"need images of at least {MIN_CLASSES} classes (<class>/<image> folders); found "
                           f"{len(present)} with {len(images)} usable images" + _first_skips(skipped))
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor([present.index(label) for label in labels])  # a class whose every image was bad is dropped
    names = [names[c] for c in present]
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(y), dtype=torch.bool)
    for c in range(len(names)):  # per class, so every class is held out where it has two images or more
        idx = (y == c).nonzero().flatten()
        k = int(len(idx) * val_fraction) if len(idx) > 1 else 0
        val[idx[torch.randperm(len(idx), generator=g)[:max(k, 1 if len(idx) > 1 else 0)]]] = True
    xf = x.float() / 255
    mean = tuple(float(v) for v in xf[~val].mean((0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in xf[~val].std((0, 2, 3)))
    xn = (xf - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return ZipImages(xn[~val], y[~val], xn[val], y[val], names, mean, std, skipped)


def _first_skips(skipped: list[tuple[str, str]], n: int = 3) -> str:
    if not skipped:
        return ""
    return "; skipped: " + "; ".join(f"{name}: {why}" for name, why in skipped[:n]) + (" …" if len(skipped) > n else "")
