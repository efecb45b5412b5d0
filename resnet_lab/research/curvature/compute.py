"""Curvature of trained nets from the full Hessian: the spectrum at the minimum, and Li et al.'s map on a plane.

At the trained weights w0 (`spectrum`): the top-k eigenvalues, lambda_min and |lambda_min / lambda_max| (Li et
al. 2018, §6), the trace (Hutchinson) and the eigenvalue density (stochastic Lanczos quadrature), as PyHessian
(Yao et al. 2020) reports them; lambda_max and the trace are repeated on `resamples` disjoint image sets, so a
difference between twins can be weighed against the spread from the images the Hessian is taken on.

On the plane of the landscape's directions (`ratio_map`): lambda_max, lambda_min and |lambda_min / lambda_max| of
the full Hessian at each point of a coarse grid, as in Li et al.'s §6, with the eigensolver tolerance they used
(1e-2). The directions are the landscape's (`landscape.directions`, same seeds), so the map lies on the plane its
contours are drawn on.

Work is split into jobs (one spectrum per net and image set, one map point per net and point); under torchrun
each rank takes a strided share and every rank returns the gathered frames.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ...progress import Progress
from ...runtime.scoring import chunks, score
from ..landscape.directions import grid_points, moving, random_direction
from ..study import model_labels
from .hessian import Hessian, curvature_ratio, extreme_eigenvalues, hutchinson_trace, spectral_density, top_eigenvalues

if TYPE_CHECKING:
    from ...data.heldout import HeldOut
    from ...models.weights import LoadedWeights
    from ...runtime.distributed import Dist

COLUMNS = ["model", "images", "quantity", "index", "value"]
DENSITY_COLUMNS = ["model", "eigenvalue", "density"]
MAP_COLUMNS = ["model", "seed", "alpha", "beta", "loss", "accuracy", "lambda_max", "lambda_min", "ratio", "matvecs",
               "seconds"]


def spectrum_rows(label: str, net: torch.nn.Module, data: HeldOut, image_set: int, *, top_k: int, tol: float,
                  min_tol: float, trace_samples: int, density_steps: int, density_runs: int, seed: int,
                  chunk: int, full: bool) -> tuple[list[tuple], list[tuple]]:
    """(spectrum rows, density rows) of one net on one image set; `full` adds lambda_min, the ratio, the top-k and
    the density (set 0), otherwise only lambda_max and the trace (the resamples)."""
    t0 = time.perf_counter()
    s = score(net, chunks(data.x, data.y, chunk))
    h = Hessian(net, data.x, data.y, chunk)
    tag = f"set{image_set}"
    rows = [(label, tag, "loss", 0, s.loss), (label, tag, "accuracy", 0, s.accuracy)]
    top = top_eigenvalues(h, top_k if full else 1, tol, seed)
    rows += [(label, tag, "eigenvalue", i + 1, float(v)) for i, v in enumerate(top)]
    density = []
    if full:
        lmax, lmin = extreme_eigenvalues(h, min_tol, seed, lambda_max=float(top[0]))
        rows += [(label, tag, "lambda_min", 0, lmin), (label, tag, "ratio", 0, curvature_ratio(lmax, lmin))]
    trace = hutchinson_trace(h, trace_samples, seed)
    rows += [(label, tag, "trace", 0, float(trace.mean())),
             (label, tag, "trace_se", 0, float(trace.std(ddof=1) / len(trace) ** 0.5) if len(trace) > 1 else 0.0)]
    if full and density_steps > 1:
        grid, dens, _ = spectral_density(h, density_steps, density_runs, seed, bounds=(lmin, float(top[0])))
        density = [(label, float(g), float(d)) for g, d in zip(grid, dens)]
    rows += [(label, tag, "matvecs", 0, float(h.matvecs)), (label, tag, "seconds", 0, time.perf_counter() - t0)]
    return rows, density


def map_row(label: str, net: torch.nn.Module, data: HeldOut, seed: int, alpha: float, beta: float, *,
            tol: float, chunk: int) -> tuple:
    """One point of the ratio map: the net's weights already moved there by the caller."""
    t0 = time.perf_counter()
    s = score(net, chunks(data.x, data.y, chunk))
    h = Hessian(net, data.x, data.y, chunk)
    lmax, lmin = extreme_eigenvalues(h, tol, seed)
    return (label, seed, alpha, beta, s.loss, s.accuracy, lmax, lmin, curvature_ratio(lmax, lmin), h.matvecs,
            time.perf_counter() - t0)


def compute_curvature(models: Sequence[LoadedWeights], *, n: int = 256, split: str = "train", resamples: int = 3,
                      top_k: int = 5, tol: float = 1e-3, min_tol: float = 1e-2, trace_samples: int = 50,
                      density_steps: int = 80, density_runs: int = 1, seed: int = 0, map_grid: int = 0,
                      map_span: float = 1.0, map_n: int | None = None, map_tol: float = 1e-2, direction_seed: int = 0,
                      map_points: Sequence[tuple[float, float]] | None = None, chunk: int = 64,
                      device: str | torch.device = "cpu", progress: Progress | None = None,
                      dist: Dist | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(spectrum, density, map) frames for `models` (see the module docstring); `map_grid` 0 skips the map,
    `map_points` replaces the grid by these (alpha, beta) points.

    Every net is studied on a private copy on `device`; image set k is images k*n .. (k+1)*n - 1 of `split`
    (set 0 carries the full spectrum). The map uses the first `map_n` (default n) images of set 0.
    """
    from ...data.heldout import held_out_set
    from ...runtime.distributed import gather_objects, shard_indices

    if not models:
        raise ValueError("no models given")
    if min(n, top_k, trace_samples) < 1 or resamples < 0:
        raise ValueError("n, top_k and trace_samples must each be at least 1, resamples at least 0")
    if not resamples and not map_grid and not map_points:
        raise ValueError("nothing to compute: no image set for a spectrum (resamples 0) and no map")
    map_n = n if map_n is None else map_n
    if map_points is not None:
        points = list(map_points)
    else:
        points = grid_points(map_grid, map_span, 2) if map_grid else []
    labels = model_labels(models)
    jobs = [("spectrum", m, k) for m in range(len(models)) for k in range(resamples)]
    jobs += [("map", m, k) for m in range(len(models)) for k in range(len(points))]
    mine = jobs if dist is None else [jobs[i] for i in shard_indices(len(jobs), dist)]
    spec, dens, maps = [], [], []
    sets: dict[int, HeldOut] = {}  # each net's images, made once: set k is images k*n .. (k+1)*n - 1
    for done, (kind, m, k) in enumerate(mine, 1):
        w = models[m]
        net = copy.deepcopy(w.model).to(device).eval()
        if m not in sets:
            sets[m] = held_out_set(w, max(n * resamples, map_n if points else 0), split=split, device=device)
        full = sets[m]
        if kind == "spectrum":
            part = type(full)(full.x[k * n:(k + 1) * n], full.y[k * n:(k + 1) * n], full.description)
            rows, density = spectrum_rows(labels[m], net, part, k, top_k=top_k, tol=tol, min_tol=min_tol,
                                          trace_samples=trace_samples, density_steps=density_steps,
                                          density_runs=density_runs, seed=seed, chunk=chunk, full=k == 0)
            spec += rows
            dens += density
        else:
            part = type(full)(full.x[:map_n], full.y[:map_n], full.description)
            a, b = points[k]
            with moving(net, random_direction(net, direction_seed, 0), random_direction(net, direction_seed, 1)) as mv:
                mv.move(a, b)
                maps.append(map_row(labels[m], net, part, direction_seed, a, b, tol=map_tol, chunk=chunk))
        if progress is not None:
            progress(done / len(mine), f"{labels[m]}: {kind} {k + 1}")
    if dist is not None and dist.world_size > 1:
        parts = gather_objects((spec, dens, maps), dist)
        spec, dens, maps = ([r for p in parts for r in p[i]] for i in range(3))
    order = {label: i for i, label in enumerate(labels)}
    spec.sort(key=lambda r: (order[r[0]], r[1]))
    dens.sort(key=lambda r: (order[r[0]], r[1]))
    maps.sort(key=lambda r: (order[r[0]], r[2], r[3]))
    return (pd.DataFrame(spec, columns=COLUMNS), pd.DataFrame(dens, columns=DENSITY_COLUMNS),
            pd.DataFrame(maps, columns=MAP_COLUMNS))
