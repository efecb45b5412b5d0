"""What the curvature numbers say at scale: each quantity against the number of images n its Hessian is taken on,
the spread between disjoint image sets at each n, paired tests between twins, and the controls a reading must
survive (one image left out; the nets' difference in fit).

Why this shape: on 64 images a net's Hessian is dominated by the few images it has not yet fitted, so a 64-image
lambda_max can move 4x between image sets and a reading there says more about which images were drawn than about
the net. A reading is stated only where it holds at the two largest n measured (`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05  # two-sided level of the paired test
QUANTITIES = {"lambda_max": ("eigenvalue", 1), "trace": ("trace", 0), "lambda_min": ("lambda_min", 0),
              "ratio": ("ratio", 0), "loss": ("loss", 0), "worst_share": ("worst_share", 0)}
SETTLE_FACTOR = 4  # "two doublings": a quantity has settled when n / 4 -> n moves it less than the sets' spread


def per_set(spec: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """One row per (model, n, image set) with the quantity's value (see `QUANTITIES`)."""
    name, index = QUANTITIES[quantity]
    d = spec[(spec.quantity == name) & (spec["index"] == index)]
    return d[["model", "n", "images", "value"]].reset_index(drop=True)


def sizes(spec: pd.DataFrame, quantity: str | None = None, models: tuple[str, ...] = ()) -> list[int]:
    """The sizes measured (of `quantity`, for every one of `models`, when given), smallest first. A run may leave
    lambda_min or the trace out at a size (`--quantities`), so each quantity is read at its own sizes."""
    if quantity is None:
        return sorted(int(n) for n in spec.n.unique())
    d = per_set(spec, quantity)
    found = [set(d[d.model == m].n) for m in models] or [set(d.n)]
    return sorted(int(n) for n in set.intersection(*found))


def by_size(spec: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """Per model and n: mean, standard deviation (ddof 1; NaN for one set), min, max and number of sets."""
    g = per_set(spec, quantity).groupby(["model", "n"], sort=False).value
    out = g.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "sets"}).reset_index()
    return out


def settling(spec: pd.DataFrame, quantity: str, model: str) -> dict[str, float | int | bool]:
    """How far the quantity still moves at the largest n: its mean there against the mean at the largest size at
    most n / `SETTLE_FACTOR` (else the next smaller size), and whether that move is within the spread between
    sets at n (`settled`)."""
    t = by_size(spec, quantity)
    t = t[t.model == model].sort_values("n")
    if not len(t):
        return {"n": 0, "value": math.nan, "from_n": 0, "from_value": math.nan, "spread": math.nan,
                "settled": False}
    last = t.iloc[-1]
    earlier = t[t.n <= last.n / SETTLE_FACTOR]
    prev = earlier.iloc[-1] if len(earlier) else None  # no size two doublings below: nothing to judge it by
    if prev is None:
        return {"n": int(last.n), "value": float(last["mean"]), "from_n": 0, "from_value": math.nan,
                "spread": float(last["std"]), "settled": False}
    move = abs(float(last["mean"]) - float(prev["mean"]))
    spread = float(last["std"])
    return {"n": int(last.n), "value": float(last["mean"]), "from_n": int(prev.n), "from_value": float(prev["mean"]),
            "spread": spread, "settled": bool(math.isfinite(spread) and move <= spread)}


def paired(spec: pd.DataFrame, res: str, plain: str, quantity: str, n: int) -> dict[str, float | int | str]:
    """A paired t-test over the image sets at n (both twins see the same images in set k): means, the ratio of the
    plain net's mean to the ResNet's, t, degrees of freedom, the two-sided p-value and who is larger
    (`res`, `plain`, "none" when p >= ALPHA, "too few sets" below 2)."""
    d = per_set(spec, quantity)
    d = d[d.n == n]
    a, b = (d[d.model == m].set_index("images").value for m in (res, plain))
    common = a.index.intersection(b.index)
    a, b = a[common].to_numpy(float), b[common].to_numpy(float)
    out: dict[str, float | int | str] = {"n": n, "sets": len(common), "res": float(a.mean()) if len(a) else math.nan,
                                         "plain": float(b.mean()) if len(b) else math.nan}
    out["ratio"] = out["plain"] / out["res"] if out["res"] else math.nan
    if len(common) < 2:
        return {**out, "t": math.nan, "df": len(common) - 1, "p": math.nan, "larger": "too few sets"}
    diff = b - a
    if not np.any(diff - diff.mean()):  # identical differences: no spread, the test is undefined
        t, p = (math.inf if diff.mean() else 0.0), (0.0 if diff.mean() else 1.0)
    else:
        t, p = (float(v) for v in stats.ttest_rel(b, a))
    larger = "none" if not p < ALPHA else (plain if t > 0 else res)
    return {**out, "t": t, "df": len(common) - 1, "p": p, "larger": larger}


def verdict(spec: pd.DataFrame, res: str, plain: str, quantity: str) -> dict:
    """The paired test at the two largest n; `holds` names the larger net where both are significant in the same
    direction, else None (`tests` keeps both, largest n last)."""
    ns = sizes(spec, quantity, (res, plain))[-2:]
    tests = [paired(spec, res, plain, quantity, n) for n in ns]
    winners = {t["larger"] for t in tests}
    holds = next(iter(winners)) if len(winners) == 1 and len(ns) == 2 and winners <= {res, plain} else None
    return {"quantity": quantity, "tests": tests, "holds": holds}


def leave_one_out(spec: pd.DataFrame) -> pd.DataFrame:
    """Per model and n (set 0): lambda_max, lambda_max without the worst-fitted image, the relative change, and
    the share of the set's loss that image carries."""
    d = spec[spec.images == "set0"]
    get = lambda q, i: d[(d.quantity == q) & (d["index"] == i)].set_index(["model", "n"]).value  # noqa: E731
    t = pd.DataFrame({"lambda_max": get("eigenvalue", 1), "lambda_max_loo": get("lambda_max_loo", 0),
                      "worst_share": get("worst_share", 0)}).dropna(subset=["lambda_max_loo"]).reset_index()
    t["change"] = t.lambda_max_loo / t.lambda_max - 1
    return t


def fit_control(spec: pd.DataFrame, res: str, plain: str, quantity: str = "lambda_max") -> dict[str, float]:
    """What the difference in fit explains: per net a plane log(quantity) = a + b log(loss) + c log(n) through
    all its (n, set) points (n in it, so the sizes' own fall is not read as fit); the plain/ResNet ratio of the
    quantity's means at the largest n as measured (the paired test's), and as the planes predict there at one
    matched loss (the geometric mean of the two nets' losses there). A matched ratio near 1 means the fit
    explains the difference; near the measured one, it does not."""
    q, loss = per_set(spec, quantity), per_set(spec, "loss")
    both = q.merge(loss, on=["model", "n", "images"], suffixes=("", "_loss"))
    both = both[(both.value > 0) & (both.value_loss > 0)]
    top = max(sizes(spec, quantity, (res, plain)), default=0)
    lines, at_top = {}, {}
    for m in (res, plain):
        d = both[both.model == m]
        if len(d) < 3 or d.value_loss.nunique() < 2 or d.n.nunique() < 2:
            return {"measured": math.nan, "matched": math.nan, "slope_res": math.nan, "slope_plain": math.nan,
                    "loss": math.nan, "loss_res": math.nan, "loss_plain": math.nan, "points": len(d)}
        # log n in the line too: the sets of every size are pooled, and the quantity falls with n at a given loss
        design = np.column_stack([np.ones(len(d)), np.log(d.value_loss), np.log(d.n)])
        a, b, c = np.linalg.lstsq(design, np.log(d.value.to_numpy()), rcond=None)[0]
        lines[m] = (a, b, c)
        last = d[d.n == top]
        at_top[m] = (float(last.value.mean()), float(np.exp(np.log(last.value_loss).mean())))
    matched_loss = math.sqrt(at_top[res][1] * at_top[plain][1])
    predict = lambda m: math.exp(lines[m][0] + lines[m][1] * math.log(matched_loss)  # noqa: E731
                                 + lines[m][2] * math.log(top))
    return {"measured": at_top[plain][0] / at_top[res][0], "matched": predict(plain) / predict(res),
            "loss_res": at_top[res][1], "loss_plain": at_top[plain][1],
            "slope_res": float(lines[res][1]), "slope_plain": float(lines[plain][1]), "loss": matched_loss,
            "points": int(min((both.model == m).sum() for m in (res, plain)))}


def fit_explains(fit: dict[str, float]) -> bool | None:
    """Whether `fit_control` finds the difference in fit explains most of the measured ratio (the matched ratio's
    log under half the measured one's); None where the control could not be drawn."""
    if not (math.isfinite(fit["matched"]) and math.isfinite(fit["measured"])) or fit["measured"] <= 0:
        return None
    return abs(math.log(fit["matched"])) < 0.5 * abs(math.log(fit["measured"]))


def held_quantity(verdicts: dict[str, dict]) -> str | None:
    """The measure a pair's verdict rests on, from its `verdict`s by quantity: lambda_max where it holds at the two
    largest n, else the trace where it does, else None (the fit control is then drawn for lambda_max, with no gap
    to explain)."""
    return next((q for q in ("lambda_max", "trace") if q in verdicts and verdicts[q]["holds"]), None)


def default_density_n(sizes: Sequence[int]) -> int:
    """The size the eigenvalue density is taken at when none is given: the one nearest 256 images."""
    return min(sizes, key=lambda n: abs(math.log(n / 256)))
