"""The numbers a landscape reading rests on, with their spread over direction seeds and the controls.

Two kinds of reading, each only where the numbers carry it:

- Sharpness: how far the loss rises a radius r away from w0 (mean of both signs; on a 2-D grid of both axes), for
  each direction seed and control. A pair's difference counts only when it is consistent over seeds (paired, the
  twins share their direction tensors): the mean difference exceeds twice its standard error and at least 80 % of
  the seeds agree in sign. A reading is said to survive when it holds under every control that was measured;
  otherwise the text names the control that removes or reverses it.
- Convexity of the plotted 2-D surface (central differences on the grid: the Hessian of the surface, not the full
  Hessian, which `curvature` measures): the share of points that are non-convex, counted *inside the basin*
  (points whose loss is below ln C, the loss of guessing) so a chaotic plateau far from the minimum does not count,
  and local minima only below chance loss (a dip on a plateau above chance is not a competing minimum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...models.resnet import twin_pairs
from .compute import CONTROLS, RADII

NONCONVEX_RATIO = 0.01  # a point is non-convex when -lambda_min exceeds this share of its largest |lambda|
CONSISTENT_SE = 2.0  # a paired mean difference of more than this many standard errors ...
CONSISTENT_AGREE = 0.8  # ... with at least this share of the seeds agreeing in sign, is a consistent difference
SHAPES_CLASSES = 8


# ----------------------------------------------------------------------------- sharpness


def radii_on(df: pd.DataFrame) -> list[float]:
    """The study's radii (RADII) that are points of the frame, else the point nearest half its largest |alpha|."""
    on = np.abs(df.alpha.unique())
    found = [r for r in RADII if np.isclose(on, r).any()]
    if found or not (on > 0).any():
        return found
    half = on.max() / 2
    return [float(on[on > 0][np.argmin(np.abs(on[on > 0] - half))])]


def rises(df: pd.DataFrame, radii: Sequence[float] | None = None) -> pd.DataFrame:
    """Per (model, seed, control, radius): the loss rise and accuracy drop from w0, averaged over +-r along the
    seed's first direction (beta = 0). Only the first: a seed's line and its 2-D grid share that direction, so a
    frame that holds both (the sharpness study beside the grid) reads the same rise from either, and every seed is
    read alike. Default radii: `radii_on(df)`."""
    radii = radii_on(df) if radii is None else radii
    rows = []
    for (model, seed, control), d in df.groupby(["model", "seed", "control"], sort=False):
        center = d[(d.alpha == 0) & (d.beta == 0)]
        if center.empty:
            raise ValueError(f"{model}: no point at alpha = beta = 0")
        loss0, acc0 = float(center.loss.iloc[0]), float(center.accuracy.iloc[0])
        line = d[d.beta == 0].drop_duplicates("alpha")
        for r in radii:
            probes = line[np.isclose(line.alpha.abs(), r)]
            if len(probes) < 2:
                continue
            rows.append({"model": model, "seed": seed, "control": control, "radius": r, "loss0": loss0,
                         "rise": float(probes.loss.mean()) - loss0, "acc_drop": acc0 - float(probes.accuracy.mean())})
    return pd.DataFrame(rows, columns=["model", "seed", "control", "radius", "loss0", "rise", "acc_drop"])


def sharpness_table(r: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max over seeds of each (model, control, radius)'s rise."""
    g = r.groupby(["model", "control", "radius"], sort=False)
    out = g.rise.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["acc_drop"] = g.acc_drop.mean().to_numpy()
    return out.rename(columns={"count": "seeds"})


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, str]:
    """(mean of a - b, its standard error, share of seeds agreeing with the mean's sign, verdict) for values paired
    by seed; verdict is "a", "b" (the larger), "none" (no consistent difference) or "one seed" (no spread)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else math.nan), math.nan, math.nan, "one seed"
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    agree = float(np.mean(np.sign(d) == np.sign(mean))) if mean else 0.0
    consistent = abs(mean) > CONSISTENT_SE * se and agree >= CONSISTENT_AGREE
    return mean, se, agree, ("a" if mean > 0 else "b") if consistent else "none"


def pair_sharpness(r: pd.DataFrame) -> pd.DataFrame:
    """Per twin pair, control and radius: the paired difference of rises (residual - plain) over seeds, and who
    is consistently sharper ("residual", "plain" or "none")."""
    columns = ["residual", "plain", "control", "radius", "seeds", "rise_residual", "rise_plain", "diff", "se",
               "agree", "sharper"]
    rows = []
    for res, plain in twin_pairs(list(dict.fromkeys(r.model))):
        for (control, radius), d in r.groupby(["control", "radius"], sort=False):
            a = d[d.model == res].set_index("seed").rise
            b = d[d.model == plain].set_index("seed").rise
            seeds = a.index.intersection(b.index)
            mean, se, agree, who = paired(a[seeds].to_numpy(), b[seeds].to_numpy())
            rows.append({"residual": res, "plain": plain, "control": control, "radius": radius, "seeds": len(seeds),
                         "rise_residual": float(a[seeds].mean()), "rise_plain": float(b[seeds].mean()),
                         "diff": mean, "se": se, "agree": agree,
                         "sharper": {"a": "residual", "b": "plain"}.get(who, who)})
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- the plotted surface


def surface(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alphas, betas, loss[i_alpha, j_beta]) of one net's 2-D grid (one seed, one control). Only the grid's own
    points: alphas that occur off the beta = 0 line and betas off the alpha = 0 line, so points of a line study
    in the same frame (radii between grid points) leave no holes."""
    alphas, betas = set(d.alpha[d.beta != 0]), set(d.beta[d.alpha != 0])
    d = d[d.alpha.isin(alphas) & d.beta.isin(betas)]
    table = d.pivot_table(index="alpha", columns="beta", values="loss")
    return table.index.to_numpy(), table.columns.to_numpy(), table.to_numpy()


def surface_hessian(loss: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (lambda_min, lambda_max) of the 2x2 Hessian of a gridded surface at every interior point, by
    central differences (step `h`): the curvature of the plotted surface, not of the network's full Hessian."""
    L = np.asarray(loss, dtype=np.float64)
    laa = (L[2:, 1:-1] - 2 * L[1:-1, 1:-1] + L[:-2, 1:-1]) / h**2
    lbb = (L[1:-1, 2:] - 2 * L[1:-1, 1:-1] + L[1:-1, :-2]) / h**2
    lab = (L[2:, 2:] - L[2:, :-2] - L[:-2, 2:] + L[:-2, :-2]) / (4 * h**2)
    mid, rad = (laa + lbb) / 2, np.sqrt(((laa - lbb) / 2) ** 2 + lab**2)
    return mid - rad, mid + rad


def nonconvex(lmin: np.ndarray, lmax: np.ndarray) -> np.ndarray:
    """Where a point is non-convex: its most negative curvature exceeds NONCONVEX_RATIO of its largest |curvature|
    (float noise on a flat, convex bowl does not count)."""
    neg = np.clip(-lmin, 0, None)
    scale = np.maximum(np.abs(lmin), np.abs(lmax))
    return neg > NONCONVEX_RATIO * np.where(scale > 0, scale, np.inf)


def local_minima(loss: np.ndarray) -> np.ndarray:
    """Interior points below all 8 neighbours, the trained minimum at the centre excluded."""
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
    return lower


def surface_readings(df: pd.DataFrame, num_classes: int = SHAPES_CLASSES, near: float = 0.5) -> pd.DataFrame:
    """Per (model, seed) of the 2-D grids (control "none"): the non-convex share of the interior points inside the
    basin (loss below ln C), within `near` of w0 and on the whole grid; local minima below chance loss, and dips
    above it (on a plateau: not competing minima)."""
    chance = math.log(num_classes)
    rows = []
    for (model, seed), d in df[df.control == "none"].groupby(["model", "seed"], sort=False):
        if d.beta.nunique() < 3 or d.alpha.nunique() < 3:
            continue
        a, b, loss = surface(d)
        lmin, lmax = surface_hessian(loss, float(a[1] - a[0]))
        bad, inner = nonconvex(lmin, lmax), loss[1:-1, 1:-1]
        basin = inner < chance
        close = (np.abs(a[1:-1])[:, None] <= near + 1e-9) & (np.abs(b[1:-1])[None, :] <= near + 1e-9)
        minima = local_minima(loss)
        rows.append({"model": model, "seed": seed, "basin_points": int(basin.sum()),
                     "nonconvex_basin": float(bad[basin].mean()) if basin.any() else math.nan,
                     "nonconvex_near": float(bad[close].mean()), "nonconvex_all": float(bad.mean()),
                     "minima_below_chance": int((minima & basin).sum()),
                     "dips_above_chance": int((minima & ~basin).sum())})
    return pd.DataFrame(rows)


def surface_table(s: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each net's surface readings."""
    cols = ["nonconvex_basin", "nonconvex_near", "nonconvex_all", "minima_below_chance", "dips_above_chance",
            "basin_points"]
    agg = s.groupby("model", sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{c}_{k}" for c, k in agg.columns]
    agg.insert(0, "seeds", s.groupby("model", sort=False).size())
    return agg.reset_index()


def pair_convexity(s: pd.DataFrame) -> pd.DataFrame:
    """Per twin pair: the paired difference of basin non-convex shares over seeds and who is consistently the less
    convex ("residual", "plain" or "none")."""
    rows = []
    for res, plain in twin_pairs(list(dict.fromkeys(s.model))):
        a = s[s.model == res].set_index("seed").nonconvex_basin
        b = s[s.model == plain].set_index("seed").nonconvex_basin
        seeds = a.index.intersection(b.index)
        mean, se, agree, who = paired(a[seeds].to_numpy(), b[seeds].to_numpy())
        rows.append({"residual": res, "plain": plain, "seeds": len(seeds), "share_residual": float(a[seeds].mean()),
                     "share_plain": float(b[seeds].mean()), "diff": mean, "se": se, "agree": agree,
                     "less_convex": {"a": "residual", "b": "plain"}.get(who, who)})
    return pd.DataFrame(rows)


def controls_in(df: pd.DataFrame) -> list[str]:
    return [c for c in CONTROLS if c in set(df.control)]
