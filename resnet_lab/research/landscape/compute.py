"""The loss around trained weights along filter-normalized directions, with the controls a reading needs.

`compute_landscape` evaluates every net at w0 + alpha*d1 (+ beta*d2) for each direction seed: a 1-D line or a
2-D grid (Li et al. 2018, Fig. 5), or just the points at +-r for a few radii (the sharpness study, over many
seeds). Besides the plain number (control "none": BN on the running statistics it was trained with, the logits as
they are), two controls, each a confound that could explain a difference in how fast the loss rises:

- "bn": BatchNorm's running statistics re-estimated at each perturbed point on the checkpoint's own training
  images (reset, then a cumulative average over fixed batches in train mode, as SWA's `bn_update`), so a rise is
  not just statistics gone stale for the moved weights. The stored statistics are put back after every point.
- "temperature": each net's logits divided by one temperature T (solved once, at w0) so that every net's loss at
  its own minimum equals the largest of them: a net that is merely more confident does not look sharper because
  its losses are on another scale. "bn+temperature" applies both (T solved at the re-estimated w0).

The held-out images stay on the device; each point is one in-place move of the weights plus forward passes, and the
weights are restored bit for bit at the end. Under torchrun each rank takes a strided share of the (seed, point)
pairs and every rank returns the whole gathered frame.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...data.heldout import held_out_set, set_key
from ...progress import Progress
from ...runtime.distributed import gather_objects, shard_indices
from ...runtime.scoring import EVAL_BATCH, Score, chunks, score
from ..study import model_labels
from .directions import grid_points, moving, random_direction

if TYPE_CHECKING:
    from ...data.heldout import HeldOut
    from ...models.weights import LoadedWeights
    from ...runtime.distributed import Dist

COLUMNS = ["model", "seed", "alpha", "beta", "control", "loss", "accuracy"]
CONTROLS = ("none", "temperature", "bn", "bn+temperature")
RADII = (0.05, 0.1, 0.2, 0.5)
RECAL_BATCH = 128  # the twins' training batch: statistics of batches the size they were trained with


def radius_points(radii: Sequence[float]) -> list[tuple[float, float]]:
    """The sharpness study's points on a line: the centre and +-r for each radius."""
    if not radii or any(not (r > 0 and math.isfinite(r)) for r in radii):
        raise ValueError(f"radii must be positive numbers, not {list(radii)}")
    return [(0.0, 0.0)] + [(s * float(r), 0.0) for r in sorted(set(radii)) for s in (-1, 1)]


@contextmanager
def bn_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm's running statistics and momentum as they are now, put back on exit (also on error)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    try:
        yield
    finally:
        for m, (momentum, buffers) in zip(bns, saved):
            m.momentum = momentum
            for k, b in buffers.items():
                getattr(m, k).copy_(b)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = RECAL_BATCH) -> None:
    """Re-estimate every BatchNorm's running mean and variance at the current weights from the images `x`.

    Reset, then a forward in train mode over fixed batches with momentum None, which makes each running statistic
    the plain average over batches of that batch's mean (and unbiased variance), then eval mode. Call it inside
    `bn_statistics_kept` to have the original statistics back afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for xb, _ in chunks(x, x.new_zeros(len(x)), batch):
            model(xb)
    finally:
        model.train(was_training)


def temperature_for(logits: torch.Tensor, y: torch.Tensor, target: float) -> float:
    """The T >= 1 with mean cross-entropy of logits / T equal to `target` (1 where the loss is already there,
    nan where no T reaches it: a target at or above the loss of uniform guessing)."""
    from scipy.optimize import brentq

    logits = logits.double()

    def excess(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), y)) - target

    if excess(0.0) >= 0:
        return 1.0
    hi = math.log(1e4)
    if excess(hi) <= 0:
        return math.nan
    return math.exp(brentq(excess, 0.0, hi, xtol=1e-10))


class PointScorer:
    """Loss and accuracy of one net at its current weights under each control (see the module docstring)."""

    def __init__(self, net: nn.Module, data: HeldOut, train_x: torch.Tensor | None, controls: Sequence[str],
                 batch: int = EVAL_BATCH) -> None:
        unknown = set(controls) - set(CONTROLS)
        if unknown or "none" not in controls:
            raise ValueError(f"controls must include 'none' and come from {', '.join(CONTROLS)}, not {list(controls)}")
        if train_x is None and any(c.startswith("bn") for c in controls):
            raise ValueError("the bn controls need training images to re-estimate BatchNorm on")
        self.net, self.data, self.train_x, self.controls, self.batch = net, data, train_x, tuple(controls), batch
        self.temperature = {"none": 1.0, "bn": 1.0, "temperature": 1.0, "bn+temperature": 1.0}

    def logits(self, recalibrated: bool) -> tuple[torch.Tensor, Score]:
        """All held-out logits at the current weights (float32) and their score, BN re-estimated first if asked."""
        out: list[torch.Tensor] = []
        with bn_statistics_kept(self.net):
            if recalibrated:
                recalibrate_bn(self.net, self.train_x)
            s = score(self.net, chunks(self.data.x, self.data.y, self.batch), on_logits=lambda z, _y: out.append(z))
        return torch.cat(out), s

    def __call__(self) -> dict[str, tuple[float, float]]:
        """{control: (loss, accuracy)} at the current weights. Without a temperature the loss is `score`'s (the
        same sums as every other evaluation); with one it is the mean cross-entropy of logits / T in float64."""
        result = {}
        for recalibrated in (False, True):
            wanted = [c for c in self.controls if c.startswith("bn") == recalibrated]
            if not wanted:
                continue
            z, s = self.logits(recalibrated)
            for c in wanted:
                t = self.temperature[c]
                loss = s.loss if c in ("none", "bn") else (
                    F.cross_entropy(z.double() / t, self.data.y).item() if math.isfinite(t) else math.nan)
                result[c] = (loss, s.accuracy)
        return result


def compute_landscape(models: Sequence[LoadedWeights], *, points: Sequence[tuple[float, float]] | None = None,
                      grid: int = 21, span: float = 1.0, dims: int = 1, n: int = 1000, seeds: Sequence[int] = (0,),
                      controls: Sequence[str] = ("none",), bn_images: int = 512, split: str = "test",
                      device: str | torch.device = "cpu", progress: Progress | None = None, dist: Dist | None = None,
                      batch: int = EVAL_BATCH) -> tuple[pd.DataFrame, dict]:
    """The tidy landscape (COLUMNS) of each net at `points` (default: the grid) along directions of each seed,
    and a record of the controls (temperatures and the loss they match).

    Each net is evaluated on a private copy moved to `device`, so the caller's model (one the app serves, say)
    is never perturbed. `dims` 2 uses directions (seed, 0) and (seed, 1); 1 uses (seed, 0) only.
    """
    if not models:
        raise ValueError("no models given")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if not (span > 0 and math.isfinite(span)):
        raise ValueError(f"span must be a positive number, not {span}")
    points = list(points) if points is not None else grid_points(grid, span, dims)
    if (0.0, 0.0) not in points:
        raise ValueError("the points must include the trained weights, (0, 0)")
    labels = model_labels(models)
    jobs = [(s, k) for s in seeds for k in range(len(points))]
    mine = jobs if dist is None else [jobs[i] for i in shard_indices(len(jobs), dist)]
    cache: dict[tuple, HeldOut] = {}

    def data_for(w: LoadedWeights, count: int, which: str) -> HeldOut:
        key = set_key(w, count, which)
        if key not in cache:
            cache[key] = held_out_set(w, count, split=which, device=device)
        return cache[key]

    nets, scorers = [], []
    for w in models:
        net = copy.deepcopy(w.model).to(device).eval()
        train_x = data_for(w, bn_images, "train").x if any(c.startswith("bn") for c in controls) else None
        nets.append(net)
        scorers.append(PointScorer(net, data_for(w, n, split), train_x, controls, batch))
    record = match_temperatures(scorers, labels)
    total, done, rows = len(models) * len(mine), 0, []
    for m, (label, net, scorer) in enumerate(zip(labels, nets, scorers)):
        for seed in dict.fromkeys(s for s, _ in mine):
            d1 = random_direction(net, seed, 0)
            d2 = random_direction(net, seed, 1) if any(b != 0 for _, b in points) else None
            with moving(net, d1, d2) as mover:
                for s, k in mine:
                    if s != seed:
                        continue
                    mover.move(*points[k])
                    rows += [(m, s, k, c, loss, acc) for c, (loss, acc) in scorer().items()]
                    done += 1
                    if progress is not None:
                        progress(done / total, f"{label}: seed {s}, point {k + 1}/{len(points)}")
    if dist is not None and dist.world_size > 1:
        rows = [r for part in gather_objects(rows, dist) for r in part]
    rows.sort(key=lambda r: (r[0], r[1], r[2], CONTROLS.index(r[3])))
    df = pd.DataFrame([(labels[m], s, points[k][0], points[k][1], c, loss, acc) for m, s, k, c, loss, acc in rows],
                      columns=COLUMNS)
    return df, record


def match_temperatures(scorers: Sequence[PointScorer], labels: Sequence[str]) -> dict:
    """Solve each net's temperature for the temperature controls (on the scorers, in place); the record says
    which loss they were matched to and each T."""
    record: dict = {}
    for control, recalibrated in (("temperature", False), ("bn+temperature", True)):
        if not any(control in s.controls for s in scorers):
            continue
        logits = [s.logits(recalibrated)[0] for s in scorers]
        losses = [float(F.cross_entropy(z.double(), s.data.y)) for z, s in zip(logits, scorers)]
        target = max(losses)
        temps = {}
        for z, s, label in zip(logits, scorers, labels):
            s.temperature[control] = temperature_for(z, s.data.y, target)
            temps[label] = s.temperature[control]
        record[control] = {"matched_loss": target, "own_loss": dict(zip(labels, losses)), "temperature": temps}
    return record


def read_landscape(df: pd.DataFrame) -> pd.DataFrame:
    """A landscape frame with every column of COLUMNS: files from before seeds and controls get seed 0 and
    control "none" (one pair of directions, seed 0, no control: what they were)."""
    df = df.copy()
    if "seed" not in df:
        df.insert(1, "seed", 0)
    if "control" not in df:
        df.insert(4, "control", "none")
    return df[COLUMNS]


def combine(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several landscape frames as one (a grid and a sharpness study of the same nets): a point measured in both
    (same net, seed, control and place; the same directions and images give the same loss) is kept once."""
    df = pd.concat([read_landscape(f) for f in frames], ignore_index=True)
    return df.drop_duplicates(["model", "seed", "control", "alpha", "beta"], ignore_index=True)


def chance_loss(num_classes: int) -> float:
    """The loss of uniform guessing, ln C: above it a point is off the trained basin."""
    return float(np.log(num_classes))
