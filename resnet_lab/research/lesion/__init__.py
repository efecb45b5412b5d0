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

import functools
import json
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ...data.datasets import DatasetError
from ...data.heldout import held_out_set, set_key
from ...models.checkpoints import meta_path
from ...models.resnet import REGISTRY
from ...models.weights import WeightsUnavailable, load_weights
from ...paths import ASSETS
from ...progress import Progress, tqdm_progress
from ...runtime import cost as C
from ...runtime.devices import model_device, synchronize
from ...runtime.memory import available_memory, inference_memory, refusal
from ..study import Timer, resolve_model_path
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




def planned_study(spec: str) -> tuple[str, int, int] | None:
    """(arch, input size, classes) of a checkpoint from the JSON beside it, read before anything is loaded; None for
    a tag or a bare weights file (checked once loaded, in `_study_one`)."""
    path = Path(model_spec(spec))
    try:
        meta = json.loads(meta_path(path).read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("arch") not in REGISTRY:
        return None
    size = (meta.get("input_size") or [3, 32, 32])[-1]
    return str(meta["arch"]), int(size), int(meta.get("num_classes") or len(meta.get("classes") or []) or 8)


def memory_refusal(planned: list[tuple[str, int, int]], opts: dict[str, Any], workers: int) -> str | None:
    """None if the studies fit what the device can still allocate (`workers` of them at once), else the sentence
    refusing them."""
    if not planned:
        return None
    need = sorted((estimate_cost(a, opts["n"], opts["draws"], opts["k_points"], opts["seed"], opts["device"], size,
                                 classes, opts["batch_size"]).bytes for a, size, classes in planned), reverse=True)
    return refusal(sum(need[:max(1, workers)]), available_memory(opts["device"]),
                   "fewer --n images" + (", or fewer --workers" if workers > 1 else ""))


class Failure(str):
    """A worker's message for the person (a str, so it crosses process boundaries as it is)."""


def model_spec(spec: str) -> str:
    """What `weights.load_weights` gets: a bare arch name becomes its shipped twin's path; anything else stays."""
    path = resolve_model_path(spec)
    return str(path) if path.is_file() else spec


def _study_one(spec: str, opts: dict[str, Any], cache: dict | None = None,
               show_progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]] | Failure:
    """Load `spec`, make (or reuse from `cache`) its held-out set and run its study: (frame, what it took)."""
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    cache = {} if cache is None else cache
    try:
        loaded = load_weights(model_spec(spec))
        block_table(loaded.model)
        if arch_name(loaded.model) in REGISTRY and planned_study(spec) is None:  # a tag or bare weights: sized only now
            problem = memory_refusal([(arch_name(loaded.model), int(loaded.pretrained_cfg["input_size"][-1]),
                                        loaded.model.num_classes)], opts, 1)
            if problem:
                return Failure(f"{spec}: {problem}")
        key = set_key(loaded, opts["n"], "test", opts["data_seed"])
        if key not in cache:  # twins trained on the same data share one rendered set
            cache[key] = held_out_set(loaded, opts["n"], seed=opts["data_seed"], data_dir=opts["data_dir"],
                                      device=device)
        data = cache[key]
    except (WeightsUnavailable, DatasetError, ValueError, TypeError) as e:
        return Failure(f"{spec}: {e}")
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


def study_all(specs: list[str], opts: dict[str, Any], workers: int) -> list:
    if workers > 1 and len(specs) > 1:  # one process per model, one thread each: the CPU's cores side by side
        with ProcessPoolExecutor(min(workers, len(specs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(_study_one, specs, [{**opts, "threads": 1}] * len(specs), [None] * len(specs),
                               [False] * len(specs)))
    cache: dict = {}
    results = []
    for spec in specs:
        results.append(_study_one(spec, opts, cache))
        if isinstance(results[-1], Failure):
            break
    return results
