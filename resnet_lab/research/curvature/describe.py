"""The curvature reading in words: each twin's full-Hessian numbers at the largest number of images measured, how
far they still move with n, and differences only where a paired test over disjoint image sets finds them at the two
largest n (`scale.verdict`), with the controls beside them (one image left out, the nets' difference in fit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...models.resnet import twin_pairs
from . import scale

SPECTRUM_TABLE = ["model", "n", "sets", "loss", "accuracy", "lambda_max_mean", "lambda_max_std", "trace_mean",
                  "trace_std", "lambda_min_mean", "lambda_min_std", "ratio_mean", "ratio_std", "worst_share",
                  "top_k", "matvecs", "seconds"]
WORDS = {"lambda_max": "top eigenvalue λmax (sharpness)", "trace": "trace (total curvature)",
         "ratio": "|λmin/λmax| (negative curvature)"}


def spectrum_table(spec: pd.DataFrame) -> pd.DataFrame:
    """One row per net and size n: means and standard deviations over the image sets, set 0's top-k."""
    rows = []
    for (model, n), d in spec.groupby(["model", "n"], sort=False):
        def stat(q: str, i: int = 0, how: str = "mean", d: pd.DataFrame = d) -> float:
            v = d[(d.quantity == q) & (d["index"] == i)].value
            return float(getattr(v, how)(**({"ddof": 1} if how == "std" else {}))) if len(v) > (how == "std") \
                else math.nan

        first = d[(d.images == "set0") & (d.quantity == "eigenvalue")].sort_values("index").value.tolist()
        rows.append({"model": model, "n": int(n), "sets": d.images.nunique(), "loss": stat("loss"),
                     "accuracy": stat("accuracy"), "lambda_max_mean": stat("eigenvalue", 1),
                     "lambda_max_std": stat("eigenvalue", 1, "std"), "trace_mean": stat("trace"),
                     "trace_std": stat("trace", 0, "std"), "lambda_min_mean": stat("lambda_min"),
                     "lambda_min_std": stat("lambda_min", 0, "std"), "ratio_mean": stat("ratio"),
                     "ratio_std": stat("ratio", 0, "std"), "worst_share": stat("worst_share"), "top_k": first,
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


def _moves(spec: pd.DataFrame, model: str, quantity: str) -> str:
    """"settled" or "still moving", with the numbers behind it."""
    st = scale.settling(spec, quantity, model)
    if not st["from_n"]:
        return ("one size measured" if len(scale.sizes(spec, quantity, (model,))) < 2
                else "no size two doublings below to judge its change by")
    said = f"{st['from_value']:.3g} at n = {st['from_n']} → {st['value']:.3g} at {st['n']}"
    if not math.isfinite(st["spread"]):  # one image set at the largest n: no spread to hold the change against
        return f"{said}; one set, no spread to judge it by"
    said += f", spread {st['spread']:.2g}"
    return f"settled ({said})" if st["settled"] else f"still moving ({said})"


def _pm(std: float) -> str:
    """" ± 3.3", or nothing for one image set (its std is NaN)."""
    return f" ± {std:.2g}" if math.isfinite(std) else ""


def _span(v: pd.Series) -> str:
    """"12 %" or "12-85 %" over the nets."""
    lo, hi = f"{v.min():.0%}", f"{v.max():.0%}"
    return lo if lo == hi else f"{lo[:-1]}-{hi}"


def _at_smaller(t: pd.DataFrame, model: str) -> str:
    """The trace and ratio at the largest n they were measured at, for a net measured beyond it by λmax alone."""
    d = t[(t.model == model) & t.trace_mean.notna()]
    if not len(d):
        return ""
    r = d.iloc[-1]
    return (f"at n = {int(r.n)} (the largest with them): trace {r.trace_mean:.4g} ± {r.trace_std:.2g}, |λmin/λmax| "
            f"{r.ratio_mean:.3f}")


def _test_words(t: dict, quantity: str) -> str:
    if t["larger"] == "too few sets":
        return f"n = {t['n']}: one image set, no test"
    nums = f"n = {t['n']}: plain/ResNet {t['ratio']:.2f}x, paired t = {t['t']:.2f} on {t['df']} df, p = {t['p']:.2g}"
    return nums + ("" if t["larger"] == "none" else f" ({t['larger']}'s larger)")


def pair_lines(spec: pd.DataFrame, res: str, plain: str) -> list[str]:
    """The reading of one twin pair: per quantity the paired tests at the two largest n and what holds; the
    leave-one-out and fit controls."""
    lines = [f"\n**{res} vs {plain}:**"]
    found = {}
    for q, words in WORDS.items():
        v = found[q] = scale.verdict(spec, res, plain, q)
        tests = "; ".join(_test_words(t, q) for t in v["tests"])
        if v["holds"]:
            flatter = plain if v["holds"] == res else res
            lines.append(f"- {words}: **{v['holds']}'s is the larger at both of the largest n** ({tests}): "
                         f"{flatter}'s minimum is the flatter by this measure.")
        else:
            lines.append(f"- {words}: no difference that holds at both of the largest n ({tests}).")
    held = scale.held_quantity(found)
    q = held or "lambda_max"
    fit = scale.fit_control(spec, res, plain, q)
    if math.isfinite(fit["matched"]):
        name = "λmax" if q == "lambda_max" else "the trace"
        lines.append(f"- Control for fit: a plane through each net's image sets (log {name} against log training loss "
                     f"and log n; loss slope "
                     f"{fit['slope_res']:.2f} for {res}, {fit['slope_plain']:.2f} for {plain}, "
                     f"{fit['points']} sets each) gives plain/ResNet {fit['matched']:.2f}x at one matched loss "
                     f"({fit['loss']:.2g}), against {fit['measured']:.2f}x measured at the largest n (training loss "
                     f"{fit['loss_res']:.2g} for {res}, {fit['loss_plain']:.2g} for {plain}): "
                     + (("the difference in fit explains most of the gap." if scale.fit_explains(fit)
                         else "the difference in fit explains little of it.")
                        if held else "no difference holds, so there is no gap for the fit to explain."))
    return lines


def describe_curvature(spec: pd.DataFrame, maps: pd.DataFrame | None = None, num_classes: int = 8,
                       min_tol: float = 1e-2, map_tol: float = 1e-2) -> str:
    """Per net the full-Hessian numbers at the largest n and how far they still move with n, then per twin pair
    what a paired test over the image sets finds at the two largest n, then the map."""
    lines = []
    if len(spec):
        t = spectrum_table(spec)
        lines.append("Full Hessian of the mean cross-entropy at the trained weights (every parameter; BN on its "
                     "running statistics), on disjoint sets of n images; each net's numbers at the largest n it was "
                     "measured at, mean ± std over the sets:")
        for _, r in t[t.n == t.groupby("model").n.transform("max")].iterrows():
            parts = [f"n = {r.n}: loss {r.loss:.3g} ({r.accuracy:.1%})",
                     f"λmax {r.lambda_max_mean:.4g}{_pm(r.lambda_max_std)} ({_moves(spec, r.model, 'lambda_max')})"]
            if math.isfinite(r.trace_mean):
                parts.append(f"trace {r.trace_mean:.4g}{_pm(r.trace_std)} (Hutch++; "
                             f"{_moves(spec, r.model, 'trace')})")
            if math.isfinite(r.ratio_mean):
                parts.append(f"λmin {r.lambda_min_mean:.3g}; |λmin/λmax| {r.ratio_mean:.3f}{_pm(r.ratio_std)} "
                             f"({_moves(spec, r.model, 'ratio')})")
            else:
                parts.append(_at_smaller(t, r.model))
            lines.append(f"- {r.model}: " + "; ".join(p for p in parts if p) + ".")
        loo = scale.leave_one_out(spec)
        if len(loo):
            said = [f"{_span(d.change.abs())} at n = {int(n)} (that image carries {_span(d.worst_share)} of the "
                    "loss)" for n, d in loo.groupby("n") if n in (loo.n.min(), loo.n.max())]
            lines.append("- One image: leaving out set 0's worst-fitted image moves λmax by " + " and by ".join(said)
                         + ".")
        for res, plain in twin_pairs(list(t.model.unique())):
            lines += pair_lines(spec, res, plain)
    if maps is not None and len(maps):
        lines += map_lines(spec, maps, num_classes, map_tol)
    return "\n".join(lines)


def map_lines(spec: pd.DataFrame, maps: pd.DataFrame, num_classes: int, map_tol: float) -> list[str]:
    """The map per net, and whether its image count is one at which the spectrum's |λmin/λmax| has settled."""
    m = map_table(maps, num_classes)
    n_map = int(maps.n.iloc[0])
    lines = [f"\nLi et al.'s map (|λmin/λmax| of the full Hessian on the plane of direction seed "
             f"{int(maps.seed.iloc[0])}, {int(m.points.iloc[0])} points; inside the basin = loss below ln "
             f"{num_classes}):"]
    for _, r in m.iterrows():
        lines.append(f"- {r.model}: median {r.median_ratio_basin:.3f} (largest {r.max_ratio_basin:.3f}) over its "
                     f"{int(r.basin_points)} basin points; median {r.median_ratio_all:.3f} over all; at w₀ "
                     f"{r.ratio_w0:.3f}.")
    settled = {mod for mod in m.model if len(spec) and mod in set(spec.model)
               and scale.settling(spec, "ratio", mod)["settled"] and n_map >= max(scale.sizes(spec))}
    if len(settled) < len(m):
        lines.append(f"- Not read: each point's Hessian is taken on {n_map} images, fewer than the largest n at "
                     "which the spectrum's |λmin/λmax| at w₀ has settled (or it has not settled), so the map's "
                     "ratios move with the images more than they differ between twins.")
        return lines
    tol, t = 2 * map_tol, m.set_index("model")
    for res, plain in twin_pairs(list(t.index)):
        ra, rb = t.loc[res].median_ratio_basin, t.loc[plain].median_ratio_basin
        if not (math.isfinite(ra) and math.isfinite(rb)):
            lines.append(f"- Map, {res} vs {plain}: a basin without map points; no comparison.")
        elif abs(ra - rb) <= tol:
            lines.append(f"- Map, {res} vs {plain}: median basin ratio {ra:.3f} against {rb:.3f}, within the "
                         f"solver's resolution ({tol:.2f}): as convex as each other on this plane.")
        else:
            more = plain if rb > ra else res
            lines.append(f"- Map, {res} vs {plain}: median basin ratio {ra:.3f} against {rb:.3f} (resolution "
                         f"{tol:.2f}): larger for {more} on this plane, but one plane of one direction seed has no "
                         "spread to hold the difference against: no verdict (Li et al.'s §6 reads one plane too).")
    return lines


def density_summary(dens: pd.DataFrame) -> pd.DataFrame:
    """Per net: the images the density was taken on, and the share of its mass above 1 % of the largest
    eigenvalue (the outliers that carry λmax and most of the trace, against the bulk near zero)."""
    rows = []
    for model, d in dens.groupby("model", sort=False):
        x, p = d.eigenvalue.to_numpy(), d.density.to_numpy()
        rows.append({"model": model, "n": int(d.n.iloc[0]),
                     "mass_outliers": float(np.trapezoid(np.where(x > 0.01 * x.max(), p, 0), x) / np.trapezoid(p, x))})
    return pd.DataFrame(rows)
