"""Each study at a glance: two or three sentences computed from the same numbers as its full reading.

The Research tab opens each study on its shipped figure and one of these; the full reading (`describe_*`) is a
click away. Every clause follows a measured value and the same thresholds the full reading uses, so a run that
does not show the effect says so here too.
"""

from __future__ import annotations

import math

import pandas as pd

from ..resnet import REGISTRY, twin_pairs
from .degradation.describe import final_metrics
from .gradflow.describe import _direction
from .landscape import readings as LR
from .landscape.describe import _radius_verdict
from .lesion.describe import NEAR_CHANCE, k_curve


def _pairs(models: list[str]) -> list[tuple[str, str]]:
    """(residual, plain) twin pairs among `models` (`twin_pairs`), deepest first."""
    return sorted(twin_pairs(models), key=lambda p: -REGISTRY[p[0]].depth)


def degradation(df: pd.DataFrame, num_classes: int = 8) -> str:
    """The deepest plain net against its ResNet twin and against the shallowest plain net, by final training loss
    (worse/better beyond 5 %, as `describe_degradation` reads it)."""
    final = final_metrics(df).set_index("arch")
    steps = int(df.step.max())
    pairs = _pairs(list(final.index))
    if not pairs:
        return "No twin pair in this run."
    res, plain = pairs[0]
    p, r = final.loc[plain], final.loc[res]
    chance = math.log(num_classes)
    stuck = " (chance level)" if abs(p.train_loss_smooth - chance) < 0.03 else ""
    text = (f"After {steps} steps, {plain} ends at training loss {p.train_loss_smooth:.2f}{stuck} and "
            f"{p.val_acc:.0%} held-out accuracy; its twin {res}, the same net with shortcuts, at "
            f"{r.train_loss_smooth:.2f} and {r.val_acc:.0%}.")
    shallow = min((a for a in final.index if not REGISTRY[a].residual), key=lambda a: REGISTRY[a].depth)
    s = final.loc[shallow]
    deeper_worse = shallow != plain and p.train_loss_smooth > 1.05 * s.train_loss_smooth
    fixed = r.train_loss_smooth < 0.95 * p.train_loss_smooth
    if deeper_worse and fixed:
        text += (f" The deeper plain net trains worse than {shallow} ({s.train_loss_smooth:.2f}) while the same depth "
                 "with shortcuts trains: degradation, as in He et al. 2015 (their Fig. 1).")
    elif deeper_worse:
        text += f" The deeper plain net trains worse than {shallow}, but the shortcuts do not close the gap here."
    else:
        text += " This run does not show degradation: the deeper plain net trains as well as the shallower one."
    return text


def gradients(summary: pd.DataFrame) -> str:
    """The deepest pair's first/last conv gradient ratio at initialization, plain against residual."""
    plain = summary[summary.variant == "plain"].set_index("arch")
    res = summary[summary.variant == "residual"].set_index("arch")
    deepest = max(res.index, key=lambda a: REGISTRY[a].depth)
    r, d = res.loc[deepest], REGISTRY[deepest].depth
    text = f"At initialization, {deepest}'s weight gradient {_direction(r.log10_ratio_mean)}"
    if deepest not in plain.index:  # the plain twin's rows carry its ResNet's name, variant "plain"
        return text + "."
    p = plain.loc[deepest]
    gap = p.log10_ratio_mean - r.log10_ratio_mean
    text = (f"At initialization, the {d}-layer plain net's weight gradient {_direction(p.log10_ratio_mean)}; its "
            f"ResNet twin's {_direction(r.log10_ratio_mean)} (means over {int(r.seeds)} seeds).")
    if abs(gap) < 0.3:
        return text + " Here the shortcuts make no difference to how the gradient spreads over the layers."
    flatter = "ResNet's" if abs(r.log10_ratio_mean) < abs(p.log10_ratio_mean) else "plain net's"
    return text + (f" The {flatter} first and last layers get gradients 10^{abs(gap):.1f} times closer in size, so "
                   "its layers learn at more similar rates.")


def landscape(df: pd.DataFrame) -> str:
    """How many twin comparisons of sharpness survive every control, and what they say."""
    pairs = LR.pair_sharpness(LR.rises(df))
    seeds = int(df.seed.nunique())
    survive, total, sharper = [], 0, set()
    for (res, plain, radius), d in pairs.groupby(["residual", "plain", "radius"], sort=False):
        total += 1
        kind, who = _radius_verdict(d)
        if kind == "survives":
            survive.append(f"{res if who == 'residual' else plain} is the sharper at α = {radius:g}")
            sharper.add(who)
    controls = [c for c in LR.controls_in(df) if c != "none"]
    text = (f"Of {total} comparisons of sharpness between trained twins (pairs x radii, {seeds} direction seeds), "
            f"{len(survive)} survive{'s' if len(survive) == 1 else ''} every control "
            f"({', '.join(controls) or 'none measured'})" + (": " + "; ".join(survive) + "." if survive else "."))
    if not survive:
        text += " Neither the ResNets nor the plain nets sit in consistently flatter minima here."
    elif sharper == {"plain"}:
        text += " Where a difference survives, the ResNet is the flatter, as Li et al. 2018 suggest."
    else:
        text += (" Flatness goes both ways with radius and depth: no rule that ResNets sit in flatter minima "
                 "survives here (Li et al. 2018 show one 2-D slice per net, without these controls).")
    return text


def curvature(spec: pd.DataFrame, resolution: float = 0.02) -> str:
    """Top eigenvalue and trace of each twin pair's Hessian: who is the sharper where every image set agrees; and
    how convex the minima are, against the eigensolver's resolution (as `describe_curvature` reads them)."""
    from .curvature.describe import paired_sets, spectrum_table

    out = []
    for res, plain in _pairs(list(dict.fromkeys(spec.model))):
        said, larger = [], set()
        for quantity, what in (("eigenvalue", "top eigenvalue"), ("trace", "trace")):
            mean_a, mean_b, _, _, who = paired_sets(spec, res, plain, quantity)
            if who in ("a", "b"):
                said.append(f"{what} {mean_a:.0f} against {mean_b:.0f}")
                larger.add(res if who == "a" else plain)
        if len(larger) == 1:
            flatter = plain if larger == {res} else res
            out.append(f"{flatter} sits in the flatter minimum by the full Hessian ({res} vs {plain}: "
                       f"{'; '.join(said)}, every image set agreeing).")
        else:
            out.append(f"{res} and {plain}: no consistent difference in sharpness over the image sets.")
    ratios = spectrum_table(spec).ratio
    out.append(f"Every minimum is close to convex: |λmin/λmax| at most {ratios.max():.3f} "
               + ("(within the solver's resolution)." if ratios.max() <= 2 * resolution else
                  f"(against the solver's resolution of {resolution:.2f})."))
    return " ".join(out)


def lesion(df: pd.DataFrame) -> str:
    """The deepest learned pair: what deleting one block costs each net, and how many deletions send it to chance."""
    pairs = _pairs(list(dict.fromkeys(df.model)))
    if not pairs:
        return "No twin pair in this study."
    out, survives = [], {}
    for model in pairs[0]:
        d = df[df.model == model]
        curve = k_curve(d)
        intact = float(curve[curve.k == 0]["mean"].iloc[0])
        chance = float(d.chance.iloc[0])
        single = d[(d.kind == "single") & d.removable]
        cost = intact - single.accuracy
        to_chance = int((single.accuracy <= chance + NEAR_CHANCE).sum())
        survives[model] = to_chance == 0
        out.append(f"deleting one block of {model} costs a median {100 * cost.median():.1f} points (at most "
                   f"{100 * cost.max():.1f}; {to_chance} of {len(single)} deletions leave it at chance)")
    res, plain = pairs[0]
    text = "Trained on Shapes, " + "; ".join(out) + "."
    if survives[res] and not survives[plain]:
        text += (" The ResNet survives losing any one block, like an ensemble of shallower paths (Veit et al. "
                 "2016); its plain twin does not.")
    return text
