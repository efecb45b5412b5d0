"""Evaluate a classifier on a labelled test set: top-1/top-5, per-class accuracy, confusion, calibration.

The metrics are `metrics.EvaluationResult` (sums and counts, so shares merge exactly), fed by the one evaluation
loop (`scoring.score`, its logits through `on_logits`); Shapes and CIFAR are the one held-out set
(`heldout.held_out_set`) that the studies use too, so `evaluate` and they score the same images the same way.

`python -m resnet_lab evaluate --model FILE|TAG --data shapes|cifar10|cifar100|folder:PATH [--out DIR]` (`cli.evaluate`)
drives it; under torchrun each rank scores its share (`score_share`) and rank 0 writes the merged result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.datasets import DatasetError
from ..data.folders import FolderImages, folder_samples
from ..data.heldout import HeldOut, held_out_set, normalize_images
from ..data.images import imagenet_labels
from ..progress import Progress
from ..runtime.devices import model_device
from ..runtime.distributed import Dist, shard_indices
from ..runtime.scoring import Batch, chunks, score
from .metrics import EvaluationResult
from .plot import confusion_figure, reliability_figure

if TYPE_CHECKING:
    from ..models.weights import LoadedWeights

DATASETS = ("shapes", "cifar10", "cifar100")
FOLDER = "folder:"
LIST_SHOWN = 12  # class names shown in a message before "..."


# ----------------------------------------------------------------------------- scoring


def score_into(model: nn.Module, batches: Iterable[Batch], classes: Sequence[str], total: int,
               progress: Progress | None = None,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EvaluationResult:
    """An `EvaluationResult` of `model` over `batches` (through `scoring.score`: eval mode, restored after;
    `transform` maps each batch on the device); `progress(fraction, desc)` after each of the `total` batches."""
    result = EvaluationResult(list(classes))
    told = None if progress is None else lambda step: progress(step / max(total, 1), f"{result.n} images")
    score(model, batches, transform=transform, on_logits=result.update, progress=told)
    return result


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
             mean: Sequence[float], std: Sequence[float], batch_size: int = 256,
             progress: Progress | None = None) -> EvaluationResult:
    """Run uint8 images [N, 3, H, W] through `model` in eval mode (normalized with mean/std) and score them."""
    return score_into(model, chunks(images, labels, batch_size), classes, -(-len(labels) // batch_size), progress,
                      transform=lambda x: normalize_images(x, mean, std))


# ----------------------------------------------------------------------------- image folders
#
# `folder:PATH` holds PATH/<class>/<image> (torchvision's ImageFolder layout). Its labels are the *model's* output
# indices for the sub-folder names, never the folder's sorted order: a model trained on ["red", "blue"] answers
# "red" with output 0, whatever order the file system sorts them in, and an ImageNet validation folder (synset-id
# sub-folders, n01440764/ ...) maps each synset to timm's index for it, so a subset of the classes still lands on
# the right one of the 1000 outputs and timm's published top-1 for a tag can be checked.


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """ImageNet-1k's WordNet synset ids in timm's class order (output i of every timm ImageNet-1k head), bundled
    with timm (no network)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


@dataclass(frozen=True)
class ClassMatch:
    """How a folder's class sub-folders map onto a model's outputs."""

    classes: list[str]  # the model's outputs, named (what the results are reported over)
    index: dict[str, int]  # sub-folder name -> the model's output index
    how: str  # "names" (the checkpoint's class names), "imagenet-synsets" (timm's order) or "folder-order"
    note: str = ""  # what a caller should warn about (a folder-order guess)


def _listed(names: Sequence[str], limit: int = LIST_SHOWN) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def match_classes(folder_classes: Sequence[str], model_classes: Sequence[str] | None, num_classes: int,
                  where: str = "the folder") -> ClassMatch:
    """Map sub-folder names onto the model's outputs by name; `DatasetError` naming both lists when they do not fit.

    A folder may hold a subset of the model's classes (per-class accuracy is then NaN for the others). A model
    without class names with 1000 outputs is taken for ImageNet-1k when every sub-folder is a synset id; one with
    neither names nor 1000 outputs is matched in the folder's sorted order when the counts agree (with a warning).
    """
    found = list(folder_classes)
    named = list(model_classes) if model_classes else None
    if named is not None and len(named) != num_classes:
        raise DatasetError(f"the model has {num_classes} outputs but its checkpoint names {len(named)} classes")
    if named is not None and set(found) <= set(named):
        return ClassMatch(named, {c: named.index(c) for c in found}, "names")
    synsets = imagenet_synsets()
    imagenet = num_classes == len(synsets) and (named is None or tuple(named) in (synsets, imagenet_labels()))
    if imagenet and set(found) <= set(synsets):
        position = {s: i for i, s in enumerate(synsets)}
        return ClassMatch(list(synsets), {c: position[c] for c in found}, "imagenet-synsets")
    if named is None and not imagenet and num_classes == len(found):
        return ClassMatch(found, {c: i for i, c in enumerate(found)}, "folder-order",
                          f"the model names no classes; its {num_classes} outputs are taken to be {where}'s "
                          f"sub-folders in sorted order {_listed(found)}")
    if named is None and imagenet:
        named = list(synsets)
    model = (f"the model's {len(named)} classes are {_listed(named)}" if named is not None
             else f"the model predicts {num_classes} unnamed classes")
    message = f"{where}'s {len(found)} class sub-folders {_listed(found)} do not match the model: {model}"
    if named is not None:
        message += f"; not among the model's classes: {_listed([c for c in found if c not in named])}"
    if set(found) & {"train", "val", "test"}:
        message += ". Evaluate one split's folder, e.g. folder:PATH/val"
    elif imagenet:
        message += ". An ImageNet validation folder needs one sub-folder per synset id (n01440764/, ...)"
    else:
        message += ". Evaluate a model trained on these classes"
    raise DatasetError(message)


def folder_dataset(path: str | Path, model_classes: Sequence[str] | None, num_classes: int,
                   pretrained_cfg: dict[str, Any]) -> tuple[FolderImages, ClassMatch, Path]:
    """Every image under PATH/<class>/, labelled with the model's output index for its class (`match_classes`)."""
    root = Path(path).expanduser()
    found, samples = folder_samples(root)
    if not samples:
        raise DatasetError(f"{root}: no image files in its class sub-folders {_listed(found)}")
    match = match_classes(found, model_classes, num_classes, str(root))
    return FolderImages([(p, match.index[found[c]]) for p, c in samples], pretrained_cfg), match, root


@torch.inference_mode()
def evaluate_folder(model: nn.Module, dataset: FolderImages, classes: Sequence[str],
                    indices: Sequence[int] | None = None, batch_size: int = 256, workers: int = 2,
                    progress: Progress | None = None) -> tuple[EvaluationResult, list[tuple[str, str]]]:
    """Score `dataset` (or the samples at `indices`, a torchrun rank's share) through a DataLoader with `workers`
    decoding processes: (result, [(path, reason)] of the files left out)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    device = model_device(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    skipped: list[tuple[str, str]] = []

    def good_rows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen = 0
        for x, y, reasons in loader:
            ok = torch.tensor([not r for r in reasons], dtype=torch.bool)
            skipped.extend((dataset.samples[indices[seen + j]][0], r) for j, r in enumerate(reasons) if r)
            seen += len(reasons)
            yield x[ok], y[ok]

    return score_into(model, good_rows(), classes, len(loader), progress), skipped


# ----------------------------------------------------------------------------- one rank's share, scored


@dataclass
class Share:
    """One torchrun rank's share of an evaluation, scored: the result, the files left out (path, reason), the data's
    description and what the caller should warn about."""

    result: EvaluationResult
    skipped: list[tuple[str, str]]
    data: dict[str, Any]
    notes: list[str]


def held_out_data(loaded: LoadedWeights, data: str, *, n: int = 2000, seed: int | None = None,
                  data_dir: str | None = None, checksum: bool = True) -> tuple[HeldOut, dict[str, Any]]:
    """The held-out set `data` names, for `loaded` (`heldout.held_out_set`: the studies' set): Shapes' `n` images of
    `seed` (default: the checkpoint's test seed), or CIFAR's whole test split; and its description."""
    if data == "shapes":
        held = held_out_set(loaded, n, seed=seed, dataset="shapes")
        return held, held.description
    held = held_out_set(loaded, None, dataset=data, data_dir=data_dir, checksum=checksum)
    return held, {**held.description, "checksum": checksum}


def score_share(loaded: LoadedWeights, data: str, dist: Dist, *, n: int = 2000, seed: int | None = None,
                data_dir: str | None = None, checksum: bool = True, batch_size: int = 256, workers: int = 2,
                progress: Progress | None = None, name: str | None = None) -> Share:
    """This rank's `shard_indices` share of `data` (shapes, cifar10, cifar100 or folder:PATH), scored by `loaded`
    (`name`: how messages call the model, default its source)."""
    model = loaded.model
    if data.startswith(FOLDER):
        dataset, match, root = folder_dataset(data.removeprefix(FOLDER), loaded.meta.get("classes"),
                                              model.num_classes, loaded.pretrained_cfg)
        result, skipped = evaluate_folder(model, dataset, match.classes, shard_indices(len(dataset), dist),
                                          batch_size, workers, progress)
        return Share(result, skipped, {"name": "folder", "root": str(root), "files": len(dataset),
                                       "folder_classes": len(match.index), "class_match": match.how},
                     [match.note] if match.note else [])
    held, description = held_out_data(loaded, data, n=n, seed=seed, data_dir=data_dir, checksum=checksum)
    if model.num_classes != len(held.classes):
        raise ValueError(f"{name or loaded.source} predicts {model.num_classes} classes but {data} has "
                         f"{len(held.classes)}: evaluate a model trained on this data")
    model_classes = loaded.meta.get("classes")
    notes = []
    if model_classes and list(model_classes) != held.classes:
        notes.append(f"the model's class names differ from {data}'s; reporting {data}'s")
    share = torch.tensor(shard_indices(held.n, dist), dtype=torch.int64)
    batches = chunks(held.x[share], held.y[share], batch_size)
    return Share(score_into(model, batches, held.classes, -(-len(share) // batch_size), progress), [], description,
                 notes)


def write_results(result: EvaluationResult, out: Path, extra: dict[str, Any]) -> None:
    """summary.json (with `extra`), per_class.csv, confusion.png and reliability.png in the folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "summary.json", **extra)
    result.to_csv(out / "per_class.csv")
    confusion_figure(result).savefig(out / "confusion.png", dpi=100)
    reliability_figure(result).savefig(out / "reliability.png", dpi=100)
