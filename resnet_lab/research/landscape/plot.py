"""Landscape figures (matplotlib Figures, no pyplot): a 1-D slice, 2-D contours, and rise against radius."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...resnet import REGISTRY
from . import readings as R

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE = {20: "tab:green", 56: "tab:purple", 32: "tab:orange", 44: "tab:brown", 110: "tab:gray"}


def style(model: str) -> dict[str, Any]:
    """Colour by depth, solid for a ResNet and dashed for its plain twin (as the degradation plot)."""
    arch = model.split(" ")[0]
    if arch not in REGISTRY:
        return {}
    cfg = REGISTRY[arch]
    return {"color": STYLE.get(cfg.depth, "black"), "ls": "-" if cfg.residual else "--"}


def _first_seed(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.control == "none") & (df.seed == df.seed.min())]


def plot_1d(df: pd.DataFrame) -> Figure:
    """Loss (log scale) and accuracy along the first direction of the first seed (beta = 0), all nets together."""
    from matplotlib.figure import Figure

    df = _first_seed(df)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for model in dict.fromkeys(df.model):
        d = df[(df.model == model) & (df.beta == 0)].sort_values("alpha")
        ax_loss.plot(d.alpha, d.loss, label=model, **style(model))
        ax_acc.plot(d.alpha, d.accuracy, label=model, **style(model))
    ax_loss.set(xlabel="alpha (filter-normalized)", ylabel="loss", yscale="log")
    ax_acc.set(xlabel="alpha (filter-normalized)", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_2d(df: pd.DataFrame, num_classes: int = R.SHAPES_CLASSES) -> Figure:
    """Contours of each net's loss (first seed) side by side on the same log-spaced levels, as Li et al.'s
    figures, with the basin's edge (loss = ln C, chance) drawn in red."""
    from matplotlib import cm
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    df = _first_seed(df)
    models = list(dict.fromkeys(df.model))
    positive = df.loss[df.loss > 0]
    lo, hi = float(positive.min()), float(positive.max())
    levels = np.geomspace(lo, hi if hi > lo * 1.01 else lo * 10, 30)
    norm = LogNorm(levels[0], levels[-1])
    fig = Figure(figsize=(3.4 * len(models) + 1.2, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
    chance = float(np.log(num_classes))
    for ax, model in zip(axes, models):
        a, b, loss = R.surface(df[df.model == model])
        ax.contour(a, b, np.clip(loss.T, lo, None), levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
        if loss.min() < chance < loss.max():
            ax.contour(a, b, loss.T, levels=[chance], colors="red", linewidths=1.2, linestyles=":")
        ax.plot([0], [0], marker="+", color="red", ms=8)
        ax.set_title(model, fontsize=10, pad=6)
        ax.set(xlabel="α", aspect="equal")
    axes[0].set_ylabel("β")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes), shrink=0.85,
                 label="loss (log levels); red dotted: ln C")
    return fig


def plot_sharpness(df: pd.DataFrame) -> Figure:
    """Loss rise against radius (log-log) at the study's radii (`readings.radii_on`: the ones every seed has when a
    grid is read beside the sharpness study), mean and min-max over direction seeds, one panel per control."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, NullLocator

    radii = R.radii_on(df)
    table = R.sharpness_table(R.rises(df, radii))
    controls = R.controls_in(df)
    fig = Figure(figsize=(3.6 * len(controls) + 0.6, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(controls), sharey=True))
    for ax, control in zip(axes, controls):
        t = table[table.control == control]
        for model in dict.fromkeys(t.model):
            d = t[t.model == model].sort_values("radius")
            ax.plot(d.radius, d["mean"].clip(lower=1e-6), marker="o", ms=3, label=model, **style(model))
            if d.seeds.max() > 1:
                ax.fill_between(d.radius, d["min"].clip(lower=1e-6), d["max"].clip(lower=1e-6), alpha=0.15,
                                color=style(model).get("color"))
        ax.set(xscale="log", yscale="log", xlabel="radius r (filter-normalized)", title=f"control: {control}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(radii, [f"{r:g}" for r in radii])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("loss rise at ±r")
    axes[-1].legend(fontsize=7, loc="upper left")
    return fig
