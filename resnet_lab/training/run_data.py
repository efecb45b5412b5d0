"""A run's data: the batches of each split, the class names, and what the checkpoint records about them.

The data come from three disjoint sources: Shapes' `seed` for training, `seed + 1` for validation (early
stopping and the choice of the best epoch) and `test_seed` for the accuracy reported in the checkpoint, which
nothing was tuned on. CIFAR's validation set is a seeded stratified `val_fraction` of its training batches
(test_batch stays the test set); a folder's is its val/ (or a stratified split), with a test set only where
PATH/test exists. Batches come from `loaders`; under torchrun each split is this rank's share.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..data.datasets import DatasetError, cifar_root, load_cifar
from ..data.folders import decode_all, folder_files, image_folder
from ..data.images import eval_transform, resize_side
from ..data.loaders import Batches, LoaderBatches, ShapesBatches, TensorBatches, stratified_indices
from ..data.shapes import CLASSES, ShapesDataset
from ..runtime import resources
from ..runtime.distributed import Dist, gather_objects
from ..runtime.memory import FOLDER_CACHE_SHARE, available_memory, refusal
from ..runtime.scoring import EVAL_BATCH
from . import recipe as recipes
from .augment import SMALL_SIDE, pad_for, train_transform
from .config import TrainConfig


@dataclass
class RunData:
    """What `make_data` gives the loop: batches for each split, the class names and what to record about them."""

    train: Batches
    val: Batches
    test: Batches | None
    classes: list[str]
    record: dict[str, Any]


@contextlib.contextmanager
def _quiet_unless(speaks: bool) -> Iterator[None]:
    """Warnings silenced on a rank that does not speak. The filters are process-wide, so on the rank that speaks
    (and in the app's threads, always rank 0) nothing is touched."""
    if speaks:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _held_in_memory(config: TrainConfig, n: int, pretrained_cfg: dict[str, Any], device: torch.device) -> bool:
    """Whether a folder is decoded once and trained from memory, as CIFAR is: `--folder-cache on`, or `auto` for
    images of SMALL_SIDE px or less (the CIFAR recipe, which needs nothing of the original image) with no
    image-only augmentation, whose uint8 copy fits a share of the memory this device can still allocate."""
    if config.folder_cache != "auto":
        return config.folder_cache == "on"
    size = config.image_size
    if size > SMALL_SIDE or config.augment.image_options():
        return False
    return n * 3 * size * size <= FOLDER_CACHE_SHARE * available_memory(device)


def _check_shapes_memory(config: TrainConfig) -> None:
    """`DatasetError` before rendering when the three Shapes splits (uint8 images and bool masks, 4 bytes a pixel)
    cannot be held now: `--n-train 999999999999` or `--size 1024` ended in numpy's ArrayMemoryError traceback."""
    images = config.n_train + config.n_val + config.n_test
    problem = refusal(images * (4 * config.image_size**2 + 40), resources.memory_available(),
                      "fewer --n-train, --n-val or --n-test images, or a smaller --size")
    if problem:
        raise DatasetError(problem)


def check_sizes(where: str, n_train: int, n_val: int, config: TrainConfig) -> None:
    """Refuse, before any epoch runs, a split that cannot train or be judged (every rank sees the same totals, so
    every rank refuses alike and none waits for the others)."""
    if n_val == 0:
        raise DatasetError(f"{where}: the validation set is empty (no readable image in val/, or --val-fraction "
                           f"{config.val_fraction} leaves none): add images to val/ or raise --val-fraction; without "
                           "it no epoch can be judged and no weights kept")
    if n_train < (batch := recipes.batch_size(config, n_train)):
        raise DatasetError(f"{where}: {n_train} training image(s), fewer than one batch of {batch}: "
                           f"lower --batch-size to {max(1, n_train)} or less, or add images")


def with_decode_skips(data: RunData, dist: Dist) -> dict[str, Any]:
    """The data record with the files that failed to decode during the run (in any rank's workers, each split)
    added to the scan's `skipped` list, each file once. A collective under torchrun: every rank calls it."""
    found: dict[str, str] = {}
    for batches in (data.train, data.val, data.test):
        found.update(getattr(batches, "skipped", {}) or {})
    merged = {s["path"]: s["reason"] for s in data.record.get("skipped", [])}
    for part in (gather_objects(found, dist) if dist.distributed else [found]):
        for path, reason in part.items():
            merged.setdefault(path, reason)
    return {**data.record, "skipped": [{"path": p, "reason": r} for p, r in merged.items()]}


def make_data(config: TrainConfig, pretrained_cfg: dict[str, Any], device: torch.device,
              generator: torch.Generator, log: Callable[[str], None], dist: Dist = Dist()) -> RunData:
    """The run's batches from `config.data`; `pretrained_cfg` gives mean/std and input size (CIFAR, folders);
    under torchrun each split is this rank's share (see `loaders`)."""
    t0 = time.perf_counter()
    bs, d = recipes.batch_size(config, config.n_train), dist  # a folder's: once its training images are counted
    if config.data == "shapes":
        size = config.image_size
        _check_shapes_memory(config)
        train_seed, val_seed, test_seed = config.data_seeds()
        sets = [ShapesDataset(n, s, size, config.clutter)
                for n, s in ((config.n_train, train_seed), (config.n_val, val_seed), (config.n_test, test_seed))]
        log(f"rendered {len(sets[0])} + {len(sets[1])} images of {size} px in {time.perf_counter() - t0:.1f} s")
        return RunData(
            ShapesBatches(sets[0], bs, device, generator, train=True, dist=d, hflip=config.augment.hflip),
            ShapesBatches(sets[1], EVAL_BATCH, device, dist=d), ShapesBatches(sets[2], EVAL_BATCH, device, dist=d),
            list(CLASSES),
            {"name": "shapes", "clutter": config.clutter, "train_seed": train_seed, "val_seed": val_seed,
             "test_seed": test_seed, "n_train": config.n_train, "n_val": config.n_val, "n_test": config.n_test})
    mean, std, cl = pretrained_cfg["mean"], pretrained_cfg["std"], config.channels_last
    if config.data in ("cifar10", "cifar100"):
        kw = dict(root=config.data_dir, checksum=config.checksum, download=config.download)
        images, labels, classes = load_cifar(config.data, train=True, **kw)
        test_images, test_labels, _ = load_cifar(config.data, train=False, **kw)
        tr, va = stratified_indices(labels, len(classes), config.val_fraction, config.seed)
        check_sizes(str(cifar_root(config.data_dir)), len(tr), len(va), config)
        log(f"read {config.data}: {len(tr)} train, {len(va)} val, {len(test_labels)} test in "
            f"{time.perf_counter() - t0:.1f} s")

        def counts(lab: torch.Tensor) -> dict[str, int]:
            return dict(zip(classes, torch.bincount(lab, minlength=len(classes)).tolist()))

        return RunData(
            TensorBatches(images[tr], labels[tr], mean, std, bs, device, generator, True, cl, d, config.augment.hflip),
            TensorBatches(images[va], labels[va], mean, std, EVAL_BATCH, device, channels_last=cl, dist=d),
            TensorBatches(test_images, test_labels, mean, std, EVAL_BATCH, device, channels_last=cl, dist=d), classes,
            {"name": config.data, "root": str(cifar_root(config.data_dir)), "checksum": config.checksum,
             "val_fraction": config.val_fraction, "val_seed": config.seed,
             "counts": {"train": counts(labels[tr]), "val": counts(labels[va]), "test": counts(test_labels)},
             "skipped": []})

    path = config.data.removeprefix("folder:")
    side = resize_side(pretrained_cfg)
    with _quiet_unless(dist.is_main):  # every rank scans; one tells of the skipped files
        split = image_folder(path, config.val_fraction, config.seed, train_transform(pretrained_cfg, config.augment),
                             eval_transform(pretrained_cfg), side)
    check_sizes(str(split.root), len(split.train), len(split.val), config)
    bs = recipes.batch_size(config, len(split.train))
    test_set, test_skipped = None, []
    if (split.root / "test").is_dir():
        with _quiet_unless(dist.is_main):
            test_set, test_skipped = folder_files(split.root / "test", split.classes, eval_transform(pretrained_cfg),
                                                  side)
    w = config.workers
    counts = {**split.counts, **({"test": test_set.counts} if test_set is not None else {})}
    log(f"scanned {path}: {counts}; skipped {len(split.skipped) + len(test_skipped)} unreadable file(s)")
    record = {"name": "folder", "root": str(split.root), "layout": split.layout, "val_fraction": config.val_fraction,
              "counts": counts, "test_split": "test/" if test_set is not None else "none: test_acc is the val accuracy",
              "skipped": [{"path": p, "reason": r} for p, r in split.skipped + test_skipped]}
    if _held_in_memory(config, len(split.train) + len(split.val), pretrained_cfg, device):
        t1, size, interp = time.perf_counter(), config.image_size, pretrained_cfg.get("interpolation", "bilinear")
        xt, yt, bad_t = decode_all(split.train, size, size, interp)
        xv, yv, bad_v = decode_all(split.val, size, side, interp)
        log(f"decoded {len(yt) + len(yv)} images into memory in {time.perf_counter() - t1:.1f} s")
        record["in_memory"] = True
        record["skipped"] += [{"path": p, "reason": r} for p, r in bad_t + bad_v]
        return RunData(
            TensorBatches(xt, yt, mean, std, bs, device, generator, True, cl, d, config.augment.hflip, pad_for(size)),
            TensorBatches(xv, yv, mean, std, EVAL_BATCH, device, channels_last=cl, dist=d),
            LoaderBatches(test_set, EVAL_BATCH, device, w, channels_last=cl, dist=d) if test_set is not None else None,
            list(split.classes), record)
    record["in_memory"] = False
    return RunData(
        LoaderBatches(split.train, bs, device, w, generator, train=True, channels_last=cl, dist=d),
        LoaderBatches(split.val, EVAL_BATCH, device, w, channels_last=cl, dist=d),
        LoaderBatches(test_set, EVAL_BATCH, device, w, channels_last=cl, dist=d) if test_set is not None else None,
        list(split.classes), record)
