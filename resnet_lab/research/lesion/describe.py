"""The lesion study's reading: text computed from its numbers, and where they agree with Veit et al. (2016).

Every sentence is derived from the rows it describes: intact accuracy, what single deletions cost (their Fig. 3:
a ResNet loses little to any one non-downsampling block, the downsampling blocks cost most, a plain net drops to
chance), and how the mean accuracy falls with k random deletions (their Fig. 5: smoothly). A net at chance before
any deletion is said to have learned nothing and is compared with nothing. The thresholds below are what "little",
"~chance", "weak", "much sooner" and "smooth" mean here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SMALL_DROP = 0.05  # a single non-downsampling deletion that costs at most 5 points costs "little" (their Fig. 3)
NEAR_CHANCE = 0.10  # within 10 points of chance counts as chance (plain nets, their Fig. 3 VGG)
WEAK = 0.6  # an intact accuracy below this is said to be a weakly trained net
EARLY = 0.25  # halfway to chance with under a quarter of the blocks deleted is "much sooner" than their Fig. 5
SMOOTH_STEP = 0.5  # "smooth": no single extra deletion accounts for more than half of the total fall (their Fig. 5)
PAPER_BLOCKS = 54  # ResNet-110's residual blocks, the net of their Fig. 5


def k_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and k: mean, std, min and max accuracy over the random draws."""
    r = df[df.kind == "random"]
    g = r.groupby(["model", "k"], sort=False).accuracy
    return g.agg(["mean", "std", "min", "max"]).reset_index().fillna({"std": 0.0})


def halfway_k(ks: np.ndarray, mean: np.ndarray, intact: float, chance: float) -> float:
    """The (interpolated) k at which the mean accuracy has fallen halfway from `intact` to `chance`; nan if never."""
    target = (intact + chance) / 2
    below = np.nonzero(mean <= target)[0]
    if intact <= target or not len(below) or below[0] == 0:
        return math.nan
    i = below[0]
    k0, k1, a0, a1 = ks[i - 1], ks[i], mean[i - 1], mean[i]
    return float(k0 + (a0 - target) / (a0 - a1) * (k1 - k0))


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _residual_singles(model: str, removable: pd.DataFrame, intact: float) -> tuple[list[str], list[str]]:
    """(sentences, departures) on a residual net's single deletions: non-downsampling blocks, then downsampling."""
    parts, departs = [], []
    plain_blocks = removable[~removable.downsampling]
    down = removable[removable.downsampling]
    dp = intact - plain_blocks.accuracy
    if len(plain_blocks):
        worst = plain_blocks.loc[dp.idxmax(), "block"]
        parts.append(f"Deleting any single non-downsampling block costs at most {_pts(dp.max())} points "
                     f"({worst}; median {_pts(dp.median())}, {len(plain_blocks)} blocks).")
        if dp.max() > SMALL_DROP:
            cliff = plain_blocks[dp > SMALL_DROP].block.tolist()
            departs.append(f"in {model} deleting {', '.join(cliff[:4])}{' ...' if len(cliff) > 4 else ''} costs "
                           f"more than {_pts(SMALL_DROP)} points, where Veit et al. (Fig. 3) find every "
                           "non-downsampling block of ResNet-110 dispensable")
    if len(down):
        costliest = not len(plain_blocks) or (intact - down.accuracy).max() > dp.max()
        parts.append("Deleting downsampling block" + ("s " if len(down) > 1 else " ") + ", ".join(
            f"{b} costs {_pts(intact - a)}" for b, a in zip(down.block, down.accuracy)) + " points"
            + (" (the costliest deletion is a downsampling block's, as in Veit et al.)." if costliest else "."))
        if not costliest and dp.max() > SMALL_DROP:
            departs.append(f"in {model} the downsampling blocks are not the costliest to delete (at most "
                           f"{_pts((intact - down.accuracy).max())} against {_pts(dp.max())} points), where in "
                           "Veit et al. (Fig. 3) they stand out")
    return parts, departs


def _plain_singles(model: str, removable: pd.DataFrame, kept: pd.DataFrame, intact: float,
                   chance: float) -> tuple[list[str], list[str]]:
    """(sentences, departures) on a plain net's single deletions: to chance or not, and the blocks that must stay."""
    parts, departs = [], []
    if len(removable):
        drop = intact - removable.accuracy
        near = removable.accuracy <= chance + NEAR_CHANCE
        if near.all():
            acc = removable.accuracy
            parts.append(f"Every removable single deletion drops it to ~chance "
                         f"(at most {_pts(acc.max())} %, median {_pts(acc.median())} %).")
        else:
            parts.append(f"Single deletions cost {_pts(drop.min())} to {_pts(drop.max())} points "
                         f"(median {_pts(drop.median())}); {int(near.sum())} of {len(removable)} send it to "
                         "~chance.")
            departs.append(f"in {model} {int((~near).sum())} of {len(removable)} single deletions leave it above "
                           f"chance + {_pts(NEAR_CHANCE)} points (at most {_pts(removable.accuracy.max())} %), "
                           "where Veit et al. find that deleting any layer of a plain (VGG) net sends it to chance")
    if len(kept):
        parts.append(f"{len(kept)} downsampling block{'s' if len(kept) > 1 else ''} "
                     f"({', '.join(kept.block)}) cannot be removed: no identity has its shape.")
    return parts, departs


def _random_deletions(d: pd.DataFrame, curve: pd.DataFrame, intact: float) -> tuple[list[str], list[str]]:
    """(sentences, departures) on the mean accuracy with k random blocks deleted: how far, how fast, how smooth."""
    model, residual, chance = d.model.iloc[0], bool(d.residual.iloc[0]), float(d.chance.iloc[0])
    if len(curve) <= 2:
        return [], []
    ks, mean = curve.k.to_numpy(), curve["mean"].to_numpy()
    top, fall = int(ks[-1]), intact - float(mean[-1])
    per_block = -np.diff(mean) / np.diff(ks)  # the fall per extra deleted block between evaluated k
    at_chance = ks[mean <= chance + NEAR_CHANCE]
    half = halfway_k(ks, mean, intact, chance)
    parts = [f"With k random blocks deleted ({len(ks) - 1} values of k, "
             f"{int(d[d.kind == 'random'].draw.nunique())} draws) the mean accuracy falls to "
             f"{_pts(float(mean[-1]))} % at k = {top}"
             + (f", halfway to chance at k = {half:.1f} ({_pts(half / top)} % of the blocks)"
                if math.isfinite(half) and residual else "")
             + (f", ~chance from k = {int(at_chance[0])}" if len(at_chance) else "")
             + f"; the largest fall per extra deleted block is {_pts(per_block.max())} points."]
    departs = []
    if residual and fall > 0.1 and per_block.max() > SMOOTH_STEP * fall:
        departs.append(f"{model}'s accuracy falls off a cliff as blocks are deleted ({_pts(per_block.max())} "
                       f"of {_pts(fall)} points for one block), where Veit et al. (Fig. 5) see a smooth rise "
                       "in error")
    elif residual and math.isfinite(half) and half < EARLY * top:
        departs.append(f"{model} is halfway to chance after only {half:.1f} of its {top} blocks are deleted at "
                       f"random: it degrades smoothly but much sooner than Veit et al.'s ResNet-110 (Fig. 5, "
                       f"{PAPER_BLOCKS} blocks), whose error rises gradually over many deletions"
                       + (f"; {model} has fewer, hence individually more important, blocks"
                          if top < PAPER_BLOCKS else ""))
    return parts, departs


def _describe_model(d: pd.DataFrame) -> tuple[str, list[str], bool]:
    """(one paragraph about one model, how it departs from Veit et al., whether it learned) from its rows alone."""
    model, residual = d.model.iloc[0], bool(d.residual.iloc[0])
    chance = float(d.chance.iloc[0])
    curve = k_curve(d).sort_values("k")
    intact = float(curve[curve.k == 0]["mean"].iloc[0]) if (curve.k == 0).any() else math.nan
    single = d[(d.kind == "single")]
    removable, kept = single[single.removable], single[~single.removable]
    head = f"{model}: intact accuracy {_pts(intact)} % on {int(d.n.iloc[0])} held-out images (chance {_pts(chance)} %)."
    if intact <= chance + NEAR_CHANCE:
        return (f"{head} It is at chance before any deletion: it never learned, so its lesions measure nothing "
                "(the degradation problem, not a lesion result).", [], False)
    parts = [head]
    if intact < WEAK:
        parts.append("It learned little (the degradation problem), so its lesions start from a weak net.")
    singles, departs = (_residual_singles(model, removable, intact) if residual
                        else _plain_singles(model, removable, kept, intact, chance))
    ks, k_departs = _random_deletions(d, curve, intact)
    return " ".join(parts + singles + ks), departs + k_departs, True


def describe_lesion(df: pd.DataFrame) -> str:
    """What the numbers say, model by model, and whether they agree with Veit et al. (2016, Figs. 3 and 5)."""
    if df.empty:
        return "No lesion results."
    paragraphs, departs, tested = [], [], set()
    for model in dict.fromkeys(df.model):
        d = df[df.model == model]
        text, dep, learned = _describe_model(d)
        paragraphs.append(text)
        departs += dep
        if learned:
            tested.add(bool(d.residual.iloc[0]))
    claims = {True: "residual nets lose little when any one non-downsampling block goes and degrade smoothly as "
                    "more go", False: "a plain net does not survive losing a layer"}
    if departs:
        paragraphs.append("Where this disagrees with Veit et al. (2016):\n" + "\n".join(f"- {d}." for d in departs))
    elif tested:
        paragraphs.append("This agrees with Veit et al. (2016): " + "; ".join(claims[r] for r in (True, False)
                                                                            if r in tested) + ".")
    else:
        paragraphs.append("No model here learned, so nothing is compared with Veit et al. (2016).")
    return "\n\n".join(paragraphs)
