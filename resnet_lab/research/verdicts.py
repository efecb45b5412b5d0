"""Each study at a glance, in two layers computed from the same numbers as its full reading.

`<study>_plain`: one or two sentences a first-year student follows (no Hessians, no controls by name); `<study>`:
the referee's version, every number and threshold named. The Research tab opens each study on its shipped figure
and the plain sentences, the referee's a click away, the full reading (`describe_*`) another. Every clause follows
a measured value and the same thresholds the full reading uses, so a run that does not show the effect says so in
both layers.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..models.resnet import REGISTRY, twin_pairs
from .curvature import scale as CS
from .degradation.describe import final_metrics
from .gradflow.describe import _direction
from .landscape import readings as LR
from .landscape.describe import _radius_verdict
from .lesion.describe import NEAR_CHANCE, k_curve


def _pairs(models: list[str]) -> list[tuple[str, str]]:
    """(residual, plain) twin pairs among `models` (`twin_pairs`), deepest first."""
    return sorted(twin_pairs(models), key=lambda p: -REGISTRY[p[0]].depth)


def _degradation_numbers(df: pd.DataFrame, num_classes: int) -> dict[str, Any] | None:
    """The deepest pair's and the shallowest plain net's final metrics, and what they say (worse/better beyond 5 %,
    as `describe_degradation` reads them); None without a twin pair."""
    final = final_metrics(df).set_index("arch")
    pairs = _pairs(list(final.index))
    if not pairs:
        return None
    res, plain = pairs[0]
    p, r = final.loc[plain], final.loc[res]
    shallow = min((a for a in final.index if not REGISTRY[a].residual), key=lambda a: REGISTRY[a].depth)
    s = final.loc[shallow]
    return {"res": res, "plain": plain, "shallow": shallow, "p": p, "r": r, "s": s, "steps": int(df.step.max()),
            "chance": math.log(num_classes), "stuck": abs(p.train_loss_smooth - math.log(num_classes)) < 0.03,
            "deeper_worse": shallow != plain and p.train_loss_smooth > 1.05 * s.train_loss_smooth,
            "fixed": r.train_loss_smooth < 0.95 * p.train_loss_smooth}


def degradation(df: pd.DataFrame, num_classes: int = 8) -> str:
    """The deepest plain net against its ResNet twin and against the shallowest plain net, by final training loss
    (worse/better beyond 5 %, as `describe_degradation` reads it)."""
    n = _degradation_numbers(df, num_classes)
    if n is None:
        return "No twin pair in this run."
    res, plain, shallow, p, r, s = (n[k] for k in ("res", "plain", "shallow", "p", "r", "s"))
    steps, deeper_worse, fixed = n["steps"], n["deeper_worse"], n["fixed"]
    stuck = " (chance level)" if n["stuck"] else ""
    text = (f"After {steps} steps, {plain} ends at training loss {p.train_loss_smooth:.2f}{stuck} and "
            f"{p.val_acc:.0%} held-out accuracy; its twin {res}, the same net with shortcuts, at "
            f"{r.train_loss_smooth:.2f} and {r.val_acc:.0%}.")
    if deeper_worse and fixed:
        text += (f" The deeper plain net trains worse than {shallow} ({s.train_loss_smooth:.2f}) while the same depth "
                 "with shortcuts trains: degradation, as in He et al. 2015 (their Fig. 1).")
    elif deeper_worse:
        text += f" The deeper plain net trains worse than {shallow}, but the shortcuts do not close the gap here."
    else:
        text += " This run does not show degradation: the deeper plain net trains as well as the shallower one."
    return text


def degradation_plain(df: pd.DataFrame, num_classes: int = 8) -> str:
    """`degradation` for a student: does adding layers without shortcuts make a net worse at its own training
    data, and do the shortcuts undo it."""
    n = _degradation_numbers(df, num_classes)
    if n is None:
        return "This run has no net with and without shortcuts to compare."
    res, plain, shallow, p, r, s = (n[k] for k in ("res", "plain", "shallow", "p", "r", "s"))
    guess = (f", no better than guessing among {num_classes} classes (ln {num_classes} = {n['chance']:.2f})"
             if n["stuck"] else "")
    shallower = f" the shallower {shallow} gets down to {s.train_loss_smooth:.2f} and" if shallow != plain else ""
    text = (f"The {REGISTRY[plain].depth}-layer net without shortcuts ({plain}) ends at training loss "
            f"{p.train_loss_smooth:.2f}{guess}, while{shallower} {res}, the same {REGISTRY[res].depth} layers with "
            f"shortcuts, gets to {r.train_loss_smooth:.2f}.")
    if n["deeper_worse"] and n["fixed"]:
        return text + (" More layers made the plain net worse even at fitting its own training images (not "
                       "overfitting: it cannot find a solution the shallower net proves exists), and the shortcuts "
                       "fix that.")
    if n["deeper_worse"]:
        return text + " More layers made the plain net worse, and here the shortcuts do not close the gap."
    return text + " In this run more layers did not make the plain net worse: no degradation to see."


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


def _times(log10: float) -> str:
    """10^log10 as people say it: 38, 6,300, 15 million."""
    v = 10 ** abs(log10)
    if v < 10_000:
        return f"{v:,.0f}"
    if v < 1e9:
        return f"{v / 1e6:,.1f} million" if v >= 1e6 else f"{v:,.0f}"
    return f"10^{abs(log10):.0f}"


def _ends(log10: float) -> str:
    """What a first/last gradient ratio says, in a student's words (same thresholds as `_direction`)."""
    if math.isnan(log10):
        return "a layer gets no gradient at all"
    if log10 > 0.3:
        return f"the first layer's gradient is {_times(log10)} times the last layer's"
    if log10 < -0.3:
        return f"the first layer's gradient is {_times(log10)} times smaller than the last layer's"
    return "the first and last layers get gradients of about the same size"


def gradients_plain(summary: pd.DataFrame) -> str:
    """`gradients` for a student: how unevenly the deepest pair's layers get gradient at the start of training,
    and whether that is the textbook "vanishing" (the sentence follows the measured sign, not the textbook)."""
    plain = summary[summary.variant == "plain"].set_index("arch")
    res = summary[summary.variant == "residual"].set_index("arch")
    deepest = max(res.index, key=lambda a: REGISTRY[a].depth)
    r, d = res.loc[deepest], REGISTRY[deepest].depth
    if deepest not in plain.index:
        return f"At the start of training, in {deepest} {_ends(r.log10_ratio_mean)}."
    p = plain.loc[deepest]
    pr, rr = p.log10_ratio_mean, r.log10_ratio_mean
    text = (f"At the start of training, in the {d}-layer net without shortcuts {_ends(pr)}; with shortcuts "
            f"({deepest}) {_ends(rr)}.")
    if math.isnan(pr) or math.isnan(rr) or abs(pr - rr) < 0.3:
        return text + " Here the shortcuts make no real difference to how the gradient is spread over the layers."
    if abs(rr) < abs(pr) and pr > 0.3:
        return text + (" So the gradient does not vanish here, it grows toward the input: the plain net's "
                       "trouble is that its layers get wildly different amounts of it, so no single learning rate "
                       "suits them all; the shortcuts even that out.")
    if abs(rr) < abs(pr):
        return text + (" The plain net's gradient fades on its way back to the first layers; the shortcuts carry "
                       "it back, so every layer learns.")
    return text + " Here the ResNet's layers get the more uneven gradients."


def _surviving(df: pd.DataFrame) -> tuple[int, list[tuple[str, float]], set[str]]:
    """(comparisons of sharpness between trained twins, pairs x radii; those that survive every control as
    (the sharper net, radius); which kinds, "residual" or "plain", are the sharper in those)."""
    pairs = LR.pair_sharpness(LR.rises(df))
    total, survive, sharper = 0, [], set()
    for (res, plain, radius), d in pairs.groupby(["residual", "plain", "radius"], sort=False):
        total += 1
        kind, who = _radius_verdict(d)
        if kind == "survives":
            survive.append((res if who == "residual" else plain, float(radius)))
            sharper.add(who)
    return total, survive, sharper


def landscape(df: pd.DataFrame) -> str:
    """How many twin comparisons of sharpness survive every control, and what they say."""
    total, survive, sharper = _surviving(df)
    seeds = int(df.seed.nunique())
    controls = [c for c in LR.controls_in(df) if c != "none"]
    said = [f"{net} is the sharper at α = {radius:g}" for net, radius in survive]
    text = (f"Of {total} comparisons of sharpness between trained twins (pairs x radii, {seeds} direction seeds), "
            f"{len(survive)} survive{'s' if len(survive) == 1 else ''} every control "
            f"({', '.join(controls) or 'none measured'})" + (": " + "; ".join(said) + "." if said else "."))
    if not survive:
        text += " Neither the ResNets nor the plain nets sit in consistently flatter minima here."
    elif sharper == {"plain"}:
        text += " Where a difference survives, the ResNet is the flatter, as Li et al. 2018 suggest."
    else:
        text += (" Flatness goes both ways with radius and depth: no rule that ResNets sit in flatter minima "
                 "survives here (Li et al. 2018 show one 2-D slice per net, without these controls).")
    return text


def landscape_plain(df: pd.DataFrame) -> str:
    """`landscape` for a student: is a ResNet's minimum a wider, flatter valley, once the measurement is checked."""
    total, survive, sharper = _surviving(df)
    seeds = int(df.seed.nunique())
    text = (f"Does a ResNet sit in a wider, flatter valley of the loss? We stepped away from each trained net in "
            f"{seeds} random directions at several distances and checked each difference against two known "
            f"artefacts: of {total} comparisons, ")
    if not survive:
        return text + "none shows a clear difference, so here neither kind of net has the flatter valley."
    said = " and ".join(f"{net} at distance {radius:g}" for net, radius in survive)
    text += f"{len(survive)} show{'s' if len(survive) == 1 else ''} a clear difference (sharper: {said})"
    if sharper == {"plain"}:
        return text + ", and every one says the ResNet's valley is the flatter."
    if sharper == {"residual"}:
        return text + ", and every one says the plain net's valley is the flatter: the opposite of the usual story."
    return text + ", and they point opposite ways: no rule that ResNets sit in flatter valleys."


def _curvature_pairs(spec: pd.DataFrame) -> list[dict[str, Any]]:
    """Per twin pair, deepest first: `scale.verdict` for the top eigenvalue and the trace, and the one net whose
    are larger where each holds at the two largest n (None when neither holds or they disagree)."""
    out = []
    for res, plain in _pairs(list(dict.fromkeys(spec.model))):
        pair: dict[str, Any] = {"res": res, "plain": plain}
        for q in ("lambda_max", "trace"):
            pair[q] = CS.verdict(spec, res, plain, q)
        held = {pair[q]["holds"] for q in ("lambda_max", "trace")} - {None}
        pair["sharper"] = next(iter(held)) if len(held) == 1 else None
        pair["q"] = CS.held_quantity(pair) if pair["sharper"] else None  # the measure quoted
        fit = pair["fit"] = CS.fit_control(spec, res, plain, pair["q"] or "lambda_max")
        # the fit explains the gap only where the sharper net is also the one that fits less closely
        pair["fit_explains"] = bool(pair["sharper"] and CS.fit_explains(fit)
                                    and fit["loss_res" if pair["sharper"] == res else "loss_plain"] > fit["loss"])
        out.append(pair)
    return out


def _largest_ratio(spec: pd.DataFrame) -> float:
    """The largest mean |λmin/λmax| of any net at the largest n it was measured at."""
    r = CS.by_size(spec, "ratio")
    return float(r.loc[r.groupby("model").n.idxmax(), "mean"].max())


def curvature(spec: pd.DataFrame, resolution: float = 0.02) -> str:
    """Top eigenvalue and trace of each twin pair's Hessian: who is the sharper where a paired test over disjoint
    image sets says so at the two largest n; and how convex the minima are, against the eigensolver's resolution
    (as `describe_curvature` reads them)."""
    out = []
    for pair in _curvature_pairs(spec):
        res, plain, sharper = pair["res"], pair["plain"], pair["sharper"]
        ns = [t["n"] for t in pair["lambda_max"]["tests"]]
        if sharper:
            said = [f"{what} {v['tests'][-1]['res']:.0f} against {v['tests'][-1]['plain']:.0f} (p = "
                    f"{', '.join(format(t['p'], '.2g') for t in v['tests'])})"
                    for q, what in (("lambda_max", "top eigenvalue"), ("trace", "trace")) if (v := pair[q])["holds"]]
            flatter = plain if sharper == res else res
            fit = pair["fit"]
            out.append(f"{flatter} sits in the flatter minimum by the full Hessian ({res} vs {plain} at n = "
                       f"{ns[-1]}: {'; '.join(said)}; paired t-tests over disjoint image sets, significant at n = "
                       f"{' and '.join(map(str, ns))})" + (
                           f", though {sharper} fits its training images less closely and, matched for training "
                           f"loss, the {'top eigenvalue' if pair['q'] == 'lambda_max' else 'trace'} ratio shrinks "
                           f"from {fit['measured']:.2f}x to {fit['matched']:.2f}x (the control for fit)."
                           if pair["fit_explains"] else "."))
        else:
            out.append(f"{res} and {plain}: no difference in sharpness that a paired test finds at both n = "
                       f"{' and '.join(map(str, ns))}.")
    worst = _largest_ratio(spec)
    out.append(f"Every minimum is close to convex: |λmin/λmax| at most {worst:.3f} "
               + ("(within the solver's resolution)." if worst <= 2 * resolution else
                  f"(against the solver's resolution of {resolution:.2f})."))
    return " ".join(out)


def curvature_plain(spec: pd.DataFrame, resolution: float = 0.02) -> str:
    """`curvature` for a student: which minimum is the flatter bowl where that holds on the most images measured,
    by how much (by λmax where that holds, else by the trace: the values written at the right of the convergence
    figure), and whether any curves down."""
    out = []
    for pair in _curvature_pairs(spec):
        res, plain, sharper = pair["res"], pair["plain"], pair["sharper"]
        q = pair["q"] or "lambda_max"  # the measure the verdict rests on
        first, last = pair[q]["tests"][0], pair[q]["tests"][-1]
        n, top_res, top_plain = last["n"], last["res"], last["plain"]
        depth = f"at {REGISTRY[res].depth} layers" if res in REGISTRY else f"{res} against {plain}"
        if sharper:
            flatter, (steep, gentle) = (plain, (top_res, top_plain)) if sharper == res else (res, (top_plain, top_res))
            how = (f"in its steepest direction the loss curves up {steep / gentle:.1f} times less sharply than "
                   f"{sharper}'s" if q == "lambda_max" else f"adding up how sharply the loss curves in every "
                   f"direction, it is {steep / gentle:.1f} times gentler than {sharper}'s")
            out.append(f"{depth}, measured on {n} training images, {flatter}'s minimum is the flatter bowl: {how} "
                       f"({gentle:.0f} against {steep:.0f}), and the same holds on {first['n']} images")
            if pair["fit_explains"]:
                out[-1] += (f", but {sharper} also fits its training images less closely, and that explains most "
                            "of the gap")
        else:
            out.append(f"{depth}, {res} and {plain} show no difference in sharpness that holds as the images grow "
                       f"({top_res:.0f} against {top_plain:.0f} on {n} images)")
    text = "; ".join(out)
    text = text[0].upper() + text[1:] + "."
    moving = [m for m in dict.fromkeys(spec.model) if not CS.settling(spec, "lambda_max", m)["settled"]]
    if moving and len(CS.sizes(spec)) > 1:
        st = CS.settling(spec, "lambda_max", moving[0])
        text += (f" The numbers themselves still shrink as more images are used ({moving[0]}: {st['from_value']:.0f} "
                 f"on {st['from_n']} images, {st['value']:.0f} on {st['n']}), so read the comparison, not the values.")
    worst = _largest_ratio(spec)
    if worst <= 2 * resolution:
        text += " Every minimum is a true bowl: no direction curves down by more than a measurement error."
    else:
        text += (f" Some directions curve down, by up to {worst:.0%} of the steepest upward curve: these minima are "
                 "saddles more than bowls.")
    return text


def _lesion_numbers(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per net of the deepest twin pair (ResNet first): what deleting one removable block costs (median, largest,
    in accuracy points) and how many of those deletions leave it within `NEAR_CHANCE` of chance."""
    pairs = _pairs(list(dict.fromkeys(df.model)))
    out: dict[str, dict[str, Any]] = {}
    for model in pairs[0] if pairs else ():
        d = df[df.model == model]
        curve = k_curve(d)
        intact = float(curve[curve.k == 0]["mean"].iloc[0])
        chance = float(d.chance.iloc[0])
        single = d[(d.kind == "single") & d.removable]
        cost = intact - single.accuracy
        out[model] = {"median": 100 * cost.median(), "max": 100 * cost.max(), "deletions": len(single),
                      "to_chance": int((single.accuracy <= chance + NEAR_CHANCE).sum())}
    return out


def lesion(df: pd.DataFrame) -> str:
    """The deepest learned pair: what deleting one block costs each net, and how many deletions send it to chance."""
    nets = _lesion_numbers(df)
    if not nets:
        return "No twin pair in this study."
    out = [f"deleting one block of {m} costs a median {n['median']:.1f} points (at most {n['max']:.1f}; "
           f"{n['to_chance']} of {n['deletions']} deletions leave it at chance)" for m, n in nets.items()]
    res, plain = nets
    text = "Trained on Shapes, " + "; ".join(out) + "."
    if nets[res]["to_chance"] == 0 and nets[plain]["to_chance"] > 0:
        text += (" The ResNet survives losing any one block, like an ensemble of shallower paths (Veit et al. "
                 "2016); its plain twin does not.")
    return text


def lesion_plain(df: pd.DataFrame) -> str:
    """`lesion` for a student: what taking one block out of a trained net does to it, with and without shortcuts."""
    nets = _lesion_numbers(df)
    if not nets:
        return "This study has no net with and without shortcuts to compare."
    (res, r), (plain, p) = nets.items()
    text = (f"Take one block out of the trained {res} and it typically loses {r['median']:.1f} points of accuracy"
            + (", never dropping to guessing" if r["to_chance"] == 0 else
               f", and {r['to_chance']} of {r['deletions']} such cuts leave it guessing")
            + f"; take one out of {plain}, the same net without shortcuts, and it typically loses {p['median']:.1f} "
            f"points, {p['to_chance']} of {p['deletions']} cuts leaving it guessing.")
    if r["to_chance"] == 0 and p["to_chance"] > 0:
        text += (" With shortcuts, the signal has many routes through the net, like a team of shallower nets, so "
                 "losing one block hardly matters; without them every block is a link in a single chain.")
    return text
