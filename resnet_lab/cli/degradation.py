"""`python -m resnet_lab degradation`: plain/residual twins trained side by side (`research.degradation`), their
curves as a CSV with its record, a PNG and the reading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from ..models.resnet import REGISTRY
from ..progress import tqdm_progress
from ..research.degradation import FLOAT_FORMAT, estimate_cost, estimate_memory
from ..research.degradation.compute import DEFAULT_ARCHS, run_degradation
from ..research.degradation.describe import describe_degradation, final_metrics
from ..research.degradation.plot import plot_curves
from ..research.study import Timer, fail, run_record, session, split_list, write_outputs
from ..runtime.memory import available_memory, largest_fitting, refusal
from .args import int_in, names, number, positive_int, seed, writable


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

