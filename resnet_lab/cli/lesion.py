"""`python -m resnet_lab lesion`: residual blocks of trained nets deleted one and many at a time (`research.lesion`),
the reading, and with --out a CSV, a PNG and the record; or a re-reading of saved CSVs (--from-csv)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..research.lesion import (
    CHECKPOINT_SUFFIXES,
    MAX_DRAWS,
    Failure,
    memory_refusal,
    model_spec,
    planned_study,
    read_csv,
    study_all,
)
from ..research.lesion.compute import BATCH_SIZE
from ..research.lesion.describe import describe_lesion
from ..research.lesion.plot import plot_lesion
from ..research.study import Timer, fail, run_record, session, split_list, write_outputs
from .args import int_in, positive_int, seed, writable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoints (.safetensors with their JSON), tags, or arch names of "
                                                 "shipped twins; several, comma-separated, share the images")
    p.add_argument("--from-csv", default=None,
                   help="instead of --model: describe and plot saved lesion CSVs (comma-separated, concatenated)")
    p.add_argument("--n", type=positive_int, default=2000, help="held-out images")
    p.add_argument("--draws", type=int_in(1, MAX_DRAWS), default=5, help="random deletion orders per model")
    p.add_argument("--k-points", type=int_in(2), default=None,
                   help="evaluate about this many values of k (default: all)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random deletion orders")
    p.add_argument("--data-seed", type=seed, default=None,
                   help="Shapes: test-set seed (default: the checkpoint's test seed)")
    p.add_argument("--data-dir", default=None, help="CIFAR checkpoints: the folder holding the CIFAR test files")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--out", type=writable("folder"), default=None, help="write lesion_<name>.csv, .png and .json here")
    p.add_argument("--name", default="shapes", help="file name part: lesion_<name>.csv")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--workers", type=int_in(1, 64), default=1,
                   help="models studied side by side in this many processes, one thread each (CPU)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What no single option's type can see: run right after parsing, before anything is loaded."""
    if not args.from_csv and not split_list(args.model):
        return "give --model (checkpoints to study) or --from-csv (saved results)"
    return None


def run(args: argparse.Namespace) -> int:
    if args.from_csv:
        return _saved(args)
    specs = split_list(args.model)
    if not specs:
        return fail("lesion", "give --model (checkpoints to study) or --from-csv (saved results)")
    paths = {s: Path(model_spec(s)) for s in specs}
    missing = [s for s in specs if paths[s].suffix in CHECKPOINT_SUFFIXES and not paths[s].is_file()]
    if missing:
        return fail("lesion", f"checkpoint not found: {', '.join(missing)}")
    try:
        with session(args.device) as dist:
            if dist.distributed:
                return fail("lesion", "runs in one process (--workers studies models side by side), not torchrun")
            opts = {k: getattr(args, k) for k in ("n", "draws", "seed", "k_points", "data_seed", "data_dir",
                                                  "batch_size")} | {"device": str(dist.device)}
            problem = memory_refusal([p for p in map(planned_study, specs) if p], opts, min(args.workers, len(specs)))
            if problem:
                return fail("lesion", problem)
            timer = Timer()
            results = study_all(specs, opts, args.workers)
            failures = [r for r in results if isinstance(r, Failure)]
            if failures:
                return fail("lesion", "; ".join(failures))
            frames, runs = [], []
            for spec, (df, took) in zip(specs, results):
                if any(f.model.iloc[0] == df.model.iloc[0] for f in frames):
                    df = df.assign(model=f"{df.model.iloc[0]} ({Path(model_spec(spec)).stem})")
                frames.append(df)
                runs.append(took)
                print(f"{took['model']}: {took['lesions']} lesioned evaluations of {took['n']} images in "
                      f"{took['seconds']:.1f} s (estimated {took['estimate_s']:.1f} s)", file=sys.stderr)
            print(f"all {len(specs)} models in {timer.elapsed:.1f} s on {dist.device}", file=sys.stderr)
            record = run_record(args, timer.elapsed, dist, models=specs, runs=runs, workers=args.workers,
                                **{k: v for k, v in opts.items() if k != "device"})
            return report(pd.concat(frames, ignore_index=True), args, record)
    except ValueError as e:
        return fail("lesion", str(e))


def report(df: pd.DataFrame, args: argparse.Namespace, record: dict[str, Any]) -> int:
    """Print the reading; with --out write lesion_<name>.csv, .png and .json (the record and the reading)."""
    text = describe_lesion(df)
    print(text)
    if args.out:
        for path in write_outputs(args.out, f"lesion_{args.name}", {"": df}, {"": plot_lesion(df)},
                                  {**record, "reading": text}, float_format="%.6g"):
            print(f"wrote {path}")
    return 0


def _saved(args: argparse.Namespace) -> int:
    """--from-csv: the reading (and with --out the files) of saved lesion CSVs again, nothing computed."""
    record = {"command": getattr(args, "command_line", None), "from_csv": args.from_csv}
    try:
        frames = [read_csv(p) for p in split_list(args.from_csv)]
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return fail("lesion", f"--from-csv: {e}")
    return report(pd.concat(frames, ignore_index=True), args, record)

