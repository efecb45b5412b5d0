"""Lesion studies (Veit et al. 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow Networks").

Delete blocks of a *trained* net at test time and measure what is left: one block at a time (their Fig. 3), and
k random blocks at once (their Fig. 5). The shipped results (`assets/lesion_shapes.csv`, `.png`) come from the
four twins, on the CPU:

    OMP_NUM_THREADS=1 python -m resnet_lab lesion --n 2000 --draws 5 --k-points 14 --workers 4 --device cpu \\
        --out assets --model plain20,resnet20,plain56,resnet56
    python -m resnet_lab lesion --from-csv assets/lesion_shapes.csv      # the reading of saved results again

A bare arch name means the shipped twin (assets/twins/). Every lesion is scored on the set the checkpoint never
saw (`training.heldout`: for Shapes its JSON's test seed, 999 as in train, and clutter, at the model's input size;
`--data-seed` picks another seed); twins trained on the same data share one rendering. Writes lesion_<name>.csv
(columns: `compute.COLUMNS`), .png and .json (the run record and the reading). The parts: `compute` (what a
deletion is, the study), `describe` (the text), `plot`; here the cost, the app's live settings and the CLI.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ...cli.args import int_in, positive_int, seed, writable
from ...data.heldout import held_out_set, set_key
from ...models.checkpoints import meta_path
from ...models.resnet import REGISTRY
from ...paths import ASSETS
from ...progress import Progress, tqdm_progress
from ...runtime import cost as C
from ...runtime.devices import model_device, synchronize
from ...runtime.memory import available_memory, inference_memory, refusal
from ..study import Timer, fail, resolve_model_path, run_record, session, split_list, write_outputs
from ..tables import read_checked_csv
from .compute import (
    BATCH_SIZE,
    COLUMNS,
    BlockInfo,
    arch_name,
    block_table,
    deletion_orders,
    k_values,
    lesion_accuracy,
    lesion_forward,
    lesion_sets,
    lesion_study,
    lesioned,
)
from .describe import describe_lesion, halfway_k, k_curve
from .plot import plot_lesion

if TYPE_CHECKING:
    from ...models.weights import LoadedWeights

__all__ = ["BATCH_SIZE", "COLUMNS", "QUICK", "SHIPPED_CSV", "SHIPPED_PNG", "BlockInfo", "block_table",
           "deletion_orders", "describe_lesion", "estimate_cost", "halfway_k", "k_curve", "k_values",
           "lesion_accuracy", "lesion_forward", "lesion_sets", "lesion_study", "lesioned", "plot_lesion",
           "quick_settings", "quick_study", "read_csv"]

SHIPPED_CSV = ASSETS / "lesion_shapes.csv"
SHIPPED_PNG = ASSETS / "lesion_shapes.png"
# The most the app's live run does; `quick_settings` cuts n (then draws, k points) to fit its budget here and now.
QUICK = {"n": 400, "draws": 3, "k_points": 8}
MAX_DRAWS = 1000  # deletion orders are listed (to count the lesions) before the memory check
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".th")


def read_csv(path: str | Path = SHIPPED_CSV) -> pd.DataFrame:
    """A lesion CSV (as `lesion_study` makes and the CLI writes), checked for its columns."""
    df = read_checked_csv(path, COLUMNS, "lesion", keep_default_na=False, na_values={"accuracy": ["", "nan", "NaN"]})
    for col in ("residual", "downsampling", "removable"):
        df[col] = df[col].astype(str).str.lower().eq("true")
    df["block"] = df["block"].astype(str)
    df["deleted"] = df["deleted"].astype(str)
    return df


# ----------------------------------------------------------------------------- cost, and the app's live run


@functools.lru_cache(maxsize=64)
def _lesion_count(arch: str, num_classes: int, draws: int, seed: int, k_points: int | None) -> int:
    return len(lesion_sets(C.build_meta(arch, num_classes), draws, seed, k_points))


def estimate_cost(archs: str | Sequence[str], n: int, draws: int = 5, k_points: int | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", size: int = 32, num_classes: int = 8,
                  batch_size: int = BATCH_SIZE) -> C.Cost:
    """Seconds and peak bytes of studying each net of `archs` on `n` images, one net after another.

    A study evaluates `len(lesion_sets(...))` lesioned nets on the n images in chunks of `batch_size`, each counted
    at the intact net's MACs and layer calls (an upper bound: a deleted block's branch costs nothing), at this
    device's measured rates (`cost`); the memory is the largest net's evaluation (`memory.inference_memory`:
    weights, the images, one batch's activations).
    """
    archs = [archs] if isinstance(archs, str) else list(archs)
    work = [(a, _lesion_count(a, num_classes, draws, seed, k_points) * n) for a in archs]
    peak = max(inference_memory([a], n, size, batch_size, weight_copies=0, num_classes=num_classes,
                                device=str(torch.device(device))) for a in archs)
    return C.Cost(C.seconds(work, "forward", device, size, num_classes, batch=C.passes_batch(n, batch_size)), peak)


def quick_settings(arch: str, budget_s: float = 25.0, device: str | torch.device = "cpu", size: int = 32,
                   num_classes: int = 8, seed: int = 0) -> dict[str, float]:
    """The app's live settings: QUICK's draws and k points with `n` cut (in steps of 50, down to 100) to fit
    `budget_s` on `device` now, then fewer draws and k points if even 100 images do not fit. Returns n, draws,
    k_points and estimate_s (the estimate of that run)."""
    sizes = sorted({*range(100, QUICK["n"], 50), QUICK["n"]}, reverse=True)
    for draws, k_points in ((QUICK["draws"], QUICK["k_points"]), (2, 5)):
        for n in sizes:  # the per-pass calls make seconds affine in n, not proportional: each n is estimated
            seconds = estimate_cost(arch, n, draws, k_points, seed, device, size, num_classes).seconds
            if seconds <= budget_s:
                return {"n": n, "draws": draws, "k_points": k_points, "estimate_s": seconds}
    return {"n": n, "draws": draws, "k_points": k_points, "estimate_s": seconds}


def quick_study(loaded: LoadedWeights, budget_s: float = 25.0, progress: Progress | None = None,
                seed: int = 0) -> pd.DataFrame:
    """The app's live run: `quick_settings` for this model on the device it is on, on its held-out set there.
    `loaded.model` must be this run's own instance (see `compute.lesioned`)."""
    model, device = loaded.model, model_device(loaded.model)
    settings = quick_settings(arch_name(model), budget_s, device=device,
                              size=int(loaded.pretrained_cfg["input_size"][-1]), num_classes=model.num_classes,
                              seed=seed)
    data = held_out_set(loaded, int(settings["n"]), device=device)
    return lesion_study(model, data, draws=int(settings["draws"]), seed=seed, k_points=int(settings["k_points"]),
                        progress=progress)


# ----------------------------------------------------------------------------- CLI


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


def _planned(spec: str) -> tuple[str, int, int] | None:
    """(arch, input size, classes) of a checkpoint from the JSON beside it, read before anything is loaded; None for
    a tag or a bare weights file (checked once loaded, in `_study_one`)."""
    path = Path(_spec(spec))
    try:
        meta = json.loads(meta_path(path).read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("arch") not in REGISTRY:
        return None
    size = (meta.get("input_size") or [3, 32, 32])[-1]
    return str(meta["arch"]), int(size), int(meta.get("num_classes") or len(meta.get("classes") or []) or 8)


def _memory_refusal(planned: list[tuple[str, int, int]], opts: dict[str, Any], workers: int) -> str | None:
    """None if the studies fit what the device can still allocate (`workers` of them at once), else the sentence
    refusing them."""
    if not planned:
        return None
    need = sorted((estimate_cost(a, opts["n"], opts["draws"], opts["k_points"], opts["seed"], opts["device"], size,
                                 classes, opts["batch_size"]).bytes for a, size, classes in planned), reverse=True)
    return refusal(sum(need[:max(1, workers)]), available_memory(opts["device"]),
                   "fewer --n images" + (", or fewer --workers" if workers > 1 else ""))


class _Failure(str):
    """A worker's message for the person (a str, so it crosses process boundaries as it is)."""


def _spec(spec: str) -> str:
    """What `weights.load_weights` gets: a bare arch name becomes its shipped twin's path; anything else stays."""
    path = resolve_model_path(spec)
    return str(path) if path.is_file() else spec


def _study_one(spec: str, opts: dict[str, Any], cache: dict | None = None,
               show_progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]] | _Failure:
    """Load `spec`, make (or reuse from `cache`) its held-out set and run its study: (frame, what it took)."""
    from ...data.datasets import DatasetError
    from ...models.weights import WeightsUnavailable, load_weights

    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    cache = {} if cache is None else cache
    try:
        loaded = load_weights(_spec(spec))
        block_table(loaded.model)
        if arch_name(loaded.model) in REGISTRY and _planned(spec) is None:  # a tag or bare weights: sized only now
            problem = _memory_refusal([(arch_name(loaded.model), int(loaded.pretrained_cfg["input_size"][-1]),
                                        loaded.model.num_classes)], opts, 1)
            if problem:
                return _Failure(f"{spec}: {problem}")
        key = set_key(loaded, opts["n"], "test", opts["data_seed"])
        if key not in cache:  # twins trained on the same data share one rendered set
            cache[key] = held_out_set(loaded, opts["n"], seed=opts["data_seed"], data_dir=opts["data_dir"],
                                      device=device)
        data = cache[key]
    except (WeightsUnavailable, DatasetError, ValueError, TypeError) as e:
        return _Failure(f"{spec}: {e}")
    model = loaded.model.to(device)
    name = arch_name(model)
    lesions = len(lesion_sets(model, opts["draws"], opts["seed"], opts["k_points"]))
    estimate = math.nan  # a net outside the registry has no MAC count to estimate from
    if name in REGISTRY:
        estimate = estimate_cost(name, data.n, opts["draws"], opts["k_points"], opts["seed"], device,
                                 int(data.x.shape[-1]), model.num_classes, opts["batch_size"]).seconds
    progress, close = tqdm_progress(lesions, f"lesion {name}") if show_progress else (None, lambda: None)
    timer = Timer()
    try:
        df = lesion_study(model, data, name=name, draws=opts["draws"], seed=opts["seed"], k_points=opts["k_points"],
                          batch_size=opts["batch_size"], progress=progress)
    finally:
        close()
    synchronize(device)
    return df, {"model": name, "lesions": lesions, "n": data.n, "seconds": round(timer.elapsed, 2),
                "estimate_s": round(estimate, 2), "held_out": data.description}


def _study_all(specs: list[str], opts: dict[str, Any], workers: int) -> list:
    if workers > 1 and len(specs) > 1:  # one process per model, one thread each: the CPU's cores side by side
        with ProcessPoolExecutor(min(workers, len(specs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(_study_one, specs, [{**opts, "threads": 1}] * len(specs), [None] * len(specs),
                               [False] * len(specs)))
    cache: dict = {}
    results = []
    for spec in specs:
        results.append(_study_one(spec, opts, cache))
        if isinstance(results[-1], _Failure):
            break
    return results


def run(args: argparse.Namespace) -> int:
    if args.from_csv:
        return _saved(args)
    specs = split_list(args.model)
    if not specs:
        return fail("lesion", "give --model (checkpoints to study) or --from-csv (saved results)")
    missing = [s for s in specs if Path(_spec(s)).suffix in CHECKPOINT_SUFFIXES and not Path(_spec(s)).is_file()]
    if missing:
        return fail("lesion", f"checkpoint not found: {', '.join(missing)}")
    try:
        with session(args.device) as dist:
            if dist.distributed:
                return fail("lesion", "runs in one process (--workers studies models side by side), not torchrun")
            opts = {k: getattr(args, k) for k in ("n", "draws", "seed", "k_points", "data_seed", "data_dir",
                                                  "batch_size")} | {"device": str(dist.device)}
            problem = _memory_refusal([p for p in map(_planned, specs) if p], opts, min(args.workers, len(specs)))
            if problem:
                return fail("lesion", problem)
            timer = Timer()
            results = _study_all(specs, opts, args.workers)
            failures = [r for r in results if isinstance(r, _Failure)]
            if failures:
                return fail("lesion", "; ".join(failures))
            frames, runs = [], []
            for spec, (df, took) in zip(specs, results):
                if any(f.model.iloc[0] == df.model.iloc[0] for f in frames):
                    df = df.assign(model=f"{df.model.iloc[0]} ({Path(_spec(spec)).stem})")
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
