"""Curvature of trained nets from the full Hessian: the spectrum at the minimum against the number of images it
is taken on, and Li et al.'s map on a plane.

At the trained weights w0 (`spectrum_rows`): lambda_max (and the top-k on set 0), lambda_min and
|lambda_min / lambda_max| (Li et al. 2018, §6), the trace (Hutch++) and the eigenvalue density (stochastic Lanczos
quadrature), as PyHessian (Yao et al. 2020) reports them. Each is taken on `sets` disjoint image sets at each size
n of a ladder (64, 256, 1024 by default: two doublings a step), so a reading can be held against the spread
between image sets at that n and against how far it still moves with n. A 64-image Hessian is dominated by the few
images a net has not yet fitted (one image can carry 85 % of a set's loss and most of its lambda_max), so each set
also records the share of its loss its worst-fitted image carries, and set 0 lambda_max without that image.

On the plane of the landscape's directions (`map_row`): lambda_max, lambda_min and |lambda_min / lambda_max| of
the full Hessian at each point of a coarse grid, as in Li et al.'s §6, with the eigensolver tolerance they used
(1e-2). The directions are the landscape's (`landscape.directions`, same seeds), so the map lies on the plane its
contours are drawn on.

Work is split into jobs (one spectrum per net, size and image set; one density per net; one map point per net and
point); under torchrun each rank takes a strided share and every rank returns the gathered frames.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F

from ...data.heldout import held_out_set
from ...progress import Progress
from ...runtime.distributed import gather_objects, shard_indices
from ...runtime.scoring import chunks, score
from ..landscape.directions import grid_points, moving, random_direction
from ..study import model_labels
from .hessian import Hessian, curvature_ratio, extreme_eigenvalues, hutchpp_trace, spectral_density, top_eigenvalues
from .scale import default_density_n

if TYPE_CHECKING:
    from ...data.heldout import HeldOut
    from ...models.weights import LoadedWeights
    from ...runtime.distributed import Dist

COLUMNS = ["model", "n", "images", "quantity", "index", "value"]
DENSITY_COLUMNS = ["model", "n", "eigenvalue", "density"]
MAP_COLUMNS = ["model", "n", "seed", "alpha", "beta", "loss", "accuracy", "lambda_max", "lambda_min", "ratio",
               "matvecs", "seconds"]
CACHE_SHARE = 0.25  # of the memory free at the start, for kept gradient graphs (`hessian.Hessian.cache_bytes`)


@dataclass(frozen=True)
class Solvers:
    """How each quantity is computed: tolerances, products and seeds, shared by every image set."""

    top_k: int = 5
    tol: float = 1e-3
    min_tol: float = 1e-2
    trace_matvecs: int = 48
    lambda_min: bool = True  # the shifted solve (about as many products as lambda_max's)
    trace: bool = True
    seed: int = 0
    chunk: int = 64
    cache_bytes: int = 0


def _subset(data: HeldOut, idx: torch.Tensor | slice) -> HeldOut:
    return type(data)(data.x[idx], data.y[idx], data.description)


def _losses(net: torch.nn.Module, data: HeldOut, chunk: int) -> torch.Tensor:
    """Each image's cross-entropy at the current weights."""
    with torch.no_grad():
        return torch.cat([F.cross_entropy(net(x), y, reduction="none") for x, y in chunks(data.x, data.y, chunk)])


def spectrum_rows(label: str, net: torch.nn.Module, data: HeldOut, image_set: int, s: Solvers, *,
                  full: bool) -> list[tuple]:
    """One net on one image set of n images: loss, accuracy, the share of the loss its worst-fitted image carries,
    lambda_max, lambda_min and their ratio, the trace (Hutch++); `full` (set 0) adds the top-k and lambda_max
    without the worst-fitted image (how far one image moves it)."""
    t0 = time.perf_counter()
    n, tag = len(data.y), f"set{image_set}"
    sc = score(net, chunks(data.x, data.y, s.chunk))
    losses = _losses(net, data, s.chunk)
    row = lambda q, v, i=0: (label, n, tag, q, i, float(v))  # noqa: E731
    rows = [row("loss", sc.loss), row("accuracy", sc.accuracy), row("worst_share", losses.max() / losses.sum())]
    h = Hessian(net, data.x, data.y, s.chunk, s.cache_bytes)
    top = top_eigenvalues(h, s.top_k if full else 1, s.tol, s.seed)
    rows += [row("eigenvalue", v, i + 1) for i, v in enumerate(top)]
    if s.lambda_min:
        lmax, lmin = extreme_eigenvalues(h, s.min_tol, s.seed, lambda_max=float(top[0]))
        rows += [row("lambda_min", lmin), row("ratio", curvature_ratio(lmax, lmin))]
    if s.trace:
        trace, se = hutchpp_trace(h, s.trace_matvecs, s.seed)
        rows += [row("trace", trace), row("trace_se", se)]
    matvecs = h.matvecs
    del h  # its kept graphs
    if full and n > 1:
        keep = torch.ones(n, dtype=torch.bool)
        keep[losses.argmax()] = False
        loo = Hessian(net, data.x[keep], data.y[keep], s.chunk, s.cache_bytes)
        rows.append(row("lambda_max_loo", top_eigenvalues(loo, 1, s.tol, s.seed)[0]))
        matvecs += loo.matvecs
    return rows + [row("matvecs", matvecs), row("seconds", time.perf_counter() - t0)]


def density_rows(label: str, net: torch.nn.Module, data: HeldOut, s: Solvers, steps: int,
                 runs: int) -> list[tuple]:
    """The eigenvalue density (stochastic Lanczos quadrature) of one net on one image set, over its Ritz values."""
    h = Hessian(net, data.x, data.y, s.chunk, s.cache_bytes)
    grid, dens, _ = spectral_density(h, steps, runs, s.seed)
    return [(label, len(data.y), float(g), float(d)) for g, d in zip(grid, dens)]


def map_row(label: str, net: torch.nn.Module, data: HeldOut, seed: int, alpha: float, beta: float, *,
            tol: float, chunk: int) -> tuple:
    """One point of the ratio map: the net's weights already moved there by the caller."""
    t0 = time.perf_counter()
    s = score(net, chunks(data.x, data.y, chunk))
    h = Hessian(net, data.x, data.y, chunk)
    lmax, lmin = extreme_eigenvalues(h, tol, seed)
    return (label, len(data.y), seed, alpha, beta, s.loss, s.accuracy, lmax, lmin, curvature_ratio(lmax, lmin),
            h.matvecs, time.perf_counter() - t0)


def compute_curvature(models: Sequence[LoadedWeights], *, sizes: Sequence[int] = (64, 256, 1024), sets: int = 3,
                      first_set: int = 0, split: str = "train", solvers: Solvers = Solvers(),
                      density_n: int | None = None,
                      density_steps: int = 80, density_runs: int = 1, map_grid: int = 0, map_span: float = 1.0,
                      map_n: int = 64, map_tol: float = 1e-2, direction_seed: int = 0,
                      map_points: Sequence[tuple[float, float]] | None = None, device: str | torch.device = "cpu",
                      progress: Progress | None = None,
                      dist: Dist | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(spectrum, density, map) frames for `models` (see the module docstring); `map_grid` 0 skips the map,
    `map_points` replaces the grid by these (alpha, beta) points.

    Every net is studied on a private copy on `device`. At each size n of `sizes`, image set k is images
    k*n .. (k+1)*n - 1 of `split`, `first_set` <= k < `first_set` + `sets` (more sets added to an earlier run);
    set 0 also carries the top-k and the leave-one-out lambda_max; the
    density is taken on set 0 at `density_n` (default: the size nearest 256; 0 or `density_steps` 0: none); the map
    uses the first `map_n` images.
    """
    if not models:
        raise ValueError("no models given")
    sizes = sorted(set(sizes))
    if not sizes or min(sizes) < 2 or sets < 0 or solvers.top_k < 1:
        raise ValueError("sizes must be at least 2 images, sets at least 0, top_k at least 1")
    if not sets and not map_grid and not map_points:
        raise ValueError("nothing to compute: no image set for a spectrum (sets 0) and no map")
    if density_n is None:
        density_n = default_density_n(sizes)
    points = list(map_points) if map_points is not None else grid_points(map_grid, map_span, 2) if map_grid else []
    labels = model_labels(models)
    jobs = [("spectrum", m, n, k) for n in sizes for m in range(len(models))
            for k in range(first_set, first_set + sets)]
    if sets and density_n and density_steps > 1:
        jobs += [("density", m, density_n, 0) for m in range(len(models))]
    jobs += [("map", m, map_n, k) for m in range(len(models)) for k in range(len(points))]
    mine = jobs if dist is None else [jobs[i] for i in shard_indices(len(jobs), dist)]
    spec, dens, maps = [], [], []
    images = max([n * (first_set + sets) for n in sizes] + [density_n or 0] + [map_n if points else 0])
    for w in models:  # Shapes renders any number of images: past the training set they are images it never saw
        trained = (w.meta.get("data") or {}).get("n_train")
        if split == "train" and trained and images > int(trained):
            raise ValueError(f"{w.meta.get('arch', 'the net')} was trained on {int(trained)} images, and these "
                             f"sizes and sets need {images} of them: use fewer --sizes or --sets (or --split test)")
    data: dict[int, HeldOut] = {}  # each net's images, made once
    for done, (kind, m, n, k) in enumerate(mine, 1):
        w = models[m]
        net = copy.deepcopy(w.model).to(device).eval()
        if m not in data:
            data[m] = held_out_set(w, images, split=split, device=device)
        if kind == "spectrum":
            spec += spectrum_rows(labels[m], net, _subset(data[m], slice(k * n, (k + 1) * n)), k, solvers,
                                  full=k == 0)
        elif kind == "density":
            dens += density_rows(labels[m], net, _subset(data[m], slice(0, n)), solvers, density_steps,
                                 density_runs)
        else:
            a, b = points[k]
            with moving(net, random_direction(net, direction_seed, 0), random_direction(net, direction_seed, 1)) as mv:
                mv.move(a, b)
                maps.append(map_row(labels[m], net, _subset(data[m], slice(0, n)), direction_seed, a, b, tol=map_tol,
                                    chunk=solvers.chunk))
        if progress is not None:
            progress(done / len(mine), f"{labels[m]}: {kind} {n} images, {k + 1}")
    if dist is not None and dist.world_size > 1:
        parts = gather_objects((spec, dens, maps), dist)
        spec, dens, maps = ([r for p in parts for r in p[i]] for i in range(3))
    order = {label: i for i, label in enumerate(labels)}
    spec.sort(key=lambda r: (order[r[0]], r[1], r[2]))
    dens.sort(key=lambda r: (order[r[0]], r[2]))
    maps.sort(key=lambda r: (order[r[0]], r[3], r[4]))
    return (pd.DataFrame(spec, columns=COLUMNS), pd.DataFrame(dens, columns=DENSITY_COLUMNS),
            pd.DataFrame(maps, columns=MAP_COLUMNS))
