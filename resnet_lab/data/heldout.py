"""The one held-out set: the images a checkpoint never saw, normalized as it expects, for every study and `evaluate`.

A Shapes checkpoint's JSON names its data (`data.test_seed`, `data.clutter`, the train seed) and its input size;
CIFAR checkpoints use CIFAR's test split. `split="test"` gives the set nothing was trained or tuned on (Shapes'
test seed, 999 by default, as `train` uses it); `split="train"` gives the first `n` images of the checkpoint's own
training set, bit for bit the ones it was trained on (Shapes renders each image from (seed, index)): the loss a
minimum is a minimum *of* (the Hessian at a trained minimum, Li et al. 2018 §6, Yao et al. 2020), and the images
BatchNorm statistics are re-estimated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .datasets import load_cifar
from .shapes import ShapesDataset

if TYPE_CHECKING:
    from ..models.weights import LoadedWeights

# Every Shapes held-out set's seed, named once here (the values are the ones the shipped results were made with):
TEST_SEED = 999  # a checkpoint's test set: train's default --test-seed
VAL_SEED_OFFSET = 100_003  # a degradation or Playground run's held-out images: its training seed plus this
SAMPLE_SEED_BASE = 100_000  # the Grad-CAM tab's sample #k: seed SAMPLE_SEED_BASE + k, never a training seed
RECOMPUTE_SEED = 424_242  # the Grad-CAM tab's faithfulness recompute: images no shipped table was measured on
SPLITS = ("test", "train")


@dataclass
class HeldOut:
    """A fixed, normalized evaluation set, made once and reused by every point, lesion and twin."""

    x: torch.Tensor  # float32 [n, 3, H, W], normalized with the checkpoint's mean/std
    y: torch.Tensor  # int64 [n]
    description: dict[str, Any]
    classes: list[str] = field(default_factory=list)  # the data's class names, label order

    @property
    def n(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> HeldOut:
        return HeldOut(self.x.to(device), self.y.to(device), self.description, self.classes)

    def key(self) -> tuple:
        """Equal for sets with the same images (twins trained on the same data share one rendering)."""
        return tuple(sorted((k, str(v)) for k, v in self.description.items()))


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 (x / 255 - mean) / std: the same arithmetic as the training loaders."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - m) / s


def data_name(loaded: LoadedWeights) -> str | None:
    """What the checkpoint was trained on: its JSON's `data.name`, else guessed from its class count (8: Shapes)."""
    data = loaded.meta.get("data") or {}
    classes = loaded.model.num_classes
    return data.get("name") or ("shapes" if classes == 8 else "cifar10" if classes == 10 else None)


def set_key(loaded: LoadedWeights, n: int, split: str = "test", seed: int | None = None) -> tuple:
    """What decides a checkpoint's set (data, size, normalization, split, n): twins share it, so one rendering."""
    cfg = loaded.pretrained_cfg
    return (repr(loaded.meta.get("data")), tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), n,
            split, seed)


def held_out_set(loaded: LoadedWeights, n: int | None, *, split: str = "test", seed: int | None = None,
                 data_dir: str | None = None, device: str | torch.device = "cpu", dataset: str | None = None,
                 checksum: bool = True) -> HeldOut:
    """`n` images of `split` for `loaded` (see the module docstring), normalized, on `device`.

    `seed` overrides the Shapes seed of the split, `dataset` the data the checkpoint names (`evaluate --data`);
    n None is CIFAR's whole split; `checksum=False` reads CIFAR-format files of one's own (`datasets.load_cifar`).
    ValueError for data that has no such set here.
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    data = dict(loaded.meta.get("data") or {})
    config = dict(loaded.meta.get("config") or {})
    name = dataset or data_name(loaded)
    cfg = loaded.pretrained_cfg
    if name == "shapes":
        if n is None:
            raise ValueError("Shapes images are rendered: say how many (n)")
        if seed is None:
            seed = int(data.get("test_seed", TEST_SEED)) if split == "test" else int(
                data.get("train_seed", loaded.meta.get("seed", 0)))
        size = int(cfg["input_size"][-1])
        clutter = bool(data.get("clutter", config.get("clutter", True)))
        ds = ShapesDataset(n, seed, size, clutter)
        images, labels, classes = ds.images, ds.labels, list(ds.classes)
        desc = {"name": "shapes", "split": split, "n": n, "seed": seed, "size": size, "clutter": clutter}
    elif name in ("cifar10", "cifar100"):
        images, labels, classes = load_cifar(name, data_dir, train=split == "train", checksum=checksum)
        images, labels = images[:n], labels[:n]
        desc = {"name": name, "split": split, "n": len(labels)}
    else:
        raise ValueError(f"{loaded.source}: no held-out set for data {name!r}; the studies take Shapes or CIFAR "
                         "checkpoints (their JSON's `data` says which)")
    return HeldOut(normalize_images(images, cfg["mean"], cfg["std"]).to(device), labels.to(device), desc, classes)
