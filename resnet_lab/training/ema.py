"""An exponential moving average of a model's weights (timm's `ModelEmaV3`, torchvision's `ExponentialMovingAverage`).

After every optimizer step each floating-point tensor of the state (weights and BatchNorm's running statistics, as
timm and torchvision with `use_buffers=True` do) moves a `1 - d` step towards the model's; integer buffers (BN's
step count) are copied. `d` warms up as TensorFlow's `num_updates` rule, `min(decay, (1 + n) / (10 + n))` after `n`
updates, so the first steps do not leave the average stuck near the random init on a short run.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightsEma:
    """The average of `model`'s weights over its training steps, held in `module` (a copy, in eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay must lie in (0, 1) (0: no average), not {decay}")
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_now(self) -> float:
        """This update's decay: the warm-up rule, capped at `decay`."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay_now()
        theirs = model.state_dict()
        for name, mine in self.module.state_dict().items():
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs[name].detach().to(mine.dtype), 1.0 - d)
            else:
                mine.copy_(theirs[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """What a training state keeps: the averaged tensors and the update count (the warm-up's `n`)."""
        return {"updates": self.updates, "state": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["state"])
