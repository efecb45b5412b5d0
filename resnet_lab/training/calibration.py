"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation split's NLL, folded into the head.

Label smoothing, which the small-folder recipe uses, trains a net to be about 90 % sure of answers it gets 99 %
right, so its expected calibration error is about ten points. Dividing the logits by T changes no prediction (the
argmax is the same) and only the probabilities. T is folded into the classifier (its weight and bias divided by
T), so every reader of the checkpoint (`evaluate`, the app, `export`) gets the calibrated probabilities without
knowing T. Under torchrun each rank scores its share of the validation split and the per-T loss sums are added
over ranks: the single-process fit.

T is searched on a log grid over `TEMPERATURES` (0.1-10: a factor of ten either way). A validation split the net
gets entirely right has its NLL falling all the way down to the smallest T; the fit then sits at the bound and its
record says so (`at_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loaders import Batches
from ..runtime.distributed import Dist, all_reduce_sum
from ..runtime.scoring import score

TEMPERATURES = torch.logspace(-1, 1, 201, dtype=torch.float64)  # 0.1 to 10, 1.2 % apart


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the validation NLL (mean per image) before and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    images: int

    @property
    def at_bound(self) -> bool:
        return self.temperature in (float(TEMPERATURES[0]), float(TEMPERATURES[-1]))

    def record(self) -> dict[str, Any]:
        return {"temperature": round(self.temperature, 4), "val_nll_before": round(self.nll_before, 5),
                "val_nll_after": round(self.nll_after, 5), "val_images": self.images, "at_bound": self.at_bound,
                "how": "T minimizing the validation split's NLL over 0.1..10, the head's weight and bias divided by T"}


def fit_temperature(model: nn.Module, batches: Batches, *, dtype: torch.dtype | None = None,
                    dist: Dist = Dist()) -> TemperatureFit:
    """The T in `TEMPERATURES` that minimizes the NLL of `model`'s logits on `batches` (every rank's share)."""
    sums = torch.zeros(len(TEMPERATURES), dtype=torch.float64)
    seen = [0]

    def add(logits: torch.Tensor, y: torch.Tensor) -> None:
        z = logits.detach().double().cpu()
        for i, t in enumerate(TEMPERATURES):
            sums[i] += F.cross_entropy(z / t, y.cpu(), reduction="sum")
        seen[0] += len(y)

    score(model, batches, dtype=dtype, on_logits=add)
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([seen[0]])]), dist)
    nll, n = totals[:-1] / totals[-1].clamp(min=1), int(totals[-1])
    best = int(nll.argmin())
    one = int((TEMPERATURES - 1.0).abs().argmin())  # T = 1 lies on the grid
    return TemperatureFit(float(TEMPERATURES[best]), float(nll[one]), float(nll[best]), n)


@torch.no_grad()
def fold(model: nn.Module, temperature: float) -> None:
    """Divide the classifier's weight and bias by `temperature`: the model's logits become logits / T."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    head.weight.div_(temperature)
    if head.bias is not None:
        head.bias.div_(temperature)


def calibrate(model: nn.Module, batches: Batches, *, dtype: torch.dtype | None = None,
              dist: Dist = Dist()) -> TemperatureFit:
    """Fit T on `batches` (the validation split) and fold it into `model`'s head; returns the fit."""
    fit = fit_temperature(model, batches, dtype=dtype, dist=dist)
    fold(model, fit.temperature)
    return fit
