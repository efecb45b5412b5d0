"""Evaluate a classifier on a labelled test set: top-1/top-5, per-class accuracy, confusion, calibration.

The metrics are `metrics.EvaluationResult` (sums and counts, so shares merge exactly), fed by the one evaluation
loop (`scoring.score`, its logits through `on_logits`); Shapes and CIFAR are the one held-out set
(`heldout.held_out_set`) that the studies use too, so `evaluate` and they score the same images the same way.

`python -m resnet_lab evaluate --model FILE|TAG --data shapes|cifar10|cifar100|folder:PATH [--out DIR]` drives it;
under torchrun each rank scores its share (`distributed.shard_indices`) and rank 0 writes the merged result.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..cli.args import int_in, positive_int, seed, writable
from ..data.heldout import normalize_images
from ..progress import Progress
from ..runtime.devices import model_device
from ..runtime.scoring import Batch, chunks, score
from .metrics import EvaluationResult

if TYPE_CHECKING:
    from ..data.heldout import HeldOut
    from ..models.weights import LoadedWeights
    from ..runtime.distributed import Dist

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
    from ..data.datasets import DatasetError
    from ..data.images import imagenet_labels

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
        print(f"evaluate: warning: the model names no classes; its {num_classes} outputs are taken to be {where}'s "
              f"sub-folders in sorted order {_listed(found)}", file=sys.stderr)
        return ClassMatch(found, {c: i for i, c in enumerate(found)}, "folder-order")
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


class FolderImages(torch.utils.data.Dataset):
    """(network input, label, reason) for each (path, label) sample, through the app's decoder and eval transform.

    A file that cannot be used yields a zero image and the reason ("" for a good one), so the evaluation leaves it
    out and lists it. `folders.ImageFiles` instead takes the next good file, right for an epoch but wrong for a
    count; and a reason returned with the batch reaches the caller from DataLoader workers, where a list kept in
    the dataset would stay in the worker's process.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], pretrained_cfg: dict[str, Any]) -> None:
        from ..data.images import eval_config, eval_transform, resize_side

        self.samples = list(samples)
        self.cfg = dict(pretrained_cfg)
        self.transform = eval_transform(self.cfg)
        self.side = resize_side(self.cfg)
        self.shape = tuple(eval_config(self.cfg)["input_size"])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        from ..data.images import ImageError, check_transformable, decode_image

        path, label = self.samples[index]
        try:
            image = decode_image(path, min_side=self.side)
            check_transformable(image.size, self.cfg)
            return self.transform(image), label, ""
        except ImageError as e:
            return torch.zeros(self.shape), label, str(e)


def folder_dataset(path: str | Path, model_classes: Sequence[str] | None, num_classes: int,
                   pretrained_cfg: dict[str, Any]) -> tuple[FolderImages, ClassMatch, Path]:
    """Every image under PATH/<class>/, labelled with the model's output index for its class (`match_classes`)."""
    from ..data.datasets import DatasetError
    from ..data.folders import folder_samples

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


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="assets/shapes_resnet20.safetensors", help="a checkpoint file or a timm tag")
    p.add_argument("--data", type=_data_option, default="shapes",
                   help=f"one of {', '.join(DATASETS)} or {FOLDER}PATH (PATH/<class>/<image>; an ImageNet "
                        "validation folder with synset-id sub-folders maps onto timm's class order)")
    p.add_argument("--n", type=positive_int, default=2000, help="Shapes: test images rendered")
    p.add_argument("--seed", type=seed, default=None, help="Shapes: data seed (default: the checkpoint's test seed)")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR: the folder holding cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--no-checksum", dest="checksum", action="store_false",
                   help="CIFAR: read files in torchvision's layout without the md5 check of the official ones")
    p.add_argument("--out", type=writable("folder"), default=None,
                   help="write summary.json, per_class.csv, confusion.png, reliability.png here")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=int_in(0, 64), default=2, help="folders: DataLoader processes decoding images")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: $RESNET_LAB_DEVICE, else cuda when present; under torchrun "
                        "each process takes cuda:LOCAL_RANK)")


def _data_option(text: str) -> str:
    if text in DATASETS or (text.startswith(FOLDER) and text != FOLDER):
        return text
    raise argparse.ArgumentTypeError(f"unknown data {text[:60]!r}: choose one of {', '.join(DATASETS)} or "
                                     f"{FOLDER}PATH")


def _load_data(args: argparse.Namespace, loaded: LoadedWeights) -> tuple[HeldOut, dict[str, Any]]:
    """The held-out set `--data` names, for `loaded` (`heldout.held_out_set`: the studies' set): Shapes' `--n`
    images of `--seed` (default: the checkpoint's test seed), or CIFAR's whole test split; and its description."""
    from ..data.heldout import held_out_set

    if args.data == "shapes":
        held = held_out_set(loaded, args.n, seed=args.seed, dataset="shapes")
        return held, held.description
    held = held_out_set(loaded, None, dataset=args.data, data_dir=args.data_dir, checksum=args.checksum)
    return held, {**held.description, "checksum": args.checksum}


def _shard(args: argparse.Namespace, loaded: LoadedWeights, folder: bool, dist: Dist, progress: Progress | None,
           ) -> tuple[EvaluationResult, list[tuple[str, str]], dict[str, Any]]:
    """This rank's share of the data, scored: (result, skipped files, the data's description)."""
    from ..runtime.distributed import shard_indices

    model = loaded.model
    if folder:
        dataset, match, root = folder_dataset(args.data.removeprefix(FOLDER), loaded.meta.get("classes"),
                                              model.num_classes, loaded.pretrained_cfg)
        result, skipped = evaluate_folder(model, dataset, match.classes, shard_indices(len(dataset), dist),
                                          args.batch_size, args.workers, progress)
        return result, skipped, {"name": "folder", "root": str(root), "files": len(dataset),
                                 "folder_classes": len(match.index), "class_match": match.how}
    held, data = _load_data(args, loaded)
    if model.num_classes != len(held.classes):
        raise ValueError(f"{args.model} predicts {model.num_classes} classes but {args.data} has "
                         f"{len(held.classes)}: evaluate a model trained on this data")
    model_classes = loaded.meta.get("classes")
    if model_classes and list(model_classes) != held.classes and dist.is_main:
        print(f"evaluate: warning: the model's class names differ from {args.data}'s; reporting {args.data}'s",
              file=sys.stderr)
    share = torch.tensor(shard_indices(held.n, dist), dtype=torch.int64)
    batches = chunks(held.x[share], held.y[share], args.batch_size)
    return score_into(model, batches, held.classes, -(-len(share) // args.batch_size), progress), [], data


def _write(result: EvaluationResult, out: Path, extra: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "summary.json", **extra)
    result.to_csv(out / "per_class.csv")
    result.confusion_figure().savefig(out / "confusion.png", dpi=100)
    result.reliability_figure().savefig(out / "reliability.png", dpi=100)


def run(args: argparse.Namespace) -> int:
    """The evaluate command; under torchrun each rank scores its `shard_indices` share and rank 0 merges and writes."""
    from ..data.datasets import DatasetError
    from ..models.weights import WeightsUnavailable, load_weights
    from ..progress import tqdm_progress
    from ..runtime import distributed

    def fail(message: str) -> int:
        print(f"evaluate: {message}", file=sys.stderr)
        return 2

    folder = args.data.startswith(FOLDER)
    try:
        dist = distributed.setup(args.device)  # cuda:LOCAL_RANK under torchrun; refuses CUDA where there is none
    except ValueError as e:
        return fail(str(e))
    try:
        # every rank reaches the gather, failed or not, so one rank's error never leaves the others waiting there
        # (until a collective timeout); the error is then every rank's exit code, printed once by rank 0
        result, skipped, data, error = None, [], {}, None
        try:
            loaded = load_weights(args.model)
            loaded.model.to(dist.device)
            progress, close = tqdm_progress(100, "evaluate") if dist.is_main else (None, lambda: None)
            try:
                result, skipped, data = _shard(args, loaded, folder, dist, progress)
            finally:
                close()
        except (WeightsUnavailable, DatasetError, ValueError) as e:
            error = str(e) if dist.world_size == 1 else f"rank {dist.rank}: {e}"
        parts = distributed.gather_objects((result, skipped, error), dist)
        errors = [e for _, _, e in parts if e]
        if errors:
            return fail(errors[0]) if dist.is_main else 2
        if not dist.is_main:
            return 0
        result = functools.reduce(EvaluationResult.merge, [r for r, _, _ in parts])
        skipped = sorted(s for _, found, _ in parts for s in found)
        for path, reason in skipped:
            print(f"evaluate: skipped {path}: {reason}", file=sys.stderr)
        if folder:
            data["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
        extra = {"command": getattr(args, "command_line", None), "model": loaded.source, "data": data,
                 "device": str(dist.device), "world_size": dist.world_size}
        print(f"{loaded.source} on {args.data} ({result.n} images): top-1 {result.top1:.4f}  "
              f"top-{result.k} {result.topk:.4f}  ECE {result.ece:.4f}  NLL {result.nll:.4f}")
        if args.out:
            _write(result, Path(args.out), extra)
            print(f"wrote summary.json, per_class.csv, confusion.png, reliability.png to {args.out}")
        return 0
    finally:
        distributed.cleanup(dist)
