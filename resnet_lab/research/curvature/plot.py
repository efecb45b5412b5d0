"""Curvature figures: each quantity against the number of images its Hessian is taken on (the convergence curve the
verdicts are read from), the eigenvalue density of each net (log scale, as PyHessian draws it, labelled with its
images), and Li et al.'s |lambda_min/lambda_max| map on the landscape's plane; in the Research figures' one style
(`research.style`), `cols=1` for a phone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ...models.resnet import REGISTRY
from .. import style as S
from . import scale

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONVERGENCE_PANELS = (("lambda_max", "λmax: top eigenvalue\n(sharpness)", "log"),
                      ("trace", "trace: sum of eigenvalues\n(total curvature, Hutch++)", "log"),
                      ("ratio", "|λmin/λmax|\n(0: no negative curvature)", "linear"))


def _depth(model: str) -> int:
    arch = S.arch_of(model)
    return REGISTRY[arch].depth if arch else 0


def plot_convergence(spec: pd.DataFrame, cols: int | None = None) -> Figure:
    """Per quantity, each net's mean over the disjoint image sets against n (log axis), a bar from the smallest to
    the largest set and every set a faint dot: where the bars of two twins still overlap, or a curve still falls,
    the numbers at that n are no reading yet."""
    # matplotlib loads with the first figure, not with the package
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    models = list(dict.fromkeys(spec.model))
    shown = [p for p in CONVERGENCE_PANELS if len(scale.per_set(spec, p[0]))]
    fig, axes = S.panels(len(shown), cols, (4.2, 3.4), extra=(0, 0.5 if cols == 1 else 0.3))
    for ax, (q, title, yscale) in zip(axes, shown):
        t = scale.by_size(spec, q)
        dots = scale.per_set(spec, q)
        for i, m in enumerate(models):
            d, style = t[t.model == m].sort_values("n"), S.line_style(m)
            shift = 1 + 0.04 * (i - (len(models) - 1) / 2)  # side by side at each n, so the bars do not hide
            ax.errorbar(d.n * shift, d["mean"], yerr=[d["mean"] - d["min"], d["max"] - d["mean"]], marker="o",
                        ms=4, capsize=3, lw=1.5, label=m, **style)
            p = dots[dots.model == m]
            ax.plot(p.n * shift, p.value, "o", color=style["color"], alpha=0.5, ms=3.5, mec="none")
            if q != "ratio" and len(d):  # the mean the verdict quotes, written beside its last point
                last = d.iloc[-1]
                ax.annotate(f"{last['mean']:.0f}", (last.n * shift, last["mean"]), xytext=(6, 0),
                            textcoords="offset points", va="center", fontsize=7.5, color=style["color"])
        sizes = scale.sizes(spec)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.9)  # room for the values written at the right
        ax.minorticks_off()
        ax.set_yscale(yscale)
        if yscale == "log":  # plain numbers at 1, 2, 5 x 10^k (20, 50, 100), not 4 x 10^1, and no crowded minors
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("training images per Hessian (n)", fontsize=9)
        ax.grid(True, alpha=0.3)
    S.legend_outside(fig, axes, cols, title="mean over disjoint image sets;" + ("\n" if cols == 1 else " ")
                     + "bars: smallest to largest set; dots: each set", title_fontsize=8)
    return fig


def _peaks(y: np.ndarray) -> np.ndarray:
    """Indices of the density's local maxima."""
    return np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])) + 1


def numbers_label(model: str, dens: pd.DataFrame) -> str:
    """A net's legend entry: where its rightmost peak sits (the top Ritz value: λmax of that image set)."""
    peaks = _peaks(dens.density.to_numpy())
    return f"{model}: λmax ≈ {dens.eigenvalue.to_numpy()[peaks[-1]]:.0f}" if len(peaks) else model


def plot_density(dens: pd.DataFrame, cols: int | None = None) -> Figure:
    """Density of the Hessian's eigenvalues per net (log y), one panel per depth, labelled with the images it was
    taken on; the y axis reaches below the lowest peak, so the isolated top eigenvalues (tiny weight, a Ritz value
    each) show beside the bulk near zero."""
    models = list(dict.fromkeys(dens.model))
    depths = sorted({_depth(m) for m in models})
    fig, axes = S.panels(len(depths), cols, (5.2, 3.6), extra=(0, 0.2))
    for ax, depth in zip(axes, depths):
        low, high, ns = math.inf, 0.0, set()
        for m in [m for m in models if _depth(m) == depth]:
            d = dens[dens.model == m]
            y = d.density.to_numpy()
            peaks = y[_peaks(y)]
            low = min(low, peaks[peaks > 0].min() if (peaks > 0).any() else y[y > 0].min())
            high = max(high, y.max())
            ns.add(int(d.n.iloc[0]))
            style = S.line_style(m)
            ax.plot(d.eigenvalue, d.density.clip(lower=1e-300), label=numbers_label(m, d), **style)
        floor = 10 ** math.floor(math.log10(low) - 1)
        ax.set(yscale="log", xlabel="eigenvalue of the Hessian (curvature along that direction)",
               ylabel="density of eigenvalues", ylim=(floor, 10 * high),
               title=f"{depth} layers: set 0, {', '.join(map(str, sorted(ns)))} training images" if depth else "")
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center")
    return fig


def plot_map(maps: pd.DataFrame, num_classes: int = 8, cols: int | None = None) -> Figure:
    """|lambda_min / lambda_max| on the plane per net (same colour scale, one colour bar), the basin's edge
    (loss = ln C) dotted."""
    from matplotlib import cm
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(maps.model))
    top = float(np.nanmax(maps.ratio)) if len(maps) else 1.0
    norm = Normalize(0, min(max(top, 0.05), 1.0))  # capped at 1: one far corner must not wash out the basin
    narrow = cols == 1
    fig, axes = S.panels(len(models), cols, (3.3, 3.4), extra=(0 if narrow else 1.2, 1.2 if narrow else 0.7),
                         sharey=True)
    chance = math.log(num_classes)
    for ax, m in zip(axes, models):
        d = maps[maps.model == m]
        ratio = d.pivot_table(index="beta", columns="alpha", values="ratio")
        loss = d.pivot_table(index="beta", columns="alpha", values="loss")
        a, b = ratio.columns.to_numpy(), ratio.index.to_numpy()
        step = (a[1] - a[0]) / 2 if len(a) > 1 else 0.5
        ax.imshow(ratio.to_numpy(), origin="lower", cmap="viridis", norm=norm, aspect="equal",
                  extent=(a[0] - step, a[-1] + step, b[0] - step, b[-1] + step))
        if loss.to_numpy().min() < chance < loss.to_numpy().max():
            ax.contour(a, b, loss.to_numpy(), levels=[chance], **S.CHANCE_CONTOUR)
        ax.plot([0], [0], marker="+", color="white", ms=8)
        ax.set_title(m, fontsize=10, pad=6)
        ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, shrink=0.85,
                 location="bottom" if narrow else "right",
                 label="|λmin/λmax| (0: convex; larger: more negative curvature)",
                 extend="max" if top > 1.0 else "neither")
    edge = Line2D([], [], color="red", ls=":", lw=1.4, label=f"loss = ln {num_classes} (chance): the basin's edge")
    centre = Line2D([], [], color="gray", marker="+", ls="none", label="+ the trained weights")
    fig.legend(handles=[edge, centre], loc="outside upper center", ncols=1 if narrow else 2, fontsize=8)
    return fig
