"""Evaluate a classifier on a labelled test set: top-1/top-5, per-class accuracy, confusion, calibration.

`EvaluationResult` keeps only sums and counts (never averages), so results of batches, or of torchrun ranks,
combine exactly with `merge`: the merge of two halves equals the result of the whole. Calibration follows
Guo et al. 2017, "On Calibration of Modern Neural Networks": 15 equal-width confidence bins (lo, hi], and
ECE = sum over bins of (count / N) * |accuracy - mean confidence|.

`python -m resnet_lab evaluate --model FILE|TAG --data shapes|cifar10|cifar100|folder:PATH [--out DIR]` drives it;
under torchrun each rank scores its share (`distributed.shard_indices`) and rank 0 writes the merged result.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from ..progress import Progress

ECE_BINS = 15
TOP_K = 5
DATASETS = ("shapes", "cifar10", "cifar100")
FOLDER = "folder:"
LIST_SHOWN = 12  # class names shown in a message before "..."
NAMES_ON_AXES_MAX = 30  # above this many classes the confusion matrix's tick labels would be unreadable
VALUES_IN_CELLS_MAX = 12


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """The `bins + 1` equal-width edges over [0, 1]; bin m holds confidences in (edge[m], edge[m+1]]."""
    return np.linspace(0.0, 1.0, bins + 1)


@dataclass
class EvaluationResult:
    """Sums and counts over the images seen so far; every metric is a property derived from them."""

    classes: list[str]
    bins: int = ECE_BINS
    n: int = 0
    correct_top1: int = 0
    correct_topk: int = 0
    nll_sum: float = 0.0
    confusion: np.ndarray = field(default=None)  # int64 [C, C]: rows the true class, columns the prediction
    bin_count: np.ndarray = field(default=None)  # int64 [bins]
    bin_confidence_sum: np.ndarray = field(default=None)  # float64 [bins]
    bin_correct: np.ndarray = field(default=None)  # int64 [bins]

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        c = len(self.classes)
        if c < 1:
            raise ValueError("an evaluation needs at least one class")
        if self.confusion is None:
            self.confusion = np.zeros((c, c), np.int64)
        if self.bin_count is None:
            self.bin_count = np.zeros(self.bins, np.int64)
        if self.bin_confidence_sum is None:
            self.bin_confidence_sum = np.zeros(self.bins, np.float64)
        if self.bin_correct is None:
            self.bin_correct = np.zeros(self.bins, np.int64)

    # ------------------------------------------------------------------ accumulate

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def k(self) -> int:
        """The k of top-k: 5, or the class count where there are fewer classes."""
        return min(TOP_K, self.num_classes)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                    bins: int = ECE_BINS) -> EvaluationResult:
        return cls(list(classes), bins).update(logits, labels)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> EvaluationResult:
        """Add one batch of logits [N, C] with labels [N]; computed in float64 so long runs sum exactly enough."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}], got {list(logits.shape)}")
        labels = labels.to(logits.device, torch.int64).reshape(-1)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            low, high = int(labels.min()), int(labels.max())
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {low}..{high}")
        logp = logits.detach().double().log_softmax(1)
        confidence, pred = logp.max(1)
        confidence = confidence.exp()
        correct = pred == labels
        topk = logp.topk(self.k, dim=1).indices
        c = self.num_classes
        edges = torch.as_tensor(bin_edges(self.bins)[1:-1], dtype=torch.float64, device=logits.device)
        bin_index = torch.bucketize(confidence, edges, right=False)  # edges[m-1] < conf <= edges[m]
        self.n += int(labels.numel())
        self.correct_top1 += int(correct.sum())
        self.correct_topk += int((topk == labels[:, None]).any(1).sum())
        self.nll_sum += float(F.nll_loss(logp, labels, reduction="sum")) if labels.numel() else 0.0
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c).cpu().numpy()
        self.bin_count += torch.bincount(bin_index, minlength=self.bins).cpu().numpy()
        self.bin_correct += torch.bincount(bin_index[correct], minlength=self.bins).cpu().numpy()
        self.bin_confidence_sum += torch.bincount(bin_index, weights=confidence, minlength=self.bins).cpu().numpy()
        return self

    def merge(self, other: EvaluationResult) -> EvaluationResult:
        """A new result holding both: sums and counts add (how torchrun ranks combine)."""
        if self.classes != other.classes or self.bins != other.bins:
            raise ValueError("cannot merge evaluations of different classes or bin counts")
        return EvaluationResult(
            self.classes, self.bins, self.n + other.n, self.correct_top1 + other.correct_top1,
            self.correct_topk + other.correct_topk, self.nll_sum + other.nll_sum,
            self.confusion + other.confusion, self.bin_count + other.bin_count,
            self.bin_confidence_sum + other.bin_confidence_sum, self.bin_correct + other.bin_correct,
        )

    # ------------------------------------------------------------------ metrics

    def _ratio(self, num: float) -> float:
        return num / self.n if self.n else float("nan")

    @property
    def top1(self) -> float:
        return self._ratio(self.correct_top1)

    @property
    def topk(self) -> float:
        """Top-k accuracy with k = `self.k` (top-5 wherever there are at least five classes)."""
        return self._ratio(self.correct_topk)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood of the true class (cross-entropy), in nats."""
        return self._ratio(self.nll_sum)

    @property
    def class_counts(self) -> np.ndarray:
        return self.confusion.sum(1)

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each true class; NaN for a class with no images."""
        counts = self.class_counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, np.diag(self.confusion) / np.maximum(counts, 1), np.nan)

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |accuracy - confidence| over the bins."""
        return self._ratio(float(np.abs(self.bin_correct - self.bin_confidence_sum).sum()))

    def reliability(self) -> list[dict[str, float]]:
        """Per bin: its edges, mean confidence, accuracy (NaN where empty) and count (the reliability diagram)."""
        edges = bin_edges(self.bins)
        rows = []
        for m in range(self.bins):
            count = int(self.bin_count[m])
            rows.append({
                "lo": float(edges[m]), "hi": float(edges[m + 1]), "count": count,
                "confidence": float(self.bin_confidence_sum[m] / count) if count else float("nan"),
                "accuracy": float(self.bin_correct[m] / count) if count else float("nan"),
            })
        return rows

    # ------------------------------------------------------------------ outputs

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The headline numbers plus `extra` (command, model source, data), JSON-ready (NaN becomes null)."""
        out = {
            **extra, "n": self.n, "num_classes": self.num_classes, "top1": self.top1, f"top{self.k}": self.topk,
            "k": self.k, "ece": self.ece, "ece_bins": self.bins, "nll": self.nll,
            "reliability": self.reliability(),
        }
        return _json_safe(out)

    def to_json(self, path: str | Path, **extra: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.summary(**extra), indent=2) + "\n")
        return path

    def to_csv(self, path: str | Path) -> Path:
        """One row per class: index, name, images, correct, accuracy, and how often it was predicted."""
        path = Path(path)
        acc, counts, predicted = self.per_class_accuracy, self.class_counts, self.confusion.sum(0)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "class", "count", "correct", "accuracy", "predicted"])
            for i, name in enumerate(self.classes):
                w.writerow([i, name, int(counts[i]), int(self.confusion[i, i]),
                            "" if np.isnan(acc[i]) else f"{acc[i]:.6f}", int(predicted[i])])
        return path

    def confusion_figure(self) -> Figure:
        """The confusion matrix normalized per true class (each row sums to 1), as a Figure (no pyplot)."""
        c = self.num_classes
        counts = self.class_counts[:, None]
        norm = np.where(counts > 0, self.confusion / np.maximum(counts, 1), 0.0)
        side = min(12.0, 3.0 + 0.35 * c)
        fig = Figure(figsize=(side + 1.2, side))
        ax = fig.add_subplot()
        im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        if c <= NAMES_ON_AXES_MAX:
            ax.set_xticks(range(c), self.classes, rotation=90 if c > 8 else 45, ha="right" if c <= 8 else "center")
            ax.set_yticks(range(c), self.classes)
        if c <= VALUES_IN_CELLS_MAX:
            for i in range(c):
                for j in range(c):
                    if self.confusion[i, j]:
                        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"Confusion (top-1 {self.top1:.2%}, n={self.n})")
        fig.tight_layout()
        return fig

    def reliability_figure(self) -> Figure:
        """Accuracy per confidence bin against the diagonal, the gap to the bin's mean confidence shaded."""
        rows = self.reliability()
        width = 1.0 / self.bins
        left = np.array([r["lo"] for r in rows])
        filled = np.array([r["count"] > 0 for r in rows])
        acc = np.nan_to_num(np.array([r["accuracy"] for r in rows]))
        conf = np.nan_to_num(np.array([r["confidence"] for r in rows]))
        fig = Figure(figsize=(5.5, 5.5))
        ax = fig.add_subplot()
        ax.bar(left[filled], acc[filled], width=width, align="edge", color="tab:blue", edgecolor="black",
               label="accuracy")
        ax.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width, align="edge",
               color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Reliability: ECE {self.ece:.2%} ({self.bins} bins, n={self.n})")
        ax.legend(loc="upper left")
        fig.tight_layout()
        return fig


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


# ----------------------------------------------------------------------------- scoring


def _score(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], result: EvaluationResult,
           total: int, progress: Progress | None) -> EvaluationResult:
    """Feed ready network inputs through `model` in eval mode into `result` (restoring train mode after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for step, (x, y) in enumerate(batches, 1):
            if len(y):
                result.update(model(x.to(device, non_blocking=True)), y)
            if progress is not None:
                progress(step / max(total, 1), f"{result.n} images")
    finally:
        model.train(was_training)
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
             mean: Sequence[float], std: Sequence[float], batch_size: int = 256,
             progress: Progress | None = None) -> EvaluationResult:
    """Run uint8 images [N, 3, H, W] through `model` in eval mode (normalized with mean/std) and score them."""
    device = next(model.parameters()).device
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    starts = range(0, len(labels), batch_size)
    batches = ((((images[i:i + batch_size].to(device).float().div_(255.0)) - m) / s, labels[i:i + batch_size])
               for i in starts)
    return _score(model, batches, EvaluationResult(list(classes)), len(starts), progress)


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
    from ..data import imagenet_labels
    from .datasets import DatasetError

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
    out and lists it. `datasets.ImageFiles` instead takes the next good file, right for an epoch but wrong for a
    count; and a reason returned with the batch reaches the caller from DataLoader workers, where a list kept in
    the dataset would stay in the worker's process.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], pretrained_cfg: dict[str, Any]) -> None:
        from ..data import eval_config, eval_transform, resize_side

        self.samples = list(samples)
        self.cfg = dict(pretrained_cfg)
        self.transform = eval_transform(self.cfg)
        self.side = resize_side(self.cfg)
        self.shape = tuple(eval_config(self.cfg)["input_size"])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        from ..data import ImageError, check_transformable, decode_image

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
    from .datasets import DatasetError, folder_samples

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
    device = next(model.parameters()).device
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

    return _score(model, good_rows(), EvaluationResult(list(classes)), len(loader), progress), skipped


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="assets/shapes_resnet20.safetensors", help="a checkpoint file or a timm tag")
    p.add_argument("--data", default="shapes",
                   help=f"one of {', '.join(DATASETS)} or {FOLDER}PATH (PATH/<class>/<image>; an ImageNet "
                        "validation folder with synset-id sub-folders maps onto timm's class order)")
    p.add_argument("--n", type=int, default=2000, help="Shapes: test images rendered")
    p.add_argument("--seed", type=int, default=None, help="Shapes: data seed (default: the checkpoint's test seed)")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR: the folder holding cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--no-checksum", dest="checksum", action="store_false",
                   help="CIFAR: read files in torchvision's layout without the md5 check of the official ones")
    p.add_argument("--out", default=None, help="write summary.json, per_class.csv, confusion.png, reliability.png here")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="folders: DataLoader processes decoding images")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def _load_data(args: argparse.Namespace, loaded: Any) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(uint8 images, labels, class names, a description of the data for the summary)."""
    if args.data == "shapes":
        from ..shapes import ShapesDataset

        if args.n < 1:
            raise ValueError(f"--n must be at least 1, not {args.n}")
        data = loaded.meta.get("data", {})
        seed = args.seed if args.seed is not None else int(data.get("test_seed", 999))
        size = int(loaded.pretrained_cfg["input_size"][-1])
        ds = ShapesDataset(args.n, seed, size, bool(data.get("clutter", True)))
        return ds.images, ds.labels, list(ds.classes), {"name": "shapes", "n": args.n, "seed": seed, "size": size}
    from .datasets import load_cifar

    images, labels, classes = load_cifar(args.data, args.data_dir, train=False, checksum=args.checksum)
    return images, labels, classes, {"name": args.data, "split": "test", "checksum": args.checksum}


def _shard(args: argparse.Namespace, loaded: Any, folder: bool, dist: Any, progress: Progress | None,
           ) -> tuple[EvaluationResult, list[tuple[str, str]], dict[str, Any]]:
    """This rank's share of the data, scored: (result, skipped files, the data's description)."""
    from .distributed import shard_indices

    model = loaded.model
    if folder:
        dataset, match, root = folder_dataset(args.data.removeprefix(FOLDER), loaded.meta.get("classes"),
                                              model.num_classes, loaded.pretrained_cfg)
        result, skipped = evaluate_folder(model, dataset, match.classes, shard_indices(len(dataset), dist),
                                          args.batch_size, args.workers, progress)
        return result, skipped, {"name": "folder", "root": str(root), "files": len(dataset),
                                 "folder_classes": len(match.index), "class_match": match.how}
    images, labels, classes, data = _load_data(args, loaded)
    if model.num_classes != len(classes):
        raise ValueError(f"{args.model} predicts {model.num_classes} classes but {args.data} has {len(classes)}: "
                         "evaluate a model trained on this data")
    model_classes = loaded.meta.get("classes")
    if model_classes and list(model_classes) != classes and dist.is_main:
        print(f"evaluate: warning: the model's class names differ from {args.data}'s; reporting {args.data}'s",
              file=sys.stderr)
    idx = torch.tensor(shard_indices(len(labels), dist), dtype=torch.int64)
    return evaluate(model, images[idx], labels[idx], classes, loaded.pretrained_cfg["mean"],
                    loaded.pretrained_cfg["std"], args.batch_size, progress), [], data


def _write(result: EvaluationResult, out: Path, extra: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "summary.json", **extra)
    result.to_csv(out / "per_class.csv")
    result.confusion_figure().savefig(out / "confusion.png", dpi=100)
    result.reliability_figure().savefig(out / "reliability.png", dpi=100)


def run(args: argparse.Namespace) -> int:
    """The evaluate command; under torchrun each rank scores its `shard_indices` share and rank 0 merges and writes."""
    from ..progress import tqdm_progress
    from ..weights import WeightsUnavailable, load_weights
    from . import distributed
    from .datasets import DatasetError

    def fail(message: str) -> int:
        print(f"evaluate: {message}", file=sys.stderr)
        return 2

    folder = args.data.startswith(FOLDER)
    if args.data not in DATASETS and not (folder and args.data != FOLDER):
        return fail(f"unknown --data {args.data!r}: choose one of {', '.join(DATASETS)} or {FOLDER}PATH")
    if args.batch_size < 1 or args.workers < 0:
        return fail(f"--batch-size must be at least 1 and --workers at least 0 (got {args.batch_size}, "
                    f"{args.workers})")
    try:
        dist = distributed.setup(args.device)  # cuda:LOCAL_RANK under torchrun; refuses CUDA where there is none
    except ValueError as e:
        return fail(str(e))
    try:
        try:
            loaded = load_weights(args.model)
        except (WeightsUnavailable, ValueError) as e:
            return fail(str(e))
        loaded.model.to(dist.device)
        progress, close = tqdm_progress(100, "evaluate") if dist.is_main else (None, lambda: None)
        try:
            result, skipped, data = _shard(args, loaded, folder, dist, progress)
        except (DatasetError, ValueError) as e:
            return fail(str(e))
        finally:
            close()
        parts = distributed.gather_objects((result, skipped), dist)
        if not dist.is_main:
            return 0
        result = functools.reduce(EvaluationResult.merge, [r for r, _ in parts])
        skipped = sorted(s for _, found in parts for s in found)
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
