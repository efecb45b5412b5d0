"""The one evaluation loop: every accuracy and held-out loss the project reports comes from `score`.

Training's validation, `evaluate`'s metrics, the landscape's grid points, the lesion study, the degradation
curves and faithfulness all feed batches through the same loop, so "accuracy" and "loss" mean the same thing
everywhere: eval mode (BatchNorm on its running statistics, restored afterwards), no autograd, logits in float32
(autocast to `dtype` inside), the cross-entropy summed in float64 per image, so a set split into any batches, or
over any torchrun ranks, sums to the same number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .devices import model_device

Batch = tuple[torch.Tensor, torch.Tensor]
# Held-out images per forward pass, for every study and training's validation: 500 halved the number of passes but
# doubled the largest activation, and on the CPU glibc keeps freed activation-sized blocks in its heap, so a
# landscape's resident peak reached 395 MiB for 167 MiB of live tensors; at 256 it is 84-197 MiB at the same speed.
EVAL_BATCH = 256


@dataclass
class Score:
    """Sums over the images seen: the mean loss and accuracy are derived, so scores of shares merge exactly."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else math.nan

    def merge(self, other: Score) -> Score:
        return Score(self.loss_sum + other.loss_sum, self.correct + other.correct, self.seen + other.seen)


def chunks(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """Consecutive slices of an in-memory set (fixed batching: a set gives the same sums on every call)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    for i in range(0, len(y), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.inference_mode()
def score(model: nn.Module, batches: Iterable[Batch], *, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
          dtype: torch.dtype | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
          on_logits: Callable[[torch.Tensor, torch.Tensor], object] | None = None,
          progress: Callable[[int], object] | None = None) -> Score:
    """Loss and accuracy of `model` on `batches` of ready (normalized) inputs and labels, in eval mode.

    `forward` replaces `model(x)` (a compiled or DDP-free view of the same weights); `transform` maps each batch
    once it is on the device (normalizing uint8 images, say); `on_logits(logits, y)` sees every batch's float32
    logits (calibration and confusion keep more than sums); `progress(step)` is told after each batch. The model's
    train/eval mode is restored afterwards, also on error.
    """
    forward = forward or model
    device = model_device(model)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    try:
        for step, (x, y) in enumerate(batches, 1):
            if len(y):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if transform is not None:
                    x = transform(x)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = forward(x)
                logits = logits.float()
                loss += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if on_logits is not None:
                    on_logits(logits, y)
            if progress is not None:
                progress(step)
    finally:
        model.train(was_training)
    return Score(loss.item(), int(correct.item()), seen)
