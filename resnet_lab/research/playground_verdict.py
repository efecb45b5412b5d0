"""What a Playground run showed, in one or two sentences a first-year student follows, and the referee's detail.

The numbers are the last held-out accuracy of each net. Chance is 1/K for K classes (12.5 % on the 8 Shapes
classes); a held-out set of n images measures a net that only guesses at 1/K give or take one binomial standard
error, sqrt(p (1 - p) / n) with p = 1/K. So a net is said to be "at chance" only within `Z` standard errors of 1/K,
"above chance" only beyond them: on 256 images that is 12.5 % +- 4.1 points, so 13.7 % is chance and 44.9 % is
learning. Two nets that both learned are compared the same way (the standard error of a difference of two
proportions). A run that stopped before `MIN_STEPS` with neither net above chance is "too early to say": a net that
has not left chance yet may still leave it. A held-out set so small that even a perfect score is within `Z` standard
errors of chance (4 images of 2 classes) is said to be too small to judge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

Z = 2.0  # standard errors: within them, a net is at chance (about 95 % of chance-level nets stay within)
MIN_STEPS = 100  # fewer steps than this, with neither net above chance, is too early to say (Adam's ResNet-56
# leaves chance after ~100 steps at the defaults, SGD's after ~150-350: README, "Playground")


@dataclass(frozen=True)
class Verdict:
    headline: str  # one or two sentences
    detail: str  # the referee's detail (Markdown): chance, noise, each number, the comparison


def chance(classes: int, held_out: int) -> tuple[float, float]:
    """(1/K, one standard error of a chance-level accuracy measured on `held_out` images)."""
    if classes < 2 or held_out < 1:
        raise ValueError(f"a verdict needs at least 2 classes and 1 held-out image, not {classes} and {held_out}")
    p = 1 / classes
    return p, math.sqrt(p * (1 - p) / held_out)


def standing(accuracy: float, classes: int, held_out: int) -> str:
    """Where `accuracy` stands against chance: "above" or "below" it by more than `Z` standard errors, else "at"."""
    p, se = chance(classes, held_out)
    return "above" if accuracy > p + Z * se else "below" if accuracy < p - Z * se else "at"


def _steps(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}\u00a0%"  # a no-break space: "%" never starts a line


def verdict(plain: tuple[str, float], resnet: tuple[str, float], classes: int, held_out: int, steps_done: int,
            steps: int) -> Verdict:
    """The verdict on the plain net and its ResNet twin, each `(label, held-out accuracy as a fraction)`, after
    `steps_done` of `steps` steps, on `classes` classes with `held_out` held-out images."""
    (pn, pa), (rn, ra) = plain, resnet
    p, se = chance(classes, held_out)
    sp, sr = standing(pa, classes, held_out), standing(ra, classes, held_out)
    at = f"chance is {_pct(p)}"
    depth = rn.rsplit("-", 1)[-1]
    diff_se = math.sqrt(pa * (1 - pa) / held_out + ra * (1 - ra) / held_out)
    gap = ra - pa
    if p + Z * se >= 1:
        head = (f"Too few held-out images to judge: on {held_out} of them a net that only guesses ({_pct(p)}) can "
                f"score anything up to {_pct(min(1.0, p + Z * se))} by luck, so even a perfect score proves nothing "
                f"({pn} {_pct(pa)}, {rn} {_pct(ra)}). Add images: a fifth of each class is held out.")
    elif sp != "above" and sr != "above":
        if steps_done < MIN_STEPS:
            head = (f"Too early to say: after {_steps(steps_done)} neither net is above chance yet ({pn} "
                    f"{_pct(pa)}, {rn} {_pct(ra)}; {at}). Train a few hundred steps to see whether they part.")
        else:
            head = (f"Neither net learned in {steps_done} steps: {pn} {_pct(pa)} and {rn} {_pct(ra)} are both "
                    f"within noise of chance ({_pct(p)}). These settings train neither net; try another learning "
                    "rate, Adam, or more steps.")
    elif sr == "above" and sp != "above":
        stayed = "stayed at chance" if sp == "at" else "fell below chance"
        if steps_done < MIN_STEPS:
            # the two nets' gap within noise: one crossed the chance line, the other not, but that is no lead
            lead = ("the ResNet started learning first" if gap > Z * diff_se else
                    f"but the {100 * gap:.1f}-point gap between them is still within noise, so neither is ahead yet")
            head = (f"After only {_steps(steps_done)} {rn} has left chance ({_pct(ra)}) and {pn} has not "
                    f"({_pct(pa)}, {at}): {lead}; more steps show whether the plain net follows.")
        elif gap > Z * diff_se:
            head = (f"{pn} {stayed} ({_pct(pa)}, {at}) while {rn} reached {_pct(ra)}: in {steps_done} steps the "
                    f"shortcuts made the {depth}-layer net trainable.")
        else:
            head = (f"{pn} {stayed} ({_pct(pa)}, {at}) while {rn} just left it ({_pct(ra)}), but the "
                    f"{100 * gap:.1f}-point gap between them is within noise: more steps or another seed show "
                    "whether the shortcuts make the difference.")
    elif sp == "above" and sr != "above":
        stayed = "stayed at chance" if sr == "at" else "fell below chance"
        head = (f"{pn} reached {_pct(pa)} while {rn} {stayed} ({_pct(ra)}, {at}): here the plain net "
                "learned and its ResNet twin did not, the opposite of degradation. Another seed or more steps "
                "shows whether that holds.")
    elif gap > Z * diff_se:
        head = (f"Both nets learned ({at}), {rn} faster: {_pct(ra)} against {pn}'s {_pct(pa)}. At {depth} layers "
                "the plain net trains too; the shortcuts make the ResNet learn faster.")
    elif gap < -Z * diff_se:
        head = (f"Both nets learned ({at}), and {pn} is ahead: {_pct(pa)} against {rn}'s {_pct(ra)}. At "
                f"{depth} layers the shortcuts did not help in this run.")
    else:
        head = (f"Both nets learned and are level: {pn} {_pct(pa)}, {rn} {_pct(ra)} ({at}), a difference within "
                f"the noise of {held_out} held-out images. At {depth} layers the plain net trains as well as its "
                "ResNet twin.")
    if steps_done < steps:
        head = f"Stopped at step {steps_done} of {steps}. {head}"

    def z(acc: float) -> str:
        return f"{(acc - p) / se:+.1f} se from chance: **{standing(acc, classes, held_out)} chance**"

    detail = (
        f"- **Chance** is 1/K = {_pct(p)} for K = {classes} classes. A net that only guesses, measured on "
        f"{held_out} held-out images, scores {_pct(p)} give or take one standard error √(p(1−p)/n) = "
        f"{100 * se:.1f} points; a net counts as learning only beyond {Z:g} standard errors (above "
        f"{_pct(p + Z * se)}) and as at chance within them.\n"
        f"- **{pn}**: {_pct(pa)} held out, {z(pa)}.\n"
        f"- **{rn}**: {_pct(ra)} held out, {z(ra)}.\n"
        f"- **{rn} − {pn}**: {100 * gap:+.1f} points, standard error {100 * diff_se:.1f} "
        f"({gap / diff_se if diff_se else 0.0:+.1f} se; as two independent proportions, which overstates the noise "
        "a little: both nets are scored on the same images).\n"
        f"- After {steps_done} of {steps} steps, from one run with one seed: another seed shows whether it holds "
        "(the README's table: the defaults with seeds 0 and 1).")
    return Verdict(head, detail)


def from_curves(curves: pd.DataFrame, classes: int, held_out: int, steps_done: int, steps: int) -> Verdict | None:
    """The verdict from a run's curves (`Snapshot.curves`: net, step, metric, value; the plain net's rows first),
    from each net's last held-out accuracy; None before both nets have one."""
    last = curves[curves.metric == "val_acc"].groupby("net", sort=False).value.last()
    if len(last) < 2:
        return None
    plain = next(n for n in last.index if n.startswith("plain"))
    resnet = next(n for n in last.index if not n.startswith("plain"))
    return verdict((plain, float(last[plain])), (resnet, float(last[resnet])), classes, held_out, steps_done, steps)
