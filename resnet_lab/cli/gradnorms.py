"""`python -m resnet_lab gradnorms`: gradient norms across depth, plain vs residual (`research.gradflow`), as a table,
a CSV with its record, a PNG and the reading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..models.resnet import REGISTRY
from ..progress import tqdm_progress
from ..research.gradflow import FLOAT_FORMAT, estimate_cost, memory_refusal
from ..research.gradflow.compute import BN_MODES, IMAGENET_ARCHS, GradFlowConfig, jobs, run_sweep
from ..research.gradflow.describe import describe_gradnorms, summarize
from ..research.gradflow.plot import plot_all
from ..research.study import Timer, fail, run_record, session, split_list, write_outputs
from ..runtime.memory import available_memory
from .args import int_in, names, positive_int, writable


def _archs(text: str) -> tuple[str, ...]:
    """--archs' type: ResNets only (each is measured with its plain twin), at least one."""
    return tuple(split_list(names([a for a in REGISTRY if REGISTRY[a].residual], "ResNets")(text)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", type=_archs, default=IMAGENET_ARCHS,
                   help="comma-separated ResNets; each is measured with its plain twin (default: the ImageNet five)")
    p.add_argument("--bn", choices=BN_MODES, default="train", help="BatchNorm mode (none: no BN layers at all)")
    p.add_argument("--zero-init", action="store_true", help="zero each block's last BN gamma")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per batch (at least 2 with --bn train)")
    p.add_argument("--input-size", type=int_in(8, 1024), default=None,
                   help="image side; default 64 px for ImageNet-style nets, 32 px for CIFAR-style")
    p.add_argument("--seeds", type=int_in(1, 1000), default=1, help="seeds 0..N-1; plots show the spread")
    p.add_argument("--num-classes", type=int_in(2, 100_000), default=10)
    p.add_argument("--data", choices=["noise", "shapes"], default="noise")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present; the init is "
                                                  "drawn on the CPU either way)")
    p.add_argument("--out", type=writable("file"),
                   help="write the tidy per-layer results as CSV (and the run's record as JSON beside it)")
    p.add_argument("--plot", type=writable("file", makes_folders=False), help="write the plots as one PNG")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What no single option's type can see: run right after parsing, before anything is built."""
    if args.bn == "train" and args.batch_size < 2:
        return "--batch-size must be at least 2 with --bn train (BatchNorm needs two images for a batch variance)"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        with session(args.device) as dist:
            cfg = GradFlowConfig(archs=tuple(args.archs), bn_mode=args.bn, zero_init=args.zero_init,
                                 batch_size=args.batch_size, input_size=args.input_size, seeds=args.seeds,
                                 num_classes=args.num_classes, data=args.data, device=str(dist.device))
            problem = memory_refusal(cfg, available_memory(cfg.device))
            if problem:
                return fail("gradnorms", problem)
            if not dist.is_main:  # one process measures everything; other torchrun ranks have nothing to do
                return 0
            estimate = estimate_cost(cfg)
            progress, close = tqdm_progress(len(jobs(cfg)), f"gradnorms, about {estimate.seconds:.0f} s")
            timer = Timer()
            try:
                df = run_sweep(cfg, progress)
            finally:
                close()
            return _report(df, cfg, args, run_record(args, timer.elapsed, dist, estimated_seconds=round(
                estimate.seconds, 2), estimated_bytes=estimate.bytes))
    except ValueError as e:
        return fail("gradnorms", str(e))


def _report(df: pd.DataFrame, cfg: GradFlowConfig, args: argparse.Namespace, record: dict) -> int:
    """Print the summary table, write the CSV (+ JSON record) and the PNG asked for, and end with the reading."""
    summary = summarize(df)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.round(3).to_string(index=False))
    text = describe_gradnorms(cfg, summary)
    written: list[Path | str] = []
    if args.out:
        out = Path(args.out)
        written += write_outputs(out.parent, out.stem, {"": df}, {}, {**record, "reading": text}, FLOAT_FORMAT)
    if args.plot:
        plot_all(df).savefig(args.plot, dpi=100)
        written.append(args.plot)
    for path in written:
        print(f"wrote {path}")
    print("\n" + text)
    return 0

