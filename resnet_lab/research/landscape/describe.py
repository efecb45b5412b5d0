"""The landscape's reading in words, computed from `readings`: only what survives the spread and the controls.

A difference between twins is stated when it is consistent over direction seeds, and as surviving only when every
measured control keeps it; otherwise the text says which control removes or reverses it, or that there is no
consistent difference. Convexity is read inside the basin, and "local minima" are counted only below chance loss.
Li et al. (2018) and their figures are named as theirs; the comparison with them follows our numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...models.resnet import REGISTRY, twin_pairs
from . import readings as R

SHALLOW_DEPTH = 20  # Li et al. Fig. 5: at this depth plain and residual nets both look smooth


def _pm(mean: float, std: float, fmt: str = ".3g", seeds: int = 1) -> str:
    return f"{mean:{fmt}}" if seeds < 2 or not math.isfinite(std) else f"{mean:{fmt}} ± {std:{fmt}}"


def _pct(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.0%}" if seeds < 2 or not math.isfinite(std) else f"{mean:.0%} ± {std:.0%}"


def _count(mean: float, seeds: int) -> str:
    """A count of grid points: whole for one seed, the mean per seed otherwise."""
    return f"{mean:.0f}" if seeds < 2 else f"{mean:.1f} per seed"


def _radius_verdict(p: pd.DataFrame) -> tuple[str, str]:
    """("survives" | "none" | "mixed" | "one seed", who) for one pair and radius over its controls."""
    whos = dict(zip(p.control, p.sharper))
    values = set(whos.values())
    if values == {"one seed"}:
        return "one seed", ""
    if len(values) == 1 and values != {"none"}:
        return "survives", next(iter(values))
    if values == {"none"}:
        return "none", ""
    return "mixed", whos.get("none", "none")


def _sharpness_sentences(pairs: pd.DataFrame, res: str, plain: str, controls: list[str]) -> list[str]:
    out = []
    p = pairs[(pairs.residual == res) & (pairs.plain == plain)]
    with_controls = [c for c in controls if c != "none"]
    for radius, d in p.groupby("radius", sort=True):
        kind, who = _radius_verdict(d)
        base = d[d.control == "none"].iloc[0]
        sharp, flat = (res, plain) if who == "residual" else (plain, res)
        nums = f"rise {base.rise_residual:.3g} for {res} against {base.rise_plain:.3g} for {plain}"
        if kind == "one seed":
            out.append(f"α = {radius:g}: {nums}, from one direction seed: no spread, so no verdict.")
        elif kind == "survives":
            why = f"under every control ({', '.join(with_controls)})" if with_controls else "without controls"
            out.append(f"α = {radius:g}: **{sharp} is the sharper** ({nums}), consistently over {int(base.seeds)} "
                       f"seeds and {why}: {flat} is the flatter here.")
        elif kind == "none":
            out.append(f"α = {radius:g}: no consistent difference ({nums}; difference {base['diff']:.2g} ± "
                       f"{base.se:.2g} over {int(base.seeds)} seeds).")
        else:
            def under(c: str, w: str, r: pd.Series) -> str:
                what = "no consistent difference" if w == "none" else f"{res if w == 'residual' else plain} the sharper"
                return f"{c} ({what}: {r.rise_residual:.3g} vs {r.rise_plain:.3g})"

            broken = [under(c, w, r) for c, w, (_, r) in zip(d.control, d.sharper, d.iterrows())
                      if c != "none" and w != who]
            if who == "none":
                out.append(f"α = {radius:g}: no consistent difference ({nums}); a difference only under "
                           + "; ".join(broken) + ", so no verdict.")
            else:
                out.append(f"α = {radius:g}: without controls {sharp} looks sharper ({nums}), but it does **not "
                           f"survive** the controls: " + "; ".join(broken) + ".")
    return out


def _convexity_sentence(c: pd.Series) -> str:
    res, plain, n = c.residual, c.plain, int(c.seeds)
    nums = (f"{c.share_residual:.0%} of {res}'s basin is non-convex against {c.share_plain:.0%} of {plain}'s "
            f"(mean over {n} direction seed{'s' if n > 1 else ''})")
    depth = REGISTRY[res].depth
    if c.less_convex == "one seed":
        return f"Convexity in the basin: {nums}; one seed, no verdict."
    if c.less_convex == "none":
        paper = (" Li et al. (2018, Fig. 5) see the plain net turn chaotic at this depth; here the difference is "
                 "within the spread over directions." if depth > SHALLOW_DEPTH else
                 " At 20 layers Li et al. (2018, Fig. 5) also see both surfaces smooth.")
        return f"Convexity in the basin: no consistent difference ({nums}).{paper}"
    more, less = (plain, res) if c.less_convex == "residual" else (res, plain)
    agrees = c.less_convex == "plain"
    paper = (" As in Li et al. (2018, Fig. 5)." if agrees and depth > SHALLOW_DEPTH else
             " Li et al. (2018, Fig. 5) find this only in deeper plain nets." if agrees else
             " This is the opposite of Li et al.'s (2018, Fig. 5) plain nets turning chaotic.")
    return f"Convexity in the basin: **{more}'s is consistently the more convex** ({nums}).{paper}"


def describe_landscape(df: pd.DataFrame, num_classes: int = R.SHAPES_CLASSES) -> str:
    """The reading of a landscape frame (see the module docstring), one line per net, then per twin pair."""
    chance_loss, chance_acc = math.log(num_classes), 1 / num_classes
    r = R.rises(df)
    sharp = R.sharpness_table(r)
    pairs = R.pair_sharpness(r)
    surf = R.surface_readings(df, num_classes)
    table = R.surface_table(surf).set_index("model") if len(surf) else pd.DataFrame()
    seeds, controls = int(df.seed.nunique()), R.controls_in(df)
    models = list(dict.fromkeys(df.model))
    none = sharp[sharp.control == "none"]
    lines = [f"Loss rise r filter-normalized units from each net's trained weights w₀ (both signs, along each "
             "seed's first direction), "
             f"over {seeds} direction seed{'s' if seeds > 1 else ''} (mean ± std); controls: "
             f"{', '.join(c for c in controls if c != 'none') or 'none measured'}. Chance: loss ln {num_classes} = "
             f"{chance_loss:.2f}, accuracy {chance_acc:.1%}."]
    off = set()
    for m in models:
        c = df[(df.model == m) & (df.alpha == 0) & (df.beta == 0) & (df.control == "none")].iloc[0]
        s = none[none.model == m]
        text = f"- {m}: loss {c.loss:.3g} (accuracy {c.accuracy:.1%}) at w₀; rises " + ", ".join(
            f"{_pm(x['mean'], x['std'], seeds=seeds)} at {x.radius:g}" for _, x in s.iterrows())
        if m in table.index:
            t = table.loc[m]
            k = int(t.seeds)
            text += (f"; non-convex: {_pct(t.nonconvex_basin_mean, t.nonconvex_basin_std, k)} of its basin (points "
                     f"below chance loss), {_pct(t.nonconvex_all_mean, t.nonconvex_all_std, k)} of the whole grid; "
                     f"{_count(t.minima_below_chance_mean, k)} local minima below chance and "
                     f"{_count(t.dips_above_chance_mean, k)} dips above it (on the plateau: not competing minima)")
        if c.accuracy < 2 * chance_acc or c.loss > 0.5 * chance_loss:
            off.add(m)
            text += (". It is not at a trained minimum (guessing scores loss "
                     f"{chance_loss:.3g}), so its landscape is not the papers' figure")
        lines.append(text + ".")
    for res, plain in twin_pairs(models):
        if {res, plain} & off:
            lines.append(f"\n{res} vs {plain}: not compared ({' and '.join(sorted({res, plain} & off))} did not "
                         "train to a minimum; a net on the plateau rises less because it starts high).")
            continue
        lines.append(f"\n**{res} vs {plain}**, sharpness:")
        lines += [f"- {s}" for s in _sharpness_sentences(pairs, res, plain, controls)]
        conv = R.pair_convexity(surf) if len(surf) else pd.DataFrame()
        row = conv[(conv.residual == res) & (conv.plain == plain)] if len(conv) else conv
        if len(row):
            lines.append("- " + _convexity_sentence(row.iloc[0]))
    plain_nets = sorted((m for m in models if m in REGISTRY and not REGISTRY[m].residual and m not in off
                         and m in table.index), key=lambda m: REGISTRY[m].depth)
    if len(plain_nets) >= 2:
        a, b = table.loc[plain_nets[0]], table.loc[plain_nets[-1]]
        sa = surf[surf.model == plain_nets[0]].nonconvex_basin.to_numpy()
        sb = surf[surf.model == plain_nets[-1]].nonconvex_basin.to_numpy()
        se = math.sqrt(np.var(sa, ddof=1) / len(sa) + np.var(sb, ddof=1) / len(sb)) if min(len(sa), len(sb)) > 1 \
            else math.nan
        diff = b.nonconvex_basin_mean - a.nonconvex_basin_mean
        word = ("more" if diff > 0 else "less") if math.isfinite(se) and abs(diff) > R.CONSISTENT_SE * se else None
        nums = (f"{b.nonconvex_basin_mean:.0%} of {plain_nets[-1]}'s basin is non-convex against "
                f"{a.nonconvex_basin_mean:.0%} of {plain_nets[0]}'s")
        verdict = (f"depth makes the basin **{word} non-convex**" if word else
                   "no verdict on depth from one direction seed" if not math.isfinite(se) else
                   "depth makes no consistent difference to the basin's convexity")
        lines.append(f"\nWithout shortcuts, {verdict}: {nums} (Li et al. 2018: plain nets grow chaotic with "
                     "depth).")
    return "\n".join(lines)
