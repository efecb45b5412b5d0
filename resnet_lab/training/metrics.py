"""Classification metrics kept as sums and counts: top-1/top-k, NLL, per-class accuracy, confusion, calibration.

`EvaluationResult` keeps only sums and counts (never averages), so results of batches, or of torchrun ranks,
combine exactly with `merge`: the merge of two halves equals the result of the whole. Calibration follows
Guo et al. 2017, "On Calibration of Modern Neural Networks": 15 equal-width confidence bins (lo, hi], and
ECE = sum over bins of (count / N) * |accuracy - mean confidence|.
Its figures are drawn in `plot`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
TOP_K = 5


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
