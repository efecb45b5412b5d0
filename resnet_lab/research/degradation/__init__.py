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

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ...cli.args import int_in, names, number, positive_int, seed, writable
from ...data.shapes import CLASSES
from ...models.resnet import REGISTRY, twin_name
from ...paths import ASSETS
from ...progress import tqdm_progress
from ...runtime import cost as C
from ...runtime.memory import (
    ALLOCATOR_OVERHEAD,
    BACKWARD_WORKSPACE,
    available_memory,
    largest_fitting,
    refusal,
    step_memory,
)
from ..study import Timer, fail, run_record, session, split_list, write_outputs
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


# --- CLI ---

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--batch-size", type=int_in(2), default=32, help="at least 2 (train-mode BatchNorm)")
    p.add_argument("--archs", type=names(REGISTRY, "archs"), default=",".join(DEFAULT_ARCHS),
                   help="comma-separated archs, trained in lockstep")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--lr", type=number(0, lo_open=True), default=0.02, help="peak learning rate (warmup, then cosine)")
    p.add_argument("--train-size", type=positive_int, default=10_000, help="Shapes training images (cycled in epochs)")
    p.add_argument("--val-size", type=positive_int, default=1000)
    p.add_argument("--evals", type=positive_int, default=5, help="validation points after step 0")
    p.add_argument("--clutter", action="store_true", help="Shapes with clutter (harder: needs a longer budget)")
    p.add_argument("--out", type=writable("file"),
                   help="write the curves as CSV (and the run's record as JSON beside it)")
    p.add_argument("--plot", type=writable("file", makes_folders=False), help="write the curves as PNG")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")


def _memory_refusal(args: argparse.Namespace, archs: list[str], need: int, device: torch.device) -> str | None:
    """None if the run fits what `device` can still allocate, else what it needs and the batch that fits."""
    budget = available_memory(str(device))
    if need <= budget:
        return None
    fits = largest_fitting(lambda b: estimate_memory(args.steps, b, archs, train_size=args.train_size,
                                                     val_size=args.val_size, device=device),
                           2, args.batch_size - 1, budget)
    return refusal(need, budget, f"--batch-size {fits} fits" if fits else
                   "fewer or shallower --archs, or a smaller --train-size")


def run(args: argparse.Namespace) -> int:
    archs = split_list(args.archs)
    try:
        with session(args.device) as dist:
            cost = estimate_cost(args.steps, args.batch_size, archs, train_size=args.train_size,
                                 val_size=args.val_size, evals=args.evals, device=dist.device)
            problem = _memory_refusal(args, archs, cost.bytes, dist.device)
            if problem:
                return fail("degradation", problem)
            if not dist.is_main:  # one process trains every net; other torchrun ranks have nothing to do
                return 0
            progress, close = tqdm_progress(args.steps, f"degradation, about {cost.seconds:.0f} s")
            timer = Timer()
            try:
                df = run_degradation(args.steps, args.batch_size, archs, args.seed, progress, lr=args.lr,
                                     train_size=args.train_size, val_size=args.val_size, evals=args.evals,
                                     clutter=args.clutter, device=dist.device)
            finally:
                close()
            record = run_record(args, timer.elapsed, dist, estimated_seconds=round(cost.seconds, 2),
                                estimated_bytes=cost.bytes)
            return _report(df, args, record)
    except ValueError as e:
        return fail("degradation", str(e))


def _report(df: pd.DataFrame, args: argparse.Namespace, record: dict) -> int:
    """Print the final metrics and the reading; write the CSV (+ JSON record) and the PNG asked for."""
    print(final_metrics(df).round(4).to_string(index=False))
    text = describe_degradation(df, f"This run, {args.steps} steps")
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        for path in write_outputs(out.parent, out.stem, {"": df}, {}, {**record, "reading": text}, FLOAT_FORMAT):
            print(f"wrote {path}")
    if args.plot:
        plot_curves(df).savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0
