"""Loss landscapes of trained nets along filter-normalized random directions (Li et al. 2018, §4), with controls.

    python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --dims 2 --grid 21 --span 1.0 \\
        --n 256 --seeds 5 --out assets --stem landscape_shapes                 # 2-D grids, five direction seeds
    python -m resnet_lab landscape --models ... --radii 0.05,0.1,0.2,0.5 --seeds 10 \\
        --controls none,temperature,bn,bn+temperature --out assets --stem landscape_shapes_sharpness
    torchrun --nproc-per-node 4 -m resnet_lab landscape --models ... --images 256 ...   # each rank its points

A bare arch name means the shipped twin (assets/twins/). `--images` is `--n`'s other name (torchrun's parser
refuses `--n` as an ambiguous abbreviation of its own options). `--from-csv` re-reads saved results and writes
the reading, JSON and figures again without computing anything. Tidy CSV columns: `compute.COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ...paths import ASSETS
from ...runtime import cost as C
from ...runtime.memory import inference_memory
from ..tables import read_checked_csv
from . import readings
from .compute import COLUMNS, CONTROLS, EVAL_BATCH, RADII, combine, compute_landscape, read_landscape
from .describe import describe_landscape
from .directions import random_direction
from .plot import plot_1d, plot_2d, plot_sharpness

__all__ = ["COLUMNS", "CONTROLS", "RADII", "SHIPPED_CSV", "SHIPPED_SHARPNESS_CSV", "combine", "compute_landscape",
           "describe_landscape", "estimate_cost", "plot_1d", "plot_2d", "plot_sharpness", "quick_settings",
           "random_direction", "read_csv", "readings", "summary_tables"]

SHIPPED_CSV = ASSETS / "landscape_shapes.csv"
SHIPPED_SHARPNESS_CSV = ASSETS / "landscape_shapes_sharpness.csv"
QUICK = {"grid": 15, "n": 256, "dims": 1, "span": 1.0}  # the app's live 1-D slice, cut by `quick_settings`


def read_csv(path: str = str(SHIPPED_CSV)) -> pd.DataFrame:
    """A landscape CSV, checked for its columns (older files without seeds or controls read as seed 0, none)."""
    return read_landscape(read_checked_csv(path, ["model", "alpha", "beta", "loss", "accuracy"], "landscape"))


def estimate_cost(archs: Sequence[str], points: int, n: int, seeds: int = 1, controls: Sequence[str] = ("none",),
                  bn_images: int = 0, device: str | torch.device = "cpu", size: int = 32) -> C.Cost:
    """Seconds and peak bytes of a run: per net, points x seeds forward passes over `n` images, plus `bn_images`
    more per point when BN is re-estimated (one cost model: `cost`, `memory`)."""
    per_point = n + (bn_images if any(c.startswith("bn") for c in controls) else 0)
    seconds = C.seconds([(a, points * seeds * per_point) for a in archs], "forward", device, size)
    return C.Cost(seconds, inference_memory(list(archs), n + bn_images, size, EVAL_BATCH, 3,
                                            device=str(torch.device(device))))


def quick_settings(archs: Sequence[str], seconds: float = 25.0, device: str | torch.device = "cpu") -> dict:
    """QUICK, with fewer held-out images (not under 64), then a coarser line (not under MIN_GRID), until the
    estimate for `archs` on `device` fits `seconds`; "seconds" is that estimate."""
    grid, n = QUICK["grid"], QUICK["n"]
    while estimate_cost(archs, grid, n, device=device).seconds > seconds and (n > 64 or grid > 7):
        if n > 64:
            n = max(64, int(n * 0.8))
        else:
            grid -= 2
    return {**QUICK, "grid": grid, "n": n, "seconds": round(estimate_cost(archs, grid, n, device=device).seconds, 1)}


def summary_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables the reading rests on (what the JSON and the app show): rises, pairs, the 2-D surface."""
    r = readings.rises(df)
    out = {"sharpness": readings.sharpness_table(r), "pairs": readings.pair_sharpness(r)}
    surf = readings.surface_readings(df)
    if len(surf):
        out |= {"surface": readings.surface_table(surf), "convexity_pairs": readings.pair_convexity(surf)}
    return out
