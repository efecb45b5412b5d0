"""Curvature of trained nets from their full Hessian (Li et al. 2018, §6; Yao et al. 2020, PyHessian), against the
number of images it is taken on.

    python -m resnet_lab curvature --models plain20,resnet20,plain56,resnet56 --sizes 64,256,1024 --sets 3 \
        --out assets --stem curvature_shapes                       # the convergence ladder, verdicts at scale
    python -m resnet_lab curvature --models ... --sets 0 --map-grid 7 --map-span 1.0 --map-n 256 ...  # the map
    torchrun --nproc-per-node 4 -m resnet_lab curvature --models ... --sizes 64,256,1024,2048  # jobs split

Writes <stem>.csv (per net, size n and image set: loss, accuracy, the worst-fitted image's share of the loss,
lambda_max (top-k and leave-one-out on set 0), lambda_min, |lambda_min/lambda_max|, the Hutch++ trace),
<stem>_convergence.png (each quantity against n, spread over the sets), <stem>_density.csv and .png (eigenvalue
density of set 0 at one n), <stem>_map.csv and .png (the ratio map), <stem>.json (the command, times, settings and
the reading). A bare arch name means the shipped twin. `--from-csv STEM` reads those CSVs back and writes the
reading and figures again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...paths import ASSETS
from ...runtime import cost as C
from ...runtime.memory import ALLOCATOR_OVERHEAD, hvp_memory
from ..tables import read_checked_csv
from .compute import CACHE_SHARE, COLUMNS, DENSITY_COLUMNS, MAP_COLUMNS, Solvers, compute_curvature
from .describe import describe_curvature, spectrum_table
from .plot import plot_convergence, plot_density, plot_map

__all__ = ["CACHE_SHARE", "SHIPPED_STEM", "Solvers", "compute_curvature", "describe_curvature", "estimate_cost",
           "plot_convergence", "plot_density", "plot_map", "read_results", "spectrum_table"]

SHIPPED_STEM = ASSETS / "curvature_shapes"
EIGSH_MATVECS = 45  # products per ARPACK solve at k = 1 (ncv 20; measured 21-41 on the twins)
MIN_MATVECS = 45  # products of the shifted solve for lambda_min at tol 1e-2, k = 3 (measured 21-32 on the twins)


def estimate_cost(archs: Sequence[str], sizes: Sequence[int] = (64, 256, 1024), sets: int = 3, top_k: int = 5,
                  trace_matvecs: int = 48, density_n: int = 0, density_steps: int = 0, density_runs: int = 1,
                  map_points: int = 0, map_n: int = 64, chunk: int = 64, device: str | torch.device = "cpu",
                  size: int = 32, lambda_min: bool = True) -> C.Cost:
    """Seconds and peak bytes: Hessian-vector products counted per solve, each worth WORK["hvp"] forward passes of
    one image; the bytes are the hungriest net's products plus every net's images, which a run keeps until it ends
    (kept gradient graphs come out of what is left, `CACHE_SHARE`, so they are not added)."""
    per_set = EIGSH_MATVECS + (MIN_MATVECS if lambda_min else 0) + trace_matvecs
    top = EIGSH_MATVECS * max(1, (2 * top_k + 1) // 20 + 1)
    per_net = sum(n * (per_set * sets + top * (sets > 0)) for n in sizes)
    per_net += density_n * density_steps * density_runs + 2 * EIGSH_MATVECS * map_points * map_n
    images = [(a, per_net) for a in archs]
    kind = torch.device(device).type
    held = len(archs) * max([n * sets for n in sizes] + [density_n, map_n if map_points else 0]) * 3 * size * size * 9
    return C.Cost(C.seconds(images, "hvp", device, size),
                  max(hvp_memory(a, chunk, size, device=str(torch.device(device))) for a in archs)
                  + math.ceil(ALLOCATOR_OVERHEAD[kind] * held))


def _checked(df: pd.DataFrame, numeric: Sequence[str], path: str, finite: bool) -> pd.DataFrame:
    """`df` with its `numeric` columns as numbers, refused in one line naming the file, the column and the first
    bad row when one holds text (a hand-edited or truncated file), or NaN/infinity where `finite`: the reading would
    otherwise fail with a traceback or print "nan" as if it were a measurement."""
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna() if not finite else ~np.isfinite(values.astype(float))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{Path(path).name}: column {col!r} holds {str(df[col].iloc[row])!r} on data row "
                             f"{row + 1}, not a finite number")
        df[col] = values
    return df


def read_results(stem: str | Path = SHIPPED_STEM) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(spectrum, density, map) saved under `stem`; an absent density or map file reads as an empty frame, a stem
    with none of the three files (a typo) or no rows is refused, and so are non-numbers in the numeric columns."""
    stem = Path(stem)
    files = {part: f"{stem}{part}.csv" for part in ("", "_density", "_map")}
    if not any(Path(f).is_file() for f in files.values()):
        raise ValueError(f"no {stem}.csv, {stem}_density.csv or {stem}_map.csv")
    spec = _checked(read_checked_csv(files[""], COLUMNS, "curvature"), ["n", "index", "value"], files[""], True) \
        if Path(files[""]).is_file() else pd.DataFrame(columns=COLUMNS)
    dens = _checked(read_checked_csv(files["_density"], DENSITY_COLUMNS, "curvature density"),
                    ["n", "eigenvalue", "density"], files["_density"], True) \
        if Path(files["_density"]).is_file() else pd.DataFrame(columns=DENSITY_COLUMNS)
    maps = _checked(read_checked_csv(files["_map"], MAP_COLUMNS, "curvature map"), MAP_COLUMNS[1:], files["_map"],
                    False) if Path(files["_map"]).is_file() else pd.DataFrame(columns=MAP_COLUMNS)
    if not (len(spec) or len(dens) or len(maps)):
        raise ValueError(f"{stem}'s CSVs hold a header and no rows")
    return spec, dens, maps
