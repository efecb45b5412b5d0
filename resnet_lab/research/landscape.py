"""Loss landscapes of trained nets along filter-normalized random directions (Li et al. 2018, §4 and §6).

Around a trained minimum w0 the loss is taken on a fixed held-out Shapes set at
w0 + alpha*d1 (+ beta*d2), where each d is Gaussian and then *filter-normalized*:
every filter (output-channel slice of a conv or linear weight) of d gets the
norm of the same filter of w0, so a step of 1 moves every filter as far as it
is long, and nets of different scale compare. As their code does with
`--xignore biasbn` (tomgoldstein/loss-landscape, `net_plotter.normalize_directions_for_weights`),
1-D tensors (biases, BN gamma/beta) get no direction, and BN runs in eval mode
with its running statistics.

Directions come from private generators seeded by (seed, direction index,
parameter name) through `zlib.crc32`, never from torch's global RNG, so a net
and its twin (plain20/resnet20 share every parameter name) draw the same
Gaussian tensor for every parameter they share: only the per-filter rescaling
to each net's own weights differs, as it must.

Only the perturbed weights change between grid points: the held-out images stay
on the device and each point is one in-place `copy_` per weight plus forward
passes; the weights are restored bit for bit at the end. Under
`torchrun --nproc-per-node N -m resnet_lab landscape ...` every rank evaluates
its strided share of the grid and rank 0 gathers and writes the results.

The shipped results (`assets/landscape_shapes.*`) come from the four Shapes twins in assets/twins/ (a bare arch
name means the shipped twin):

    python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --dims 2 --grid 21 --span 1.0 \
        --n 256 --seed 0 --device cpu --out assets --stem landscape_shapes

and `torchrun --nproc-per-node N -m resnet_lab landscape ... --images 256 ...` splits the grid over N processes
(`--images` is `--n`'s other name: torchrun's parser refuses `--n` as an ambiguous abbreviation of its own options).

Tidy CSV columns: model, alpha, beta, loss, accuracy (beta is 0 for a 1-D run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..paths import ASSETS
from ..progress import Progress, tqdm_progress
from ..resnet import REGISTRY, twin_name
from ..training.distributed import shard_indices
from .tables import read_checked_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..training.distributed import Dist
    from ..weights import LoadedWeights

TWINS_DIR = ASSETS / "twins"
SHIPPED_CSV = ASSETS / "landscape_shapes.csv"
COLUMNS = ["model", "alpha", "beta", "loss", "accuracy"]
TEST_SEED = 999  # train.py's default --test-seed: images no checkpoint was trained or tuned on
EVAL_BATCH = 500
RISE_AT = 0.5  # the loss rise is read at alpha = RISE_AT * span along each direction
NONCONVEX_RATIO = 0.01  # a point is non-convex when -lambda_min exceeds this share of the largest |lambda|
SHALLOW_DEPTH = 20  # Li et al. Fig. 5: at this depth plain and residual nets both have smooth, convex-looking surfaces
# The app's live 1-D run; `quick_settings` shrinks it to fit a time budget for the nets chosen
# (plain20 + resnet20, the shipped twins: 10.5 s with one thread at load 2, 20.6 s at load 11 on this 2-core CPU;
# 34.8 s with two threads at load 2: a busy machine wants one thread per process).
QUICK = {"grid": 15, "n": 256, "dims": 1, "span": 1.0}
# Seconds per giga-MAC of eval-mode forward pass, one thread, 32 px CIFAR nets, batches of up to 500, measured on
# this 2-core CPU while shared: 0.046-0.05 at load 4, 0.066-0.077 at load 10-11 (0.32 with 2 threads at load 11:
# under contention one thread per process is ~5x faster). A budget for a busy machine, not a best case.
CPU_S_PER_GMAC = 0.07


# ----------------------------------------------------------------------------- directions


def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a direction moves: every weight with filters (dim > 1); biases and BN stay put."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1]


def _generator(seed: int, index: int, name: str) -> torch.Generator:
    """A CPU generator for one (seed, direction, parameter name): the same tensor in every net that has the name."""
    return torch.Generator().manual_seed(zlib.crc32(f"{int(seed)}/{int(index)}/{name}".encode()))


def raw_direction(model: nn.Module, seed: int, index: int = 0) -> dict[str, torch.Tensor]:
    """Unnormalized Gaussian direction number `index`: one float32 CPU tensor per perturbed parameter."""
    return {name: torch.randn(p.shape, generator=_generator(seed, index, name), dtype=torch.float32)
            for name, p in perturbed_parameters(model)}


def filter_normalize(direction: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Scale each filter d[i] of `direction` to ||w[i]||, w the model's weight of that name (Li et al. eq. 1).

    As `net_plotter.normalize_direction` with `norm='filter'`, with a filter of zero norm (a dead filter)
    getting a zero direction rather than a division by zero. Returns new tensors on the weights' device.
    """
    weights = dict(model.named_parameters())
    out = {}
    for name, d in direction.items():
        w = weights[name].detach()
        d = d.to(device=w.device, dtype=w.dtype)
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        scale = torch.where(dn > 0, wn / dn.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(wn))
        out[name] = d * scale.view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(model: nn.Module, seed: int, index: int = 0) -> dict[str, torch.Tensor]:
    """Filter-normalized random direction `index` for `model` (see the module docstring)."""
    return filter_normalize(raw_direction(model, seed, index), model)


# ----------------------------------------------------------------------------- data and evaluation


def grid_axis(grid: int, span: float) -> np.ndarray:
    """`grid` values from -span to span, symmetric, with 0 exactly in the middle when `grid` is odd."""
    if grid < 2:
        raise ValueError(f"grid must be at least 2 points, not {grid}")
    half = (grid - 1) / 2
    return span * (np.arange(grid) - half) / half


def grid_points(grid: int, span: float, dims: int) -> list[tuple[float, float]]:
    """(alpha, beta) of every point: a line (beta 0) for dims 1, alpha-major for dims 2."""
    axis = grid_axis(grid, span)
    if dims == 1:
        return [(float(a), 0.0) for a in axis]
    if dims == 2:
        return [(float(a), float(b)) for a in axis for b in axis]
    raise ValueError(f"dims must be 1 or 2, not {dims}")


def held_out_set(weights: LoadedWeights, n: int, device: str | torch.device = "cpu",
                 seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` normalized Shapes test images (the checkpoint's clutter, size and test seed) and labels, on `device`."""
    from ..shapes import ShapesDataset

    data = weights.meta.get("data") or {}
    if data.get("name", "shapes") != "shapes":
        raise ValueError(f"{weights.source}: trained on {data.get('name')!r}; landscapes are computed on Shapes "
                         "checkpoints only")
    size = int(weights.pretrained_cfg["input_size"][-1])
    clutter = bool(data.get("clutter", weights.meta.get("config", {}).get("clutter", True)))
    seed = int(data.get("test_seed", TEST_SEED)) if seed is None else seed
    ds = ShapesDataset(n, seed, size, clutter=clutter)
    mean = torch.tensor(weights.pretrained_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(weights.pretrained_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = (ds.images.float() / 255 - mean) / std
    return x.to(device), ds.labels.to(device)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` (in whatever mode it is) on `x`, `y`; fixed batching, so a
    point gives the same number in one process or on any rank."""
    loss, correct = torch.zeros((), dtype=torch.float64, device=x.device), torch.zeros((), dtype=torch.int64,
                                                                                         device=x.device)
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).float()
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").double()
        correct += (logits.argmax(1) == y[i:i + batch]).sum()
    return loss.item() / len(x), correct.item() / len(x)


@torch.no_grad()
def evaluate_grid(model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: Sequence[tuple[float, float]],
                  d1: dict[str, torch.Tensor], d2: dict[str, torch.Tensor] | None = None,
                  progress: Callable[[int], object] | None = None,
                  batch: int = EVAL_BATCH) -> list[tuple[float, float]]:
    """(loss, accuracy) at w0 + alpha*d1 + beta*d2 for each (alpha, beta) in `points`, `model` in eval mode.

    The model's own weights are moved in place and put back exactly (a saved copy, also on error).
    `progress(i)` is called after point i.
    """
    params = dict(model.named_parameters())
    names = list(d1)
    w0 = {k: params[k].detach().clone() for k in names}
    was_training = model.training
    model.eval()
    out = []
    try:
        for i, (a, b) in enumerate(points):
            for k in names:
                p = params[k]
                torch.add(w0[k], d1[k], alpha=a, out=p.data)
                if d2 is not None and b != 0:
                    p.data.add_(d2[k], alpha=b)
            out.append(loss_and_accuracy(model, x, y, batch))
            if progress is not None:
                progress(i)
    finally:
        for k in names:
            params[k].data.copy_(w0[k])
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- the computation


def model_label(weights: LoadedWeights) -> str:
    """What a net is called in the CSV and the plots: its arch (`resnet56`)."""
    return str(weights.meta.get("arch") or _arch_of(weights.model))


def _arch_of(model: nn.Module) -> str:
    for name, cfg in REGISTRY.items():
        if cfg == getattr(model, "config", None):
            return name
    return type(model).__name__


def _labels(models: Sequence[LoadedWeights]) -> list[str]:
    """Arch names, made unique with the file name where two checkpoints share an arch."""
    labels = [model_label(w) for w in models]
    return [f"{lab} ({Path(w.path).stem})" if w.path is not None and labels.count(lab) > 1 else lab
            for lab, w in zip(labels, models)]


def compute_landscape(models: Sequence[LoadedWeights], *, grid: int = 21, span: float = 1.0, dims: int = 1,
                      n: int = 1000, seed: int = 0, device: str | torch.device = "cpu",
                      progress: Progress | None = None, dist: Dist | None = None,
                      batch: int = EVAL_BATCH) -> pd.DataFrame:
    """The tidy landscape (COLUMNS) of each net in `models`, all along directions drawn from `seed`.

    Each net is evaluated on a private copy moved to `device`, so the caller's model (say, one the app
    serves) is never perturbed. With `dist` (several ranks) each rank computes its strided share of the
    points and every rank returns the whole gathered frame.
    """
    if not models:
        raise ValueError("no models given")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if not (span > 0 and math.isfinite(span)):
        raise ValueError(f"span must be a positive number, not {span}")
    points = grid_points(grid, span, dims)
    mine = list(range(len(points))) if dist is None else shard_indices(len(points), dist)
    total, done = len(models) * len(mine), 0
    labels = _labels(models)
    data: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    rows: list[tuple[int, int, float, float]] = []  # (model index, point index, loss, accuracy)
    for m, (label, w) in enumerate(zip(labels, models)):
        d = w.meta.get("data") or {}
        key = (tuple(w.pretrained_cfg["input_size"]), d.get("clutter"), d.get("test_seed"),
               tuple(w.pretrained_cfg["mean"]), tuple(w.pretrained_cfg["std"]))
        if key not in data:
            data[key] = held_out_set(w, n, device)
        x, y = data[key]
        net = copy.deepcopy(w.model).to(device).eval()
        d1 = random_direction(net, seed, 0)
        d2 = random_direction(net, seed, 1) if dims == 2 else None

        def step(i: int, done: int = done, label: str = label) -> None:
            if progress is not None:
                progress((done + i + 1) / total, f"{label}: point {i + 1}/{len(mine)}")

        results = evaluate_grid(net, x, y, [points[k] for k in mine], d1, d2, step, batch)
        rows += [(m, k, loss, acc) for k, (loss, acc) in zip(mine, results)]
        done += len(mine)
        del net
    if dist is not None and dist.world_size > 1:
        from ..training.distributed import gather_objects

        rows = [r for part in gather_objects(rows, dist) for r in part]
    rows.sort(key=lambda r: (r[0], r[1]))
    return pd.DataFrame([(labels[m], points[k][0], points[k][1], loss, acc) for m, k, loss, acc in rows],
                        columns=COLUMNS)


# ----------------------------------------------------------------------------- what the numbers say


def surface(df: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alphas, betas, loss[i_alpha, j_beta]) of one net's 2-D grid."""
    d = df[df.model == model]
    table = d.pivot_table(index="alpha", columns="beta", values="loss")
    return table.index.to_numpy(), table.columns.to_numpy(), table.to_numpy()


def surface_hessian(loss: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (lambda_min, lambda_max) of the 2x2 Hessian of a gridded surface at every interior point.

    Central finite differences on the grid (step `h` on both axes): L_aa, L_bb from the three-point stencil
    and L_ab from the four diagonal neighbours. This is the curvature of the *plotted surface*, the 2-D
    restriction of the loss Hessian to the plane of the two directions, not the full Hessian that Li et al.
    §6 estimate with Lanczos; it is what the contour plot shows, measured.
    """
    L = np.asarray(loss, dtype=np.float64)
    laa = (L[2:, 1:-1] - 2 * L[1:-1, 1:-1] + L[:-2, 1:-1]) / h**2
    lbb = (L[1:-1, 2:] - 2 * L[1:-1, 1:-1] + L[1:-1, :-2]) / h**2
    lab = (L[2:, 2:] - L[2:, :-2] - L[:-2, 2:] + L[:-2, :-2]) / (4 * h**2)
    mid, rad = (laa + lbb) / 2, np.sqrt(((laa - lbb) / 2) ** 2 + lab**2)
    return mid - rad, mid + rad


def nonconvexity(lmin: np.ndarray, lmax: np.ndarray) -> tuple[float, float]:
    """(share of points that are non-convex, median |lambda_min/lambda_max| at them and elsewhere).

    A point is non-convex when its most negative curvature exceeds NONCONVEX_RATIO of its largest curvature
    in magnitude (so float noise on a flat, convex bowl does not count). The ratio map is Li et al.'s
    Fig. 7 colouring (|lambda_min/lambda_max|, with lambda_min >= 0 counted as 0: convex).
    """
    neg = np.clip(-lmin, 0, None)
    scale = np.maximum(np.abs(lmin), np.abs(lmax))
    ratio = np.where(scale > 0, neg / np.where(scale > 0, scale, 1), 0.0)
    return float(np.mean(ratio > NONCONVEX_RATIO)), float(np.median(ratio))


def local_minima(loss: np.ndarray) -> int:
    """Grid points below all 8 neighbours, other than the trained minimum at the centre: the spurious minima of a
    chaotic surface (Li et al.: plain nets' landscapes grow them with depth). Points on the border, which lack
    neighbours, are not counted."""
    L = np.asarray(loss, dtype=np.float64)
    inner = L[1:-1, 1:-1]
    lower = np.ones_like(inner, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                lower &= inner < L[1 + di:L.shape[0] - 1 + di, 1 + dj:L.shape[1] - 1 + dj]
    c = (L.shape[0] - 1) // 2 - 1, (L.shape[1] - 1) // 2 - 1
    if L.shape[0] % 2 and L.shape[1] % 2 and 0 <= c[0] < inner.shape[0] and 0 <= c[1] < inner.shape[1]:
        lower[c] = False
    return int(lower.sum())


def _nearest(values: np.ndarray, target: float) -> float:
    return float(values[np.argmin(np.abs(values - target))])


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per net: loss and accuracy at its own weights, the mean and largest loss rise and the accuracy drop a
    step of RISE_AT*span away along each direction, and (2-D grids) the non-convex share of the whole grid, its
    median |lambda_min/lambda_max|, and the non-convex share within a step of the minimum (|alpha|, |beta| <= step),
    where Li et al.'s residual nets are convex and their plain twins are not, and the count of spurious local
    minima on the grid."""
    rows = []
    for model in dict.fromkeys(df.model):
        d = df[df.model == model]
        alphas = np.sort(d.alpha.unique())
        two_d = d.beta.nunique() > 1
        center = d[(d.alpha == 0) & (d.beta == 0)]
        if center.empty:
            raise ValueError(f"{model}: the grid has no point at alpha = beta = 0 (use an odd --grid)")
        loss0, acc0 = float(center.loss.iloc[0]), float(center.accuracy.iloc[0])
        step = _nearest(alphas, RISE_AT * alphas.max())
        probes = [(step, 0.0), (-step, 0.0)] + ([(0.0, step), (0.0, -step)] if two_d else [])
        at = [d[(np.isclose(d.alpha, a)) & (np.isclose(d.beta, b))].iloc[0] for a, b in probes]
        rise = [float(r.loss) - loss0 for r in at]
        row = {"model": model, "dims": 2 if two_d else 1, "loss0": loss0, "acc0": acc0, "step": step,
               "rise_mean": float(np.mean(rise)), "rise_max": float(np.max(rise)),
               "acc_drop": acc0 - float(np.mean([r.accuracy for r in at])),
               "nonconvex_share": math.nan, "median_ratio": math.nan, "nonconvex_center": math.nan,
               "local_minima": math.nan}
        if two_d and len(alphas) >= 3:
            a, b, loss = surface(df, model)
            lmin, lmax = surface_hessian(loss, float(a[1] - a[0]))
            row["nonconvex_share"], row["median_ratio"] = nonconvexity(lmin, lmax)
            near = (np.abs(a[1:-1])[:, None] <= step + 1e-9) & (np.abs(b[1:-1])[None, :] <= step + 1e-9)
            row["nonconvex_center"] = nonconvexity(lmin[near], lmax[near])[0]
            row["local_minima"] = local_minima(loss)
        rows.append(row)
    return pd.DataFrame(rows)


def _pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """(residual, plain) twins both present, residual name first, in the order the residual nets appear."""
    return [(m, twin_name(m)) for m in models
            if m in REGISTRY and REGISTRY[m].residual and twin_name(m) in models]


def _times(a: float, b: float) -> str:
    """How many times b is a, as words a person reads."""
    if a <= 0 or not math.isfinite(a) or not math.isfinite(b):
        return "incomparably" if b > 0 else "no"
    return f"{b / a:.1f}x"


def describe_landscape(df: pd.DataFrame, chance: float | None = None) -> str:
    """What the landscape says, computed from the numbers: how steep and how non-convex each net's surface is,
    and for each plain/residual pair which is smoother (on a 2-D grid: the more convex, Li et al.'s criterion; on a
    1-D slice: the flatter) and by how much. `chance`: accuracy of guessing
    (default 1/8, Shapes). A net whose own loss is above half the loss of guessing (-ln chance) is flagged as
    not at a minimum (below twice chance accuracy: never trained), and its pair is not compared as Li et al.'s."""
    from ..shapes import CLASSES

    chance = 1 / len(CLASSES) if chance is None else chance
    s = summarize(df).set_index("model")
    off = {m for m, r in s.iterrows() if r.loss0 > 0.5 * -math.log(chance) or r.acc0 < 2 * chance}
    models = list(s.index)
    two_d = bool((s.dims == 2).any())
    step = float(s.step.iloc[0])
    n_dirs = 4 if two_d else 2
    lines = [f"Loss at the trained weights and {n_dirs} steps of {step:g} (filter-normalized units) away along "
             f"{'two' if two_d else 'one'} random direction{'s' if two_d else ''}, both ways:"]
    for m, r in s.iterrows():
        text = (f"- {m}: loss {r.loss0:.3g} (accuracy {r.acc0:.1%}) rises by {r.rise_mean:.3g} on average "
                f"(at most {r.rise_max:.3g}), accuracy falls by {r.acc_drop:.1%}")
        if math.isfinite(r.nonconvex_share):
            text += (f"; {r.nonconvex_share:.0%} of the surface is non-convex, {r.nonconvex_center:.0%} within "
                     f"±{step:g} of the minimum (median |λmin/λmax| {r.median_ratio:.2f}); "
                     f"{int(r.local_minima)} spurious local minima on the grid")
        if r.acc0 < 2 * chance:
            text += f". It sits near chance ({chance:.1%}) at its own weights: it never trained, so its " \
                    "landscape is that of an untrained net, not the paper's figure"
        elif m in off:
            text += (f". It is far from a minimum (guessing scores loss {-math.log(chance):.3g}): it barely "
                     "trained, so its landscape is that of a net still on the plateau, not the paper's figure")
        lines.append(text + ".")
    verdicts = []
    for res, plain in _pairs(models):
        a, b = s.loc[res], s.loc[plain]
        convexity = two_d and math.isfinite(a.nonconvex_share) and math.isfinite(b.nonconvex_share)
        lo, hi = sorted((a.rise_mean, b.rise_mean))
        if convexity:  # Li et al.'s criterion: convex and smooth against chaotic, not how steep the walls are
            smoother = res if (a.nonconvex_share, a.local_minima) <= (b.nonconvex_share, b.local_minima) else plain
            rougher = plain if smoother == res else res
            x, y = s.loc[smoother], s.loc[rougher]
            verdicts.append(
                f"{smoother}'s surface is the more convex: {x.nonconvex_share:.0%} of it is non-convex against "
                f"{y.nonconvex_share:.0%} of {rougher}'s ({x.nonconvex_center:.0%} and {y.nonconvex_center:.0%} "
                f"within ±{step:g} of the minimum), with {int(x.local_minima)} spurious local minima against "
                f"{int(y.local_minima)}.")
            sharper = res if a.rise_mean > b.rise_mean else plain
            verdicts.append(f"{sharper}'s minimum is the sharper one: its loss rises {_times(lo, hi)} more "
                            f"({hi:.3g} against {lo:.3g}); sharpness is not what Li et al.'s Fig. 5 compares.")
        else:  # a 1-D slice shows only how steep the surface is
            smoother = res if a.rise_mean < b.rise_mean else plain
            rougher = plain if smoother == res else res
            verdicts.append(f"{smoother}'s surface is flatter than {rougher}'s: its loss rises {_times(lo, hi)} "
                            f"less ({lo:.3g} against {hi:.3g}); a 2-D grid (--dims 2) measures convexity.")
        untrained = [m for m in (res, plain) if m in off]
        if untrained:
            verdicts.append(f"{' and '.join(untrained)} did not train to a minimum, so this pair is not Li et al.'s "
                            f"comparison of two minima: a net on the high plateau (loss "
                            f"{s.loc[untrained[0]].loss0:.3g}) rises less because it starts high, not because its "
                            "minimum is wide.")
        elif smoother == plain and REGISTRY[res].depth <= SHALLOW_DEPTH:
            verdicts.append(f"At {REGISTRY[res].depth} layers this does not contradict Li et al. (2018): their "
                            "20-layer nets are smooth with or without shortcuts, and the plain nets turn chaotic "
                            "only with depth (56, 110); how flat a minimum is at a fixed step also depends on how "
                            "each net was trained (their §6).")
        elif smoother == plain:
            verdicts.append(f"This disagrees with Li et al. (2018), where the deep residual net is the smoother "
                            f"one; check that {plain} and {res} were trained alike and to similar accuracy.")
        elif REGISTRY[res].depth > SHALLOW_DEPTH:
            verdicts.append(f"As in Li et al. (2018, Fig. 5): at {REGISTRY[res].depth} layers the shortcuts keep "
                            f"the surface around the minimum {'convex' if convexity else 'flat'} where the plain "
                            f"twin's is {'chaotic' if convexity else 'steeper'}.")
    by_depth = {REGISTRY[m].depth: m for m in models if m in REGISTRY and not REGISTRY[m].residual and m not in off}
    if len(by_depth) >= 2:
        shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
        a, b = s.loc[shallow], s.loc[deep]
        if two_d and math.isfinite(a.nonconvex_share) and math.isfinite(b.nonconvex_share):
            more = (b.nonconvex_share, b.local_minima) > (a.nonconvex_share, a.local_minima)
            verdicts.append(f"Without shortcuts, depth makes the surface {'more' if more else 'no more'} chaotic: "
                            f"{b.nonconvex_share:.0%} of {deep}'s is non-convex against {a.nonconvex_share:.0%} of "
                            f"{shallow}'s, with {int(b.local_minima)} spurious local minima against "
                            f"{int(a.local_minima)} (Li et al.: plain nets grow chaotic with depth).")
        else:
            word = "steeper" if b.rise_mean > a.rise_mean else "no steeper"
            verdicts.append(f"Without shortcuts, depth makes the surface {word}: {deep}'s loss rises by "
                            f"{b.rise_mean:.3g} against {shallow}'s {a.rise_mean:.3g} (Li et al.: plain nets grow "
                            "chaotic with depth).")
    return "\n".join(lines + verdicts)


# ----------------------------------------------------------------------------- figures and files


def _style(model: str) -> dict[str, Any]:
    from .degradation import STYLE

    arch = model.split(" ")[0]
    if arch not in REGISTRY:
        return {}
    cfg = REGISTRY[arch]
    return {"color": STYLE.get(cfg.depth, "black"), "ls": "-" if cfg.residual else "--"}


def plot_1d(df: pd.DataFrame) -> Figure:
    """Loss (log scale) and accuracy along the first direction (beta = 0), every net on the same axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for model in dict.fromkeys(df.model):
        d = df[(df.model == model) & (df.beta == 0)].sort_values("alpha")
        ax_loss.plot(d.alpha, d.loss, label=model, **_style(model))
        ax_acc.plot(d.alpha, d.accuracy, label=model, **_style(model))
    ax_loss.set(xlabel="alpha (filter-normalized)", ylabel="held-out loss", yscale="log")
    ax_acc.set(xlabel="alpha (filter-normalized)", ylabel="held-out accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_2d(df: pd.DataFrame) -> Figure:
    """Contours of the loss of each net side by side, on the same log-spaced levels (as Li et al.'s figures)."""
    from matplotlib import cm
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(df.model))
    positive = df.loss[df.loss > 0]
    lo, hi = float(positive.min()), float(positive.max())
    levels = np.geomspace(lo, hi if hi > lo * 1.01 else lo * 10, 30)
    norm = LogNorm(levels[0], levels[-1])
    fig = Figure(figsize=(3.6 * len(models) + 0.8, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
    for ax, model in zip(axes, models):
        a, b, loss = surface(df, model)
        ax.contour(a, b, np.clip(loss.T, lo, None), levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
        ax.plot([0], [0], marker="+", color="red", ms=8)
        ax.set(title=model, xlabel="alpha", aspect="equal")
    axes[0].set_ylabel("beta")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes), label="held-out loss (log levels)")
    return fig


def read_csv(path: str | Path = SHIPPED_CSV) -> pd.DataFrame:
    """A landscape CSV, checked for its columns (a person may pick any file)."""
    return read_checked_csv(path, COLUMNS, "landscape")


def write_results(df: pd.DataFrame, out: str | Path, stem: str = "landscape",
                  record: dict[str, Any] | None = None) -> list[Path]:
    """`<stem>.csv`, `<stem>_1d.png`, `<stem>_2d.png` (2-D grids) and `<stem>.json` (settings, summary) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.csv", out / f"{stem}_1d.png"]
    df.to_csv(paths[0], index=False, float_format="%.7g")
    plot_1d(df).savefig(paths[1], dpi=100)
    if df.beta.nunique() > 1:
        paths.append(out / f"{stem}_2d.png")
        plot_2d(df).savefig(paths[-1], dpi=100)
    summary = summarize(df).round(6).to_dict(orient="records")
    paths.append(out / f"{stem}.json")
    paths[-1].write_text(json.dumps({**(record or {}), "summary": summary}, indent=2, default=str) + "\n")
    return paths


# ----------------------------------------------------------------------------- cost


def macs_per_image(arch: str, size: int = 32, num_classes: int = 8) -> int:
    """Multiply-accumulates of one forward pass of `arch` on a `size` px image (convs and the classifier)."""
    net = build_meta(arch, num_classes)
    total = 0

    def count(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net.eval()(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return total


def estimate_seconds(archs: Sequence[str], grid: int, dims: int, n: int, size: int = 32,
                     s_per_gmac: float = CPU_S_PER_GMAC) -> float:
    """Seconds a run takes on this CPU: grid points x images x each net's MACs at the measured rate, plus
    rendering the held-out images (~2.5k/s)."""
    gmacs = sum(macs_per_image(a, size) for a in archs) * n * grid**dims / 1e9
    return gmacs * s_per_gmac + n / 2500


def quick_settings(archs: Sequence[str], seconds: float = 25.0, size: int = 32) -> dict[str, Any]:
    """QUICK, with fewer held-out images (not under 64), then a coarser line, until `archs` fit in `seconds`."""
    grid, n = QUICK["grid"], QUICK["n"]
    while estimate_seconds(archs, grid, 1, n, size) > seconds and (n > 64 or grid > 7):
        if n > 64:
            n = max(64, int(n * 0.8))
        else:
            grid -= 2
    return {**QUICK, "grid": grid, "n": n, "seconds": round(estimate_seconds(archs, grid, 1, n, size), 1)}


def estimate_memory(archs: Sequence[str], n: int, size: int = 32, batch: int = EVAL_BATCH) -> int:
    """Peak bytes a run adds (an upper bound): the held-out set (float, plus its uint8 rendering), per net the
    private copy, w0 and two directions, and the widest no-grad activations of one batch: six alive at once (a
    block's input kept for its shortcut, conv, BN and ReLU outputs, and oneDNN's reordered copies)."""
    from .memory import ALLOCATOR_OVERHEAD

    data = n * 3 * size * size * (4 + 4 + 1)
    nets = sum(4 * 4 * _param_count(a) for a in archs)
    widest = max(REGISTRY[a].widths[0] * size * size for a in archs) if archs else 0
    return math.ceil(ALLOCATOR_OVERHEAD["cpu"] * (data + nets + 6 * 4 * min(batch, n) * widest))


def _param_count(arch: str) -> int:
    return sum(p.numel() for p in build_meta(arch).parameters())


def build_meta(arch: str, num_classes: int = 8) -> nn.Module:
    """`arch` with meta weights (shapes only, nothing allocated)."""
    from ..resnet import build

    with torch.device("meta"):
        return build(arch, num_classes=num_classes, seed=0)


# ----------------------------------------------------------------------------- CLI


def resolve_model_path(spec: str) -> Path:
    """A checkpoint path as typed, or a bare arch name for the shipped twin (`resnet56` ->
    assets/twins/shapes_resnet56.safetensors)."""
    path = Path(spec)
    if path.suffix == "" and not path.exists():
        shipped = TWINS_DIR / f"shapes_{spec}.safetensors"
        if shipped.is_file():
            return shipped
        path = path.with_suffix(".safetensors")
    return path


def load_models(specs: Sequence[str]) -> list[LoadedWeights]:
    """Checkpoints by path or shipped-twin arch name; ValueError with a message a person can act on."""
    from ..weights import WeightsUnavailable, load_checkpoint

    paths = [resolve_model_path(s) for s in specs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"checkpoint not found: {', '.join(missing)} (give .safetensors files with their JSON, "
                         f"or the arch of a twin shipped in {TWINS_DIR.relative_to(ASSETS.parent)}/)")
    try:
        return [load_checkpoint(p) for p in paths]
    except WeightsUnavailable as e:
        raise ValueError(str(e)) from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True,
                   help="comma-separated checkpoints (.safetensors with their JSON), or arch names of shipped twins")
    p.add_argument("--grid", type=int, default=21, help="points per axis (odd, so alpha = 0 is on the grid)")
    p.add_argument("--span", type=float, default=1.0, help="the grid goes from -span to span along each direction")
    p.add_argument("--dims", type=int, default=1, choices=[1, 2], help="1: a line; 2: a plane (grid x grid)")
    p.add_argument("--n", "--images", dest="n", type=int, default=1000,
                   help="held-out Shapes images (the checkpoint's test seed); under torchrun write --images, since "
                        "torchrun's own parser takes --n for an ambiguous abbreviation of its options")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present; a rank's own GPU "
                                                  "under torchrun)")
    p.add_argument("--out", default=None, help="folder for <stem>.csv, _1d.png, _2d.png and .json")
    p.add_argument("--stem", default="landscape", help="file name stem in --out (e.g. landscape_shapes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _check(args: argparse.Namespace) -> str | None:
    if args.grid < 3 or args.grid % 2 == 0:
        return f"--grid must be odd and at least 3 (alpha = 0 must be a grid point), not {args.grid}"
    if not (args.span > 0 and math.isfinite(args.span)):
        return f"--span must be a positive number, not {args.span}"
    if args.n < 1:
        return f"--n must be at least 1, not {args.n}"
    return None


def run(args: argparse.Namespace) -> int:
    from ..training.distributed import cleanup, setup

    problem = _check(args)
    specs = [s.strip() for s in args.models.split(",") if s.strip()]
    if problem is None and not specs:
        problem = "--models names no checkpoint"
    if problem:
        print(f"landscape: {problem}", file=sys.stderr)
        return 2
    try:
        models = load_models(specs)
    except ValueError as e:
        print(f"landscape: {e}", file=sys.stderr)
        return 2
    try:
        dist = setup(args.device)
    except (RuntimeError, ValueError) as e:
        print(f"landscape: cannot use device {args.device!r}: {e}", file=sys.stderr)
        return 2
    try:
        points = args.grid ** args.dims
        progress, close = (tqdm_progress(len(models) * len(shard_indices(points, dist)), f"landscape rank {dist.rank}")
                           if not args.quiet and dist.is_main else (None, lambda: None))
        t0 = time.perf_counter()
        try:
            df = compute_landscape(models, grid=args.grid, span=args.span, dims=args.dims, n=args.n,
                                   seed=args.seed, device=dist.device, progress=progress, dist=dist)
        except ValueError as e:
            print(f"landscape: {e}", file=sys.stderr)
            return 2
        finally:
            close()
        seconds = time.perf_counter() - t0
        if not dist.is_main:
            return 0
        print(describe_landscape(df))
        print(f"{len(models)} nets x {points} points x {args.n} images in {seconds:.1f} s "
              f"on {dist.world_size} x {dist.device}")
        if args.out:
            record = {"command": getattr(args, "command_line", None), "seconds": round(seconds, 2),
                      "device": str(dist.device), "world_size": dist.world_size, "torch_threads":
                      torch.get_num_threads(), "grid": args.grid, "span": args.span, "dims": args.dims,
                      "n": args.n, "seed": args.seed, "models": specs}
            for path in write_results(df, args.out, args.stem, record):
                print(f"wrote {path}")
        return 0
    finally:
        cleanup(dist)
