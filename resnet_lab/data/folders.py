"""Image folders (`folder:PATH` in torchvision's ImageFolder layout) as training and held-out datasets.

PATH/<class>/<image>, the class index the position in the sorted sub-folder names, read through
`data.decode_image` rather than PIL, so a training image obeys the same rules as an upload. CIFAR's files and the
errors both kinds share (`DatasetError`) are in `datasets`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import DatasetError
from .images import (
    ImageError,
    check_header,
    check_transformable,
    decode_image,
    eval_config,
    eval_shape,
    eval_transform,
    resize_side,
)

# `folder:PATH` in torchvision's ImageFolder layout (PATH/<class>/<image>, class index = position in the sorted
# sub-folder names), read through `data.decode_image` rather than PIL, so a training image obeys the same rules as
# an upload: pixel limits, EXIF orientation, alpha on white, 16-bit scaled, and one `ImageError` for any bad file.
#
# Nothing is decoded before the first step: the scan at construction lists the files and reads each one's header
# (`data.check_header`: format and pixel count, no pixel decoded), on `SCAN_THREADS` threads since it waits on the
# file system; a file whose header is bad is left out, warned about once and listed. A file whose body turns out
# corrupt (a truncated JPEG) is met where it is decoded, in a DataLoader worker: the next good sample takes its
# place (the batch goes on, an epoch never stops halfway), and the skip travels back with the batch
# (`ImageFiles.load`, `loaders.LoaderBatches`), so the run's JSON lists it once, gathered from every rank.

SCAN_THREADS = 8  # header reads wait on the disk, not the CPU
IMBALANCE_RATIO = 10.0  # largest / smallest class above this: warned about


@dataclass(frozen=True)
class ImageFiles(torch.utils.data.Dataset):
    """(transform(image), label) for a fixed list of (path, class index) samples, decoded by `decode_image`.

    `min_side` is passed to `decode_image`: the shorter side the transform needs (for timm's eval transform,
    `data.resize_side(cfg)`), so a phone photo is decoded no larger than that. Without `transform` items are
    PIL images.
    """

    samples: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]
    transform: Callable[[Any], Any] | None = None
    min_side: int | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list, compare=False)  # only what __getitem__ met

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def counts(self) -> dict[str, int]:
        """Images per class name, every class listed (0 where it has none)."""
        n = np.bincount([label for _, label in self.samples], minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, n)}

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item, label, skips = self.load(index)
        for path, reason in skips:  # in this process: kept and warned about once (a worker's copy stays there)
            if all(p != path for p, _ in self.skipped):
                self.skipped.append((path, reason))
                warnings.warn(f"skipped {path}: {reason}", stacklevel=2)
        return item, label

    def load(self, index: int) -> tuple[Any, int, list[tuple[str, str]]]:
        """(item, label, [(path, reason) of each file skipped on the way]): a file that fails to decode gives way
        to the next good sample, and the caller learns which and why (from a worker too, with the batch)."""
        skips = []
        for step in range(len(self.samples)):
            path, label = self.samples[(index + step) % len(self.samples)]
            try:
                image = decode_image(path, min_side=self.min_side)
            except ImageError as e:
                skips.append((path, str(e)))
                continue
            return (self.transform(image) if self.transform else image), label, skips
        raise DatasetError(f"none of the {len(self.samples)} images can be decoded")


class ReportingFiles(torch.utils.data.Dataset):
    """`ImageFiles` whose items carry the files skipped on the way, as one string ("path\treason" lines, "" for
    none) that the default collate turns into a list per batch."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        item, label, skips = self.files.load(index)
        return item, label, "\n".join(f"{p}\t{r}" for p, r in skips)


@dataclass(frozen=True)
class FolderSplit:
    """An image folder split into train and val: the class names, both datasets, and the files left out."""

    root: Path
    classes: tuple[str, ...]
    train: ImageFiles
    val: ImageFiles
    layout: str  # "train/val" (the folder's own split) or "split" (ours, stratified)
    skipped: list[tuple[str, str]]  # (path, reason) of each file the scan refused, for the run's JSON

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """{"train": {class: n}, "val": {class: n}}."""
        return {"train": self.train.counts, "val": self.val.counts}


def decode_all(files: ImageFiles, size: int, scale_side: int, interpolation: str,
               threads: int = SCAN_THREADS) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Every image of `files` decoded once (on `threads` threads: PIL decodes without the GIL) and made
    `size` x `size` as the eval transform makes it (shorter side to `scale_side`, centre crop), as uint8
    [N, 3, size, size] with its labels: a small folder held like CIFAR. Files that fail to decode are left out
    and returned as (path, reason)."""
    from concurrent.futures import ThreadPoolExecutor

    shape = eval_shape(size, scale_side, interpolation)

    def one(path: str) -> np.ndarray | str:
        try:
            return np.asarray(shape(decode_image(path, min_side=scale_side)), dtype=np.uint8)
        except ImageError as e:
            return str(e)

    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(one, [p for p, _ in files.samples]))
    keep = [i for i, d in enumerate(done) if not isinstance(d, str)]
    images = torch.from_numpy(np.stack([done[i] for i in keep])).permute(0, 3, 1, 2).contiguous() if keep else \
        torch.zeros(0, 3, size, size, dtype=torch.uint8)
    labels = torch.tensor([files.samples[i][1] for i in keep], dtype=torch.int64)
    skipped = [(files.samples[i][0], d) for i, d in enumerate(done) if isinstance(d, str)]
    return images, labels, skipped


def folder_samples(directory: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """ImageFolder's classes and (path, index) samples, sorted by path; our errors instead of FileNotFoundError."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder (expected one sub-folder of images per class)")
    try:
        classes, class_to_idx = find_classes(directory)
    except FileNotFoundError as e:
        raise DatasetError(
            f"{directory}: no class sub-folders found. Put the images in one sub-folder per class "
            f"({directory}/cat/1.jpg, {directory}/dog/2.jpg, ...), or train/ and val/ folders laid out that way."
        ) from e
    samples = make_dataset(directory, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return classes, sorted(samples)


def _scan(samples: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """The samples whose header `data.check_header` accepts, and (path, reason) for each it refuses, each warned
    about once; headers read on `SCAN_THREADS` threads, results in the samples' order."""
    from concurrent.futures import ThreadPoolExecutor

    def check(path: str) -> str | None:
        try:
            check_header(path)
        except ImageError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        reasons = list(pool.map(check, [p for p, _ in samples], chunksize=256))
    good = [s for s, r in zip(samples, reasons) if r is None]
    bad = [(p, r) for (p, _), r in zip(samples, reasons) if r is not None]
    for path, reason in bad:
        warnings.warn(f"skipped {path}: {reason}", stacklevel=3)
    return good, bad


def stratified_split(
    samples: list[tuple[str, int]], n_classes: int, val_fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val): per class, round(val_fraction * n) files to val, at least 1 where a class has >= 2 (and at
    least 1 left to train), chosen by a numpy Generator from the class's files in path order, so the same seed
    picks the same files whatever order the file system lists them in."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(n_classes):
        files = sorted(s for s in samples if s[1] == c)
        n_val = min(max(1, round(val_fraction * len(files))), len(files) - 1) if len(files) >= 2 else 0
        chosen = set(rng.permutation(len(files))[:n_val].tolist())
        for i, s in enumerate(files):
            (val if i in chosen else train).append(s)
    return sorted(train), sorted(val)


def _warn_imbalance(counts: dict[str, int], where: str, ratio: float) -> None:
    largest, smallest = max(counts.values()), min(counts.values())
    if smallest == 0 or largest / smallest > ratio:
        warnings.warn(
            f"{where}: the classes are strongly imbalanced (largest/smallest = {largest}/{smallest}; counts "
            f"{counts}); accuracy will mostly reflect the large classes. Consider balancing or a weighted loss.",
            stacklevel=3,
        )


def image_folder(
    path: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_transform: Callable[[Any], Any] | None = None,
    val_transform: Callable[[Any], Any] | None = None,
    min_side: int | None = None,
    imbalance_ratio: float = IMBALANCE_RATIO,
) -> FolderSplit:
    """An ImageFolder tree as train/val datasets whose files are all decodable.

    `PATH/train` and `PATH/val` are used when both exist (their class lists must match); otherwise the images in
    `PATH/<class>/` are split by `stratified_split(val_fraction, seed)`. Every file's header is read once
    (`_scan`, nothing decoded); each one refused is warned about once with its path and reason, listed in
    `.skipped` and left out (a corrupt body is found later, where it is decoded). Warns when the largest class
    outnumbers the smallest by more than `imbalance_ratio`.
    """
    root = Path(path).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        classes, train_all = folder_samples(train_dir)
        val_classes, val_all = folder_samples(val_dir)
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise DatasetError(
                f"{root}: train/ and val/ must hold the same class sub-folders; only in train/: "
                f"{only_train or 'none'}; only in val/: {only_val or 'none'}"
            )
        train_good, bad_train = _scan(train_all)
        val_good, bad_val = _scan(val_all)
        skipped, layout = bad_train + bad_val, "train/val"
    else:
        classes, everything = folder_samples(root)
        good, skipped = _scan(everything)
        train_good, val_good = stratified_split(good, len(classes), val_fraction, seed)
        layout = "split"
    names = tuple(classes)
    train = ImageFiles(tuple(train_good), names, train_transform, min_side)
    val = ImageFiles(tuple(val_good), names, val_transform, min_side)
    empty = [c for c, n in train.counts.items() if n == 0]
    if empty:
        raise DatasetError(
            f"{root}: no readable training images for the class(es) {empty} "
            f"({len(skipped)} file(s) skipped as unreadable); add images or remove those sub-folders"
        )
    _warn_imbalance(train.counts, f"{root} (train)", imbalance_ratio)
    return FolderSplit(root, names, train, val, layout, skipped)


def folder_files(
    path: str | os.PathLike, classes: tuple[str, ...], transform: Callable[[Any], Any] | None = None,
    min_side: int | None = None,
) -> tuple[ImageFiles, list[tuple[str, str]]]:
    """A held-out PATH/<class>/<image> folder (a test/ split) scanned like `image_folder`'s, labelled by `classes`
    (the training classes): (dataset, skipped). Its class sub-folders must be the training ones."""
    root = Path(path).expanduser()
    found, samples = folder_samples(root)
    if tuple(found) != tuple(classes):
        raise DatasetError(f"{root}: its class sub-folders {found} are not the training classes {list(classes)}")
    good, skipped = _scan(samples)
    return ImageFiles(tuple(good), tuple(classes), transform, min_side), skipped


class FolderImages(torch.utils.data.Dataset):
    """(network input, label, reason) for each (path, label) sample, through the app's decoder and eval transform.

    A file that cannot be used yields a zero image and the reason ("" for a good one), so the evaluation leaves it
    out and lists it. `folders.ImageFiles` instead takes the next good file, right for an epoch but wrong for a
    count; and a reason returned with the batch reaches the caller from DataLoader workers, where a list kept in
    the dataset would stay in the worker's process.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], pretrained_cfg: dict[str, Any]) -> None:
        self.samples = list(samples)
        self.cfg = dict(pretrained_cfg)
        self.transform = eval_transform(self.cfg)
        self.side = resize_side(self.cfg)
        self.shape = tuple(eval_config(self.cfg)["input_size"])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path, label = self.samples[index]
        try:
            image = decode_image(path, min_side=self.side)
            check_transformable(image.size, self.cfg)
            return self.transform(image), label, ""
        except ImageError as e:
            return torch.zeros(self.shape), label, str(e)
