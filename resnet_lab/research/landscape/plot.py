"""Landscape figures (matplotlib Figures, no pyplot): a 1-D slice, 2-D contours, and rise against radius, in the
Research figures' one style (`research.style`); `cols=1` lays any of them out in one column for a phone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import style as S
from . import readings as R

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ALPHA = "α: step along a random direction (filter-normalized)"


def style(model: str) -> dict[str, Any]:
    """Colour by depth, solid for a ResNet and dashed for its plain twin (`research.style`, as every figure)."""
    return S.line_style(model)


def _first_seed(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.control == "none") & (df.seed == df.seed.min())]


def plot_1d(df: pd.DataFrame, cols: int | None = None, num_classes: int = R.SHAPES_CLASSES) -> Figure:
    """Loss (log scale) and accuracy along the first direction of the first seed (beta = 0), all nets together,
    chance marked on both."""
    df = _first_seed(df)
    fig, (ax_loss, ax_acc) = S.panels(2, cols, (5.0, 3.6), extra=(0, 0.5))
    for model in dict.fromkeys(df.model):
        d = df[(df.model == model) & (df.beta == 0)].sort_values("alpha")
        ax_loss.plot(d.alpha, d.loss, label=model, **style(model))
        ax_acc.plot(d.alpha, d.accuracy, **style(model))
    chance = f"chance: loss ln {num_classes}, accuracy 1/{num_classes}"
    S.chance_line(ax_loss, math.log(num_classes), chance)
    S.chance_line(ax_acc, 1 / num_classes, chance)
    ax_loss.set(xlabel=ALPHA, ylabel="held-out loss (cross-entropy, log scale)", yscale="log",
                title="loss along the slice (α = 0: the trained net)")
    ax_acc.set(xlabel=ALPHA, ylabel="held-out accuracy (fraction)", ylim=(0, 1.02), title="accuracy along the slice")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(9)
    S.legend_outside(fig, [ax_loss, ax_acc], cols)
    return fig


def plot_2d(df: pd.DataFrame, num_classes: int = R.SHAPES_CLASSES, cols: int | None = None) -> Figure:
    """Contours of each net's loss (first seed) side by side on the same log-spaced levels, as Li et al.'s
    figures, with a colour bar for the levels and the basin's edge (loss = ln C, chance) dotted red."""
    from matplotlib import cm
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D

    df = _first_seed(df)
    models = list(dict.fromkeys(df.model))
    positive = df.loss[df.loss > 0]
    lo, hi = float(positive.min()), float(positive.max())
    levels = np.geomspace(lo, hi if hi > lo * 1.01 else lo * 10, 30)
    norm = LogNorm(levels[0], levels[-1])
    narrow = cols == 1
    fig, axes = S.panels(len(models), cols, (3.4, 3.5), extra=(0 if narrow else 1.2, 0.9 if narrow else 0.4),
                         sharey=True)
    chance = float(np.log(num_classes))
    for ax, model in zip(axes, models):
        a, b, loss = R.surface(df[df.model == model])
        ax.contour(a, b, np.clip(loss.T, lo, None), levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
        if loss.min() < chance < loss.max():
            ax.contour(a, b, loss.T, levels=[chance], **S.CHANCE_CONTOUR)
        ax.plot([0], [0], marker="+", color="red", ms=8)
        ax.set_title(model, fontsize=10, pad=6)
        ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)", aspect="equal")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, shrink=0.85 if not narrow else 0.9,
                 location="bottom" if narrow else "right", label="held-out loss (cross-entropy, log levels)")
    edge = Line2D([], [], color="red", ls=":", lw=1.4, label=f"loss = ln {num_classes} (chance): the basin's edge")
    centre = Line2D([], [], color="red", marker="+", ls="none", label="+ the trained weights")
    fig.legend(handles=[edge, centre], loc="outside upper center", ncols=1 if narrow else 2, fontsize=8)
    return fig


def plot_sharpness(df: pd.DataFrame, cols: int | None = None) -> Figure:
    """Loss rise against radius (log-log) at the study's radii (`readings.radii_on`: the ones every seed has when a
    grid is read beside the sharpness study), mean and min-max over direction seeds, one panel per control."""
    from matplotlib.ticker import NullFormatter, NullLocator

    radii = R.radii_on(df)
    table = R.sharpness_table(R.rises(df, radii))
    controls = R.controls_in(df)
    fig, axes = S.panels(len(controls), cols, (3.6, 3.3), extra=(0, 0.6), sharey=True)
    for ax, control in zip(axes, controls):
        t = table[table.control == control]
        for model in dict.fromkeys(t.model):
            d = t[t.model == model].sort_values("radius")
            ax.plot(d.radius, d["mean"].clip(lower=1e-6), marker="o", ms=3, label=model, **style(model))
            if d.seeds.max() > 1:
                ax.fill_between(d.radius, d["min"].clip(lower=1e-6), d["max"].clip(lower=1e-6), alpha=0.15,
                                color=style(model).get("color"))
        ax.set(xscale="log", yscale="log", xlabel="radius r (filter-normalized)", title=f"control: {control}")
        ax.title.set_fontsize(10)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(radii, [f"{r:g}" for r in radii])
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("loss rise at ±r (nats)")
    S.legend_outside(fig, axes, cols)
    return fig
