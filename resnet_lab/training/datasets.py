"""Real image datasets: CIFAR-10/100 in torchvision's on-disk python-pickle format, and image folders.

With `checksum=True` torchvision's own `CIFAR10`/`CIFAR100` read the files, after md5-checking them
against the official archive: the published data, nothing else. With `checksum=False` (one's own files
in the same layout, or the tests' small ones) the batches are read here through a restricted unpickler,
because a pickle is a program: a plain `pickle.load` of a file someone handed you runs whatever it asks
for. Only numpy's array reconstruction is allowed; anything else is refused before it runs.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENV_DATA = "RESNET_LAB_DATA"
DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where torchvision fetches both archives from
PROBE_TIMEOUT_S = 3.0


class DatasetError(ValueError):
    """A dataset that cannot be read, with a message a person can act on."""


@dataclass(frozen=True)
class CifarSpec:
    """One CIFAR variant's file layout (the same names as torchvision's)."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    archive: str


CIFAR: dict[str, CifarSpec] = {
    "cifar10": CifarSpec("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                         "batches.meta", "labels", "label_names", "cifar-10-python.tar.gz"),
    "cifar100": CifarSpec("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names",
                          "cifar-100-python.tar.gz"),
}

# Globals a CIFAR batch needs: numpy's array reconstruction (numpy 1 and 2 module names) and, for arrays
# pickled by Python 3 at protocol 2, `_codecs.encode` (how bytes are written there). Dicts, lists, str,
# bytes and ints are opcodes, not globals.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


def cifar_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where datasets live: `data_dir`, else $RESNET_LAB_DATA, else ~/.cache/resnet_lab/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    return Path.home() / ".cache" / "resnet_lab" / "data"


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in `_ALLOWED_GLOBALS`; any other is refused before it is called."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # as torchvision reads them (Python 2 str -> str)
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DatasetError(
            f"{self.path}: refused to unpickle the global {module}.{name}: a CIFAR batch only needs numpy arrays, "
            "lists and dicts, so this file is not one (it could run code if loaded). Delete it, or re-create it "
            "from the official archive."
        )


def _read_pickle(path: Path) -> dict:
    """One batch or meta file as a dict with str keys (bytes keys, as `encoding="bytes"` writers leave them,
    are decoded too)."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the file ({e.strerror or e})") from e
    except Exception as e:  # a truncated or foreign file fails in many ways; each gets the same clear message
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    if "data" not in entry or label_key not in entry:
        raise DatasetError(f"{path}: a batch needs the keys 'data' and {label_key!r}; found {sorted(entry)}")
    data, labels = entry["data"], np.asarray(entry[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape [N, 3072], found {got}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {label_key!r} must be {len(data)} integers, one per image")
    return data, labels.astype(np.int64)


def expected_files(name: str, train: bool, checksum: bool = True) -> list[str]:
    """The files `load_cifar` reads (with `checksum`, torchvision checks all of them, both splits)."""
    spec = _spec(name)
    batches = spec.train_files + spec.test_files if checksum else (spec.train_files if train else spec.test_files)
    return [*batches, spec.meta_file]


def _spec(name: str) -> CifarSpec:
    if name not in CIFAR:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(CIFAR)}")
    return CIFAR[name]


def _probe_network(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within `timeout` seconds where the download host is unreachable, instead of torchvision's retries."""
    from ..hub import tcp_reachable  # the hub's probe: DNS bounded too, which a bare connect is not

    ok, why = tcp_reachable(*DOWNLOAD_HOST, timeout)
    if not ok:
        raise DatasetError(
            f"cannot download: {why}. Copy the archive's extracted folder onto this machine instead and pass its "
            "parent with --data-dir."
        )


def load_cifar(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    checksum: bool = True,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10/100 as (uint8 images [N, 3, 32, 32], int64 labels [N], class names).

    `root` holds `cifar-10-batches-py/` or `cifar-100-python/` (torchvision's layout; None: `cifar_root()`).
    `checksum=True` reads through torchvision after its md5 check of the official files; `checksum=False`
    reads any files in that layout through a restricted unpickler. `download=True` fetches the official
    archive (md5-checked) where the network allows, failing within seconds where it does not.
    """
    spec = _spec(name)
    root = cifar_root(root)
    folder = root / spec.folder
    needed = expected_files(name, train, checksum)
    if download and any(not (folder / f).is_file() for f in needed):
        _probe_network()
        import torchvision.datasets as tvd

        getattr(tvd, "CIFAR10" if name == "cifar10" else "CIFAR100")(str(root), train=train, download=True)
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{name} not found: the folder {folder} lacks {', '.join(missing)} (expected there: "
            f"{', '.join(needed)}). Pass --download where the network allows, or copy the extracted "
            f"{spec.archive} into {root} (or point --data-dir / ${ENV_DATA} at the folder holding {spec.folder}/)."
        )
    if checksum:
        return _load_torchvision(name, root, train)
    arrays = [_read_batch(folder / f, spec.label_key) for f in (spec.train_files if train else spec.test_files)]
    meta = _read_pickle(folder / spec.meta_file)
    if spec.names_key not in meta:
        raise DatasetError(f"{folder / spec.meta_file}: no {spec.names_key!r} key; found {sorted(meta)}")
    classes = [_text(c) for c in meta[spec.names_key]]
    data = np.concatenate([a for a, _ in arrays]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b for _, b in arrays])
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(f"{folder}: labels run from {labels.min()} to {labels.max()}, "
                           f"but {spec.meta_file} names {len(classes)} classes")
    return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels), classes


def _load_torchvision(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    import torchvision.datasets as tvd

    try:
        ds = getattr(tvd, "CIFAR10" if name == "cifar10" else "CIFAR100")(str(root), train=train)
    except RuntimeError as e:  # "Dataset not found or corrupted": the md5 of some file is not the official one
        raise DatasetError(
            f"{name} in {root / _spec(name).folder}: torchvision's md5 check failed ({e}). These are not the "
            "official files; for files of your own in this format, pass --no-checksum (checksum=False)."
        ) from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)


# ----------------------------------------------------------------------------- image folders
#
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
        from ..data import ImageError, decode_image

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

    from ..data import ImageError, check_header

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


def train_transform(pretrained_cfg: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """timm's train transform at the model's input size, mean/std and interpolation: RandomResizedCrop + flip
    (no colour jitter), the field's standard. For eval use `data.eval_transform`, as the app does."""
    from timm.data import create_transform

    from ..data import eval_config

    cfg = eval_config(pretrained_cfg)
    return create_transform(
        input_size=cfg["input_size"], is_training=True, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], color_jitter=None,
    )


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
