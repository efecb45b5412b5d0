"""A small labelled image set from an uploaded zip: `<class>/<image>` folders, for the Playground.

The zip is never extracted: each member is read into memory (at most its declared size, checked while reading) and
decoded by `data.decode_image`, so an upload obeys the rules of every other image here (pixel limits, EXIF
orientation, one `ImageError` for any bad file) and nothing is written to disk. The zip itself is refused as a
whole, with a message that says why, when it is not a zip, names a path outside its own folder (absolute, `..`,
a drive, a link), holds more than `MAX_FILES` files, or expands past `MAX_BYTES` in all or past `MAX_RATIO` times
its compressed size in one member (a zip bomb). A bad image inside a good zip is skipped and listed.

Before any pixel is decoded, `scan_zip` reads every image's header (what the upload shows at once; from the bytes
inflated so far, `_Inflated`, so a member is inflated at most once however its header seeks): an image over
`data.MAX_PIXELS` is skipped, and a zip whose images hold more than `MAX_TOTAL_PIXELS` in all is refused (a pixel
bomb: a 7.8 KB 1-bit PNG decodes to 64 MP, and a 3 MB zip of 400 of them took 3 minutes to read), as is one where
a class has fewer than `MIN_PER_CLASS` images (it could not be both trained on and held out).

Layout: `<class>/<image>` (torchvision's ImageFolder), optionally inside one top folder; files at the top level,
hidden files and macOS's `__MACOSX/` are ignored. Images are resized (shorter side) and centre-cropped to `size`
and normalized with the training images' own mean and std, which the checkpoint JSON then records.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
import torch

from .datasets import DatasetError
from .images import WIDE_MODES, ImageError, decode_image, read_header

MAX_FILES = 5000  # members of the zip
MAX_BYTES = 256 * 2**20  # bytes all members expand to
MAX_RATIO = 200  # expanded / compressed bytes of one member: a photo compresses ~1x, a bomb ~1000x
MAX_TOTAL_PIXELS = 1_000_000_000  # header pixels of all images together: 15 images at the 64 MP limit, or ~80
# 12 MP photos (20 MB, the app's upload limit, holds ~7); each 8-bit megapixel takes ~4-30 ms to decode on one core
# of a 2-core CPU, a 16-bit one ~70 ms, so reading stays within about a minute
MIN_CLASSES = 2
MIN_PER_CLASS = 2  # one image to train on, one to hold out
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# a member that zipfile cannot give back: CRC, deflate stream, unknown method, encrypted
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error, NotImplementedError, ValueError)


class ReadStopped(Exception):
    """Stop was asked for while the zip's images were decoded."""


def held_out(n: int, val_fraction: float) -> int:
    """How many of a class's `n` (>= 2) images are held out: a `val_fraction` of them, at least one, not all."""
    return min(max(int(n * val_fraction), 1), n - 1)


@dataclass
class ZipScan:
    """What a zip offers, from its directory and each image's header alone (no pixel decoded): what the upload
    shows, what the run's estimate charges for reading, and what `load_zip` then decodes."""

    images: list[tuple[zipfile.ZipInfo, str]]  # (member, class) of each image whose header passed
    counts: dict[str, int]  # images per class, by class name
    pixels: dict[str, int]  # header pixels by kind: "jpeg" (decoded at up to 1/8), "wide" (16-bit, float), "8-bit"
    skipped: list[tuple[str, str]]  # (member name, reason)
    val_fraction: float = 0.2

    @property
    def n_val(self) -> int:
        return sum(held_out(n, self.val_fraction) for n in self.counts.values())

    @property
    def n_train(self) -> int:
        return sum(self.counts.values()) - self.n_val


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


def _parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts, `\\` read as a separator too (some Windows tools write `red\\0.png`)."""
    return PurePosixPath(info.filename.replace("\\", "/")).parts


def _unsafe(info: zipfile.ZipInfo) -> bool:
    """A member naming a place outside the zip's folder: absolute, a drive, `..`, or a symbolic link."""
    parts, is_link = _parts(info), stat.S_ISLNK(info.external_attr >> 16)
    return (len(parts) > 0 and (parts[0].startswith("/") or ":" in parts[0])) or ".." in parts or is_link


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
    return [i for i in infos if not i.is_dir() and not any(p.startswith((".", "__MACOSX")) for p in _parts(i))]


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, never more than its header declares (a lying header is a corrupt zip, not a bomb)."""
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise ImageError("it expands past the size its zip entry declares")
    return data


def _labelled(infos: list[zipfile.ZipInfo]) -> tuple[list[tuple[zipfile.ZipInfo, str]], list[tuple[str, str]]]:
    """(member, class) pairs: the class is the folder above the file, under at most one common top folder."""
    parts = [_parts(i) for i in infos]
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


class _Inflated(io.RawIOBase):
    """A member's stream that keeps what it has inflated, so seeking back costs nothing. zipfile's own restarts
    the member's inflation on every backward seek, and PIL's TIFF reader seeks to each tag's data and back: a
    64 MiB member with 100 such tags was inflated 100 times (23 s). Here each byte is inflated once, and only as
    far as the header reader goes (the member's size at most, as `_read` holds it)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        super().__init__()
        self._f, self._size, self._kept, self._pos = f, size, bytearray(), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        end = min(self._pos + len(b), self._size)
        if end > len(self._kept):
            self._kept += self._f.read(end - len(self._kept))
        n = max(0, min(end, len(self._kept)) - self._pos)
        b[:n] = self._kept[self._pos:self._pos + n]
        self._pos += n
        return n


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int, str]:
    """(width, height, kind) from the member's header, read from the zip stream (only as far as the header goes)."""
    if info.file_size == 0:
        raise ImageError("the file is empty (0 bytes)")
    if info.flag_bits & 0x1:
        raise ImageError("the file is encrypted in the zip; zip it again without a password")
    with zf.open(info) as f:
        w, h, fmt, mode = read_header(_Inflated(f, info.file_size))  # `ImageError` past data.MAX_PIXELS
    return w, h, "jpeg" if fmt in ("JPEG", "MPO") else "wide" if mode in WIDE_MODES else "8-bit"


def _scan(zf: zipfile.ZipFile, val_fraction: float) -> ZipScan:
    labelled, skipped = _labelled(members(zf))
    images, pixels, largest = [], {"jpeg": 0, "wide": 0, "8-bit": 0}, (0, "", 0, 0)
    for info, cls in labelled:
        try:
            w, h, kind = _header(zf, info)
        except ImageError as e:
            skipped.append((info.filename, str(e)))
            continue
        except _DAMAGED as e:
            skipped.append((info.filename, f"damaged in the zip ({type(e).__name__})"))
            continue
        images.append((info, cls))
        pixels[kind] += w * h
        largest = max(largest, (w * h, info.filename, w, h))
        if sum(pixels.values()) > MAX_TOTAL_PIXELS:  # refused at once: a bomb's other members are not looked at
            _, name, lw, lh = largest
            raise DatasetError(f"the zip's images hold more than {MAX_TOTAL_PIXELS:,} pixels in all ({name!r} alone "
                               f"is {lw}x{lh}), more than a live run reads; the Playground trains on 16 or 32 px "
                               "images, so shrink them and zip again")
    counts = dict(sorted(Counter(cls for _, cls in images).items()))
    _check_classes(counts, skipped)
    return ZipScan(images, counts, pixels, skipped, val_fraction)


def scan_zip(path: str | Path, val_fraction: float = 0.2) -> ZipScan:
    """The zip's images, classes and pixels from its headers alone, after every check that needs no decoding
    (`DatasetError` with the reason otherwise): cheap enough to run on upload."""
    with _open(path) as zf:
        return _scan(zf, val_fraction)


def _open(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except Exception as e:  # BadZipFile, OSError, NotImplementedError (a bogus version), ...: all a broken zip
        raise DatasetError(f"this is not a readable zip file ({type(e).__name__})") from e


def _check_classes(counts: dict[str, int], skipped: list[tuple[str, str]]) -> None:
    """`DatasetError` unless at least `MIN_CLASSES` classes each have `MIN_PER_CLASS` images or more."""
    if len(counts) < MIN_CLASSES:
        raise DatasetError(f"need images of at least {MIN_CLASSES} classes (<class>/<image> folders); found "
                           f"{len(counts)} with {sum(counts.values())} usable images" + _first_skips(skipped))
    few = [f"{name!r} has {n}" for name, n in counts.items() if n < MIN_PER_CLASS]
    if few:
        raise DatasetError(f"each class needs at least {MIN_PER_CLASS} usable images, one to train on and one to "
                           f"hold out, but {', '.join(few[:5])}{' …' if len(few) > 5 else ''}" + _first_skips(skipped))


def _square(img, size: int) -> np.ndarray:
    """The centre square (side: the shorter side) resampled to `size`: uint8 [3, size, size]. Only that square
    is resampled: resizing the whole image first made a 200,000x1 PNG 6,400,000x32 (614 MB) at 32 px."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)


def load_zip(path: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0,
             stop: Callable[[], bool] | None = None) -> ZipImages:
    """The zip's images as training and held-out tensors (see the module docstring); `DatasetError` for a zip that
    cannot be used, with the reason. Every header is checked (`scan_zip`) before the first image is decoded;
    `stop()` is asked before each image is, and `ReadStopped` ends the reading when it says so. The held-out
    split is drawn per class with its own generator (`seed`)."""
    with _open(path) as zf:
        scan = _scan(zf, val_fraction)
        skipped, images, labels, names = list(scan.skipped), [], [], list(scan.counts)
        for i, (info, cls) in enumerate(scan.images):
            if stop is not None and stop():
                raise ReadStopped(f"stopped after reading {i} of the zip's {len(scan.images)} images")
            try:
                img = decode_image(_read(zf, info), min_side=size)
                images.append(_square(img, size))
                labels.append(names.index(cls))
            except ImageError as e:
                skipped.append((info.filename, str(e)))
            except _DAMAGED as e:
                skipped.append((info.filename, f"damaged in the zip ({type(e).__name__})"))
    # a class whose every image failed to decode is dropped; one left with a single image is refused
    _check_classes({names[c]: n for c, n in sorted(Counter(labels).items())}, skipped)
    present = sorted(set(labels))
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor([present.index(label) for label in labels])
    names = [names[c] for c in present]
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(y), dtype=torch.bool)
    for c in range(len(names)):  # per class, so every class is held out
        idx = (y == c).nonzero().flatten()
        val[idx[torch.randperm(len(idx), generator=g)[:held_out(len(idx), val_fraction)]]] = True
    xf = x.float() / 255
    mean = tuple(float(v) for v in xf[~val].mean((0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in xf[~val].std((0, 2, 3)))
    xn = (xf - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return ZipImages(xn[~val], y[~val], xn[val], y[val], names, mean, std, skipped)


def _first_skips(skipped: list[tuple[str, str]], n: int = 3) -> str:
    if not skipped:
        return ""
    return "; skipped: " + "; ".join(f"{name}: {why}" for name, why in skipped[:n]) + (" …" if len(skipped) > n else "")
