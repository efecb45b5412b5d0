"""CIFAR-10/100 in torchvision's on-disk python-pickle format, and the error every real dataset raises
(image folders: `folders`).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.hub import tcp_reachable

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
