"""The run: plain and residual twins trained in lockstep on identical batches, recorded as tidy curves.

Tidy columns (`COLUMNS`): arch, variant, depth, step, metric, value, where metric is train_loss / train_acc (per
step, on the batch just seen, before the update), their `_smooth` trailing means, and val_loss / val_acc (the one
evaluation loop, `scoring.score`: eval mode, held-out images) at `eval_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...data.heldout import VAL_SEED_OFFSET
from ...data.shapes import ShapesDataset
from ...models.optim import make_optimizer as build_optimizer
from ...models.resnet import REGISTRY, build, init_seed
from ...progress import Progress
from ...runtime.scoring import EVAL_BATCH, chunks, score

DEFAULT_ARCHS = ("plain20", "plain56", "resnet20", "resnet56")
COLUMNS = ["arch", "variant", "depth", "step", "metric", "value"]


def _images(n: int, seed: int, size: int, clutter: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` normalized Shapes images and their labels."""
    ds = ShapesDataset(n, seed, size, clutter=clutter)
    return ds.normalized(), ds.labels


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup from lr/10, then cosine to 0: a fixed budget ends settled, so final losses compare nets."""
    if step < warmup:
        return lr * (0.1 + 0.9 * step / warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def eval_steps(steps: int, evals: int) -> list[int]:
    """The steps validated at: 0 and `evals` evenly spaced ones up to the last (the cost estimate counts these)."""
    return sorted({0, *np.linspace(0, steps, evals + 1).round().astype(int)[1:].tolist()})


class Watch(Protocol):
    """What looks at a run while it trains (the Playground's live view): called inside the one lockstep loop, so
    the live run trains exactly as `run_degradation` does."""

    def before_update(self, arch: str, net: nn.Module, step: int) -> None:
        """After the backward pass, before the optimizer step: the gradients of this step are in `.grad`."""

    def after_update(self, arch: str, net: nn.Module, step: int, loss: float, acc: float) -> None:
        """After the optimizer step."""

    def validated(self, arch: str, step: int, loss: float, acc: float) -> None:
        """Held-out loss and accuracy at `step` (before that step's update)."""

    def keep_going(self, step: int) -> bool:
        """After every net took step `step`: False stops the run there (then validated once more)."""


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's), or Adam (decoupled weight decay: AdamW) for the Playground's choice."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
    return build_optimizer("sgd" if name == "sgd" else "adamw", params, lr, momentum=momentum,
                           weight_decay=weight_decay)


def run_degradation(
    steps: int,
    batch_size: int,
    archs: Sequence[str] = DEFAULT_ARCHS,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    train_size: int = 10_000,
    val_size: int = 1000,
    evals: int = 5,
    image_size: int = 32,
    clutter: bool = False,
    until: int | None = None,
    device: str | torch.device = "cpu",
    norm: str = "bn",
    zero_init: bool = False,
    optimizer: str = "sgd",
    watch: Watch | None = None,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Train `archs` in lockstep on identical batches; return the tidy curves.

    `progress(fraction, desc)` is called as training advances (the UI passes Gradio's progress, the CLI a tqdm
    bar). `until` stops after that many steps of the `steps`-step schedule (no final validation): the start of a
    long run, exactly as the long run had it, for checking shipped curves. `device` runs the nets and holds the
    images there; the batch order is drawn on the CPU either way, so it is the same everywhere. `norm` ("bn" or
    "none"), `zero_init` (each block's last BN gamma zeroed) and `optimizer` (`OPTIMIZERS`) are the Playground's
    knobs; `watch` sees every step (`Watch`) and may stop the run early. `data` (normalized x_train, y_train, x_val,
    y_val: the Playground's uploaded images) replaces the rendered Shapes images.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError("need steps >= 1 and batch_size >= 1")
    if batch_size < 2 and norm == "bn":
        raise ValueError("train-mode BatchNorm needs a batch of at least 2")
    if until is not None and not 1 <= until <= steps:
        raise ValueError(f"until must be within 1..steps ({steps}), not {until}")
    unknown = [a for a in archs if a not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown archs: {', '.join(unknown)}")
    report = progress or (lambda _f, _d: None)
    device = torch.device(device)
    if data is None:
        report(0.0, "rendering Shapes images")
        x_train, y_train = _images(min(train_size, steps * batch_size), seed, image_size, clutter)
        x_val, y_val = _images(val_size, seed + VAL_SEED_OFFSET, image_size, clutter)  # another seed: unseen images
    else:
        x_train, y_train, x_val, y_val = data
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))

    nets: dict[str, nn.Module] = {}
    for arch in archs:  # one init seed for all: each ResNet starts from its plain twin's weights
        nets[arch] = build(arch, num_classes=num_classes, norm=norm, zero_init_last=zero_init,
                           seed=init_seed(seed)).to(device).train()
    opts = {a: make_optimizer(optimizer, n.parameters(), lr, momentum, weight_decay) for a, n in nets.items()}
    warmup = max(1, steps // 20)
    validate_at = eval_steps(steps, evals)

    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    rows: list[tuple[str, str, int, int, str, float]] = []

    def record(arch: str, step: int, metric: str, value: float) -> None:
        cfg = REGISTRY[arch]
        rows.append((arch, "residual" if cfg.residual else "plain", cfg.depth, step, metric, value))

    def validate(step: int) -> None:
        for arch, net in nets.items():
            s = score(net, chunks(x_val, y_val, EVAL_BATCH))
            record(arch, step, "val_loss", s.loss)
            record(arch, step, "val_acc", s.accuracy)
            if watch is not None:
                watch.validated(arch, step, s.loss, s.accuracy)

    last = steps if until is None else until
    for step in range(last):
        if step in validate_at:
            report(step / steps, f"validating at step {step}")
            validate(step)
        while len(order) < batch_size:  # a fresh permutation per epoch, the same for every net
            order = torch.cat([order, torch.randperm(len(x_train), generator=g)])
        idx, order = order[:batch_size], order[batch_size:]
        xb, yb = x_train[idx.to(device)], y_train[idx.to(device)]
        for arch, net in nets.items():
            for group in opts[arch].param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opts[arch].zero_grad(set_to_none=True)
            loss.backward()
            if watch is not None:
                watch.before_update(arch, net, step)
            opts[arch].step()
            loss_value, acc = loss.item(), (logits.argmax(1) == yb).float().mean().item()
            record(arch, step, "train_loss", loss_value)
            record(arch, step, "train_acc", acc)
            if watch is not None:
                watch.after_update(arch, net, step, loss_value, acc)
        report((step + 1) / steps, f"step {step + 1}/{steps}")
        if watch is not None and not watch.keep_going(step):
            last = step + 1
            break
    if until is None or until == steps or last < until:
        validate(last)
    report(1.0, "done")
    return add_smoothing(pd.DataFrame(rows, columns=COLUMNS), window=max(1, steps // 25))


def add_smoothing(df: pd.DataFrame, window: int) -> pd.DataFrame:
    """Append `<metric>_smooth` rows: a trailing mean over `window` steps of each per-step training metric."""
    train = df[df.metric.isin(["train_loss", "train_acc"])].sort_values("step")
    smooth = train.copy()
    smooth["value"] = train.groupby(["arch", "metric"]).value.transform(
        lambda v: v.rolling(window, min_periods=1).mean())
    smooth["metric"] = smooth.metric + "_smooth"
    return pd.concat([df, smooth], ignore_index=True)
