"""The curvature reading in words: each twin's full-Hessian numbers, and differences only where they exceed the
spread over image sets (lambda_max, trace) or the eigensolver's tolerance (the ratio)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...models.resnet import twin_pairs
from ..landscape.readings import paired

SPECTRUM_TABLE = ["model", "loss", "accuracy", "lambda_max", "top_k", "lambda_min", "ratio", "trace", "trace_se",
                  "sets", "lambda_max_mean", "lambda_max_std", "trace_mean", "trace_std", "matvecs", "seconds"]


def spectrum_table(spec: pd.DataFrame) -> pd.DataFrame:
    """One row per net: set 0's numbers, and lambda_max and the trace as mean and std over the image sets."""
    rows = []
    for model, d in spec.groupby("model", sort=False):
        first = d[d.images == "set0"]
        get = lambda q, i=0, f=first: float(f[(f.quantity == q) & (f["index"] == i)].value.iloc[0]) \
            if len(f[(f.quantity == q) & (f["index"] == i)]) else math.nan  # noqa: E731
        top = d[(d.quantity == "eigenvalue") & (d["index"] == 1)].value
        tr = d[d.quantity == "trace"].value
        eig = first[first.quantity == "eigenvalue"].sort_values("index").value.tolist()
        rows.append({"model": model, "loss": get("loss"), "accuracy": get("accuracy"),
                     "lambda_max": get("eigenvalue", 1), "top_k": eig, "lambda_min": get("lambda_min"),
                     "ratio": get("ratio"), "trace": get("trace"),
                     "trace_se": get("trace_se"), "sets": len(top), "lambda_max_mean": float(top.mean()),
                     "lambda_max_std": float(top.std(ddof=1)) if len(top) > 1 else math.nan,
                     "trace_mean": float(tr.mean()), "trace_std": float(tr.std(ddof=1)) if len(tr) > 1 else math.nan,
                     "matvecs": float(d[d.quantity == "matvecs"].value.sum()),
                     "seconds": float(d[d.quantity == "seconds"].value.sum())})
    return pd.DataFrame(rows, columns=SPECTRUM_TABLE)


def map_table(maps: pd.DataFrame, num_classes: int = 8) -> pd.DataFrame:
    """One row per net of the ratio map: points, those in the basin (loss below ln C), the median and largest
    |lambda_min/lambda_max| there and everywhere, and the ratio at w0."""
    chance = math.log(num_classes)
    rows = []
    for model, d in maps.groupby("model", sort=False):
        basin = d[d.loss < chance]
        centre = d[(d.alpha == 0) & (d.beta == 0)]
        rows.append({"model": model, "points": len(d), "basin_points": len(basin),
                     "median_ratio_basin": float(basin.ratio.median()) if len(basin) else math.nan,
                     "max_ratio_basin": float(basin.ratio.max()) if len(basin) else math.nan,
                     "median_ratio_all": float(d.ratio.median()), "ratio_w0": float(centre.ratio.iloc[0])
                     if len(centre) else math.nan, "matvecs": int(d.matvecs.sum()), "seconds": float(d.seconds.sum())})
    return pd.DataFrame(rows)


def paired_sets(spec: pd.DataFrame, res: str, plain: str, quantity: str) -> tuple[float, float, int, float, str]:
    """A quantity measured per image set (the top eigenvalue, or the trace), paired by set: (mean for `res`, mean
    for `plain`, sets, share of sets agreeing, `readings.paired`'s verdict: "a" when `res`'s is the larger)."""
    index = 1 if quantity == "eigenvalue" else 0
    rows = spec[(spec.quantity == quantity) & (spec["index"] == index)]
    a, b = (rows[rows.model == m].set_index("images").value for m in (res, plain))
    sets = a.index.intersection(b.index)
    _, _, agree, who = paired(a[sets].to_numpy(), b[sets].to_numpy())
    return float(a[sets].mean()), float(b[sets].mean()), len(sets), agree, who


def _compare(spec: pd.DataFrame, res: str, plain: str, quantity: str, what: str) -> str:
    """A sentence on a quantity measured per image set, paired by set."""
    mean_a, mean_b, sets, agree, who = paired_sets(spec, res, plain, quantity)
    nums = f"{mean_a:.4g} for {res} against {mean_b:.4g} for {plain}, over {sets} image set(s)"
    if who == "one seed":
        return f"{what}: {nums}; one image set, so no spread to weigh the difference against."
    if who == "none":
        return f"{what}: no consistent difference ({nums})."
    larger, smaller = (res, plain) if who == "a" else (plain, res)
    return (f"{what}: **{larger}'s is the larger** ({nums}; {agree:.0%} of the sets agree): {smaller}'s minimum is "
            "the flatter by this measure.")


def describe_curvature(spec: pd.DataFrame, maps: pd.DataFrame | None = None, num_classes: int = 8,
                       min_tol: float = 1e-2, map_tol: float = 1e-2) -> str:
    """Per net the full-Hessian numbers at w0, then per twin pair what differs beyond the spread or tolerance."""
    t = spectrum_table(spec)
    lines = ["Full Hessian of the mean cross-entropy at the trained weights (every parameter; BN on its running "
             "statistics):"] if len(t) else []
    for _, r in t.iterrows():
        sets = (f"λmax {r.lambda_max_mean:.4g} ± {r.lambda_max_std:.3g} and trace {r.trace_mean:.4g} ± "
                f"{r.trace_std:.3g} over {r.sets} image sets; on set 0: " if r.sets > 1 else "")
        lines.append(f"- {r.model}: loss {r.loss:.3g} ({r.accuracy:.1%}); {sets}λmax {r.lambda_max:.4g}, top "
                     f"{len(r.top_k)}: {', '.join(f'{v:.3g}' for v in r.top_k)}; λmin {r.lambda_min:.3g}; "
                     f"|λmin/λmax| {r.ratio:.3f}; trace {r.trace:.4g} ± {r.trace_se:.2g} (Hutchinson).")
    m = map_table(maps, num_classes).set_index("model") if maps is not None and len(maps) else None
    if m is not None:
        lines.append(f"\nLi et al.'s map (|λmin/λmax| of the full Hessian on the plane of direction seed "
                     f"{int(maps.seed.iloc[0])}, {int(m.points.iloc[0])} points; inside the basin = loss below ln "
                     f"{num_classes}):")
        for model, r in m.iterrows():
            lines.append(f"- {model}: median {r.median_ratio_basin:.3f} (largest {r.max_ratio_basin:.3f}) over its "
                         f"{int(r.basin_points)} basin points; median {r.median_ratio_all:.3f} over all.")
    resolution = 2 * min_tol  # lambda_min from a solve to relative tolerance tol: the ratio is good to ~tol/2 each
    for res, plain in twin_pairs(list(t.model)):
        a, b = t.set_index("model").loc[res], t.set_index("model").loc[plain]
        lines.append(f"\n**{res} vs {plain}:**")
        lines.append("- " + _compare(spec, res, plain, "eigenvalue", "Top eigenvalue (sharpness)"))
        lines.append("- " + _compare(spec, res, plain, "trace", "Trace (total curvature)"))
        diff = a.ratio - b.ratio
        lines.append("- |λmin/λmax| at w₀: " + (f"{a.ratio:.3f} against {b.ratio:.3f}, within the eigensolver's "
                     f"resolution ({resolution:.2f}): no difference to report." if abs(diff) <= resolution else
                     f"{a.ratio:.3f} against {b.ratio:.3f}: **{res if diff > 0 else plain} has the stronger negative "
                     "curvature** at its minimum."))
        if m is not None and res in m.index and plain in m.index:
            ra, rb = m.loc[res].median_ratio_basin, m.loc[plain].median_ratio_basin
            tol = 2 * map_tol
            if not (math.isfinite(ra) and math.isfinite(rb)):
                lines.append("- Map: a basin without map points; no comparison.")
            elif abs(ra - rb) <= tol:
                lines.append(f"- Map: median basin ratio {ra:.3f} against {rb:.3f}, within the solver's resolution "
                             f"({tol:.2f}): as convex as each other by the full Hessian on this plane.")
            else:
                more = plain if rb > ra else res
                planes = maps.groupby("model").seed.nunique().loc[[res, plain]].min()
                if planes < 2:  # one plane: no spread to hold a difference against, so no verdict
                    lines.append(f"- Map: median basin ratio {ra:.3f} against {rb:.3f} (resolution {tol:.2f}): larger "
                                 f"for {more} on this plane, but one plane of one direction seed has no spread to "
                                 "hold the difference against: no verdict (Li et al.'s §6 reads one plane too).")
                else:
                    lines.append(f"- Map: median basin ratio {ra:.3f} against {rb:.3f} over {planes} planes: "
                                 f"**{more}'s basin has more negative curvature**.")
    return "\n".join(lines)


def density_summary(dens: pd.DataFrame) -> pd.DataFrame:
    """Per net: the share of the spectral density's mass above 1 % of the largest eigenvalue (the outliers) and
    below zero (negative curvature), from the smoothed density."""
    rows = []
    for model, d in dens.groupby("model", sort=False):
        x, p = d.eigenvalue.to_numpy(), d.density.to_numpy()
        total = np.trapezoid(p, x)
        rows.append({"model": model, "mass_negative": float(np.trapezoid(np.where(x < 0, p, 0), x) / total),
                     "mass_outliers": float(np.trapezoid(np.where(x > 0.01 * x.max(), p, 0), x) / total)})
    return pd.DataFrame(rows)
