"""The one optimizer builder, for training runs and the research studies alike (the Playground's twins included)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weight decay on the conv and linear weights, none on BatchNorm weights and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(kind: str, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float, *,
                   momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with `momentum` (optionally Nesterov), Adam (coupled L2) or AdamW (decoupled weight decay) over `params`
    (tensors, or groups that carry their own weight decay and learning rate)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if kind in ("adam", "adamw"):
        return (torch.optim.Adam if kind == "adam" else torch.optim.AdamW)(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {kind!r}")
