"""The degradation problem (He et al. 2015, Fig. 1 and 6): deeper plain nets train worse.

    python -m resnet_lab degradation --steps 1500 --batch-size 32 --out assets/degradation_curves.csv

Plain-20, plain-56, ResNet-20 and ResNet-56 are trained in lockstep on the same Shapes batches, from the same seed
(so each ResNet starts from its plain twin's weights), with the same SGD schedule. If plain-56 ends with a higher
*training* loss than plain-20, the deeper net is not overfitting: the solver fails to find what the shallower net
proves exists (copy plain-20, make the rest identity).

The budget is what a 2-core CPU trains in ~8 minutes: 1500 steps of 32 images, about 5 epochs of 10k Shapes images
without clutter (so that the shallow nets learn within the budget). It is ~2% of He et al.'s 64k iterations, at a
quarter of their batch: plain-56 never leaves chance level while plain-20 reaches 98%, and ResNet-56 learns (90%)
where plain-56 cannot, but it still lags ResNet-20 (in He et al.'s full schedule the deeper ResNet ends ahead). The
peak learning rate 0.02 at batch 32 is He et al.'s 0.1 at batch 128 scaled down, rounded; at 0.05, ResNet-56 (whose
initial loss is ~3.3, see gradflow) collapsed to chance level in trials.

Parts: `compute` (the run, tidy curves in `COLUMNS`), `describe` (final metrics and the verdicts), `plot`; here the
cost of a run before it starts (`estimate_cost`: seconds from `cost`, bytes from `memory`) and the CLI, which
writes the CSV with a JSON record of the run beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ...data.shapes import CLASSES
from ...models.resnet import REGISTRY, twin_name
from ...paths import ASSETS
from ...runtime import cost as C
from ...runtime.memory import ALLOCATOR_OVERHEAD, BACKWARD_WORKSPACE, step_memory
from ..tables import read_checked_csv
from .compute import COLUMNS, DEFAULT_ARCHS, EVAL_BATCH, add_smoothing, eval_steps, lr_at, run_degradation
from .describe import describe_degradation, final_metrics
from .plot import plot_curves

__all__ = ["COLUMNS", "DEFAULT_ARCHS", "QUICK", "SHIPPED_CSV", "add_smoothing", "describe_degradation",
           "estimate_cost", "estimate_memory", "estimate_seconds", "eval_steps", "final_metrics", "lr_at",
           "plot_curves", "read_csv", "run_degradation"]

SHIPPED_CSV = ASSETS / "degradation_curves.csv"
# The UI's re-run (~1-3 min on 2 cores): long enough for the first net to leave chance level, not for the final order.
QUICK = {"steps": 150, "batch_size": 32, "train_size": 4800, "val_size": 256, "evals": 3}
FLOAT_FORMAT = "%.6g"  # what the shipped CSV was written with (its test compares at this precision)


def read_csv(path: str | Path = SHIPPED_CSV) -> pd.DataFrame:
    return read_checked_csv(path, COLUMNS, "degradation")


# --- cost: every net lives for the whole run, so the peak holds them all; seconds are steps plus validations ---


def estimate_memory(steps: int, batch_size: int, archs: Sequence[str] = DEFAULT_ARCHS, *, train_size: int = 10_000,
                    val_size: int = 1000, image_size: int = 32, eval_batch: int = EVAL_BATCH,
                    device: str | torch.device = "cpu") -> int:
    """Estimated peak bytes `run_degradation` adds to the process on `device` (an upper bound, for refusing).

    Unlike a gradient sweep every net lives for the whole run: weights, gradients and SGD momentum of all of them,
    plus the normalized images, plus the hungrier of one training step (the largest net's saved activations) and
    one no-grad evaluation chunk. Rendering holds ~3 float copies of a set for a moment, on the CPU.
    """
    n_train = min(train_size, steps * batch_size)
    image = 3 * image_size * image_size * 4
    weights, step, evaluation = 0, 0, 0
    for arch in archs:
        name, variant = (arch, "residual") if REGISTRY[arch].residual else (twin_name(arch), "plain")
        params, saved, _, largest = step_memory(name, variant, batch_size, image_size)
        weights += 3 * params
        step = max(step, saved + BACKWARD_WORKSPACE * largest)
        _, _, _, largest_eval = step_memory(name, variant, max(2, min(eval_batch, val_size)), image_size)
        evaluation = max(evaluation, 3 * largest_eval)
    peak = (n_train + val_size) * image + weights + max(step, evaluation)
    kind = torch.device(device).type
    if kind == "cpu":
        peak = max(peak, 3 * max(n_train, val_size) * image)
    return math.ceil(ALLOCATOR_OVERHEAD[kind] * peak)


def estimate_seconds(steps: int, batch_size: int, archs: Sequence[str] = DEFAULT_ARCHS, *, val_size: int = 1000,
                     evals: int = 5, image_size: int = 32, eval_batch: int = EVAL_BATCH,
                     device: str | torch.device = "cpu") -> float:
    """Seconds of `run_degradation` on `device` now, from the one cost model: building every net once (its seeded
    init), `steps` training steps of every net on `batch_size` images, and a forward pass over the held-out images
    in chunks of `eval_batch` at each of `eval_steps`. Rendering the images is left out (a few percent of the run)."""
    checks = len(eval_steps(steps, evals))
    classes = len(CLASSES)
    return (sum(C.build_seconds(a, device, classes) for a in archs)
            + C.seconds([(a, steps * batch_size) for a in archs], "train_step", device, image_size, classes,
                        batch=batch_size)
            + C.seconds([(a, checks * val_size) for a in archs], "forward", device, image_size, classes,
                        batch=C.passes_batch(val_size, eval_batch)))


def estimate_cost(steps: int, batch_size: int, archs: Sequence[str] = DEFAULT_ARCHS, *, train_size: int = 10_000,
                  val_size: int = 1000, evals: int = 5, image_size: int = 32,
                  device: str | torch.device = "cpu") -> C.Cost:
    """What a run needs before it starts: seconds on `device` now and peak bytes (the app's button and refusal,
    and the CLI's check, read this one answer)."""
    return C.Cost(estimate_seconds(steps, batch_size, archs, val_size=val_size, evals=evals, image_size=image_size,
                                   device=device),
                  estimate_memory(steps, batch_size, archs, train_size=train_size, val_size=val_size,
                                  image_size=image_size, device=device))


