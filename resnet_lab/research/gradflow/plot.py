"""The gradient study's figures: matplotlib Figures made without pyplot (no global state, safe in Gradio's worker
threads), drawn by Agg, in the Research figures' one style (`research.style`: orange dashed = plain twin,
blue solid = ResNet, darker = deeper). Axes are logarithmic: the profiles span up to ten orders of magnitude."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ...models.resnet import REGISTRY, twin_name
from .. import style as S
from .compute import VARIANTS
from .describe import summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

LINES = {"plain": S.PLAIN_LINE, "residual": S.RESNET_LINE}
LABELS = {"plain": "plain twin", "residual": "ResNet"}


def _panels(n: int, parent: Figure | SubFigure | None = None, panel_size: tuple[float, float] = (4.2, 3.2),
            cols: int = 3) -> tuple[Figure | SubFigure, np.ndarray]:
    """A new Figure (or `parent`, a Figure or SubFigure) split into `n` panels, `cols` per row."""
    from matplotlib.figure import Figure

    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    if cols == 1:
        panel_size = (S.NARROW_WIDTH, panel_size[1] * S.NARROW_WIDTH / panel_size[0])
    fig = parent or Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_profile(df: pd.DataFrame, quantity: str = "grad_w", ylabel: str = r"$\|\partial L/\partial W\|$",
                 parent: Figure | SubFigure | None = None, cols: int = 3) -> Figure | SubFigure:
    """One panel per arch (`cols` per row): `quantity` against depth index, plain vs residual.

    Lines are the geometric mean over seeds, bands the min-max; values that are
    exactly 0 cannot sit on a log axis, so the panel says how many there are.
    """
    archs = list(dict.fromkeys(df.arch))
    fig, axes = _panels(len(archs), parent, cols=cols)
    for ax, arch in zip(axes, archs):
        depth = REGISTRY[arch].depth
        names = {"residual": arch, "plain": twin_name(arch)}
        sub = df[(df.arch == arch) & (df.quantity == quantity)]
        notes = []
        for variant in VARIANTS:
            v = sub[sub.variant == variant]
            pos = v[v.value > 0]
            if len(pos) < len(v):
                notes.append(f"{LABELS[variant]}: {len(v) - len(pos)} values exactly 0 (not drawn)")
            if pos.empty:
                continue
            stats = np.log10(pos.value).groupby(pos.depth_index).agg(["mean", "min", "max"])
            colour = S.net_colour(variant == "residual", depth)
            ax.plot(stats.index, 10 ** stats["mean"], color=colour, ls=LINES[variant], lw=1.4,
                    label=f"{names[variant]} ({LABELS[variant]})")
            if v.seed.nunique() > 1:
                ax.fill_between(stats.index, 10 ** stats["min"], 10 ** stats["max"], color=colour,
                                alpha=0.15 if variant == "residual" else 0.3, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{arch} vs {twin_name(arch)}", fontsize=10)
        ax.set_xlabel("layer (depth index), input → output", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


def plot_summary(summary: pd.DataFrame, parent: Figure | SubFigure | None = None,
                 cols: int = 2) -> Figure | SubFigure:
    """log10(first conv / last conv ||dL/dW||) against total depth, plain vs residual, +-1 std over seeds; the
    legend in `cols` columns above the axes (1 on a phone)."""
    fig, (ax,) = _panels(1, parent, panel_size=(5.5, 3.6))
    for variant in VARIANTS:
        ls = LINES[variant]
        for stem, marker in (("imagenet", "o"), ("cifar", "s")):
            s = summary[(summary.variant == variant) & (summary.arch.map(lambda a: REGISTRY[a].stem) == stem)]
            if s.empty:
                continue
            s = s.sort_values("depth")
            family = "ImageNet" if stem == "imagenet" else "CIFAR"
            residual = variant == "residual"
            ax.errorbar(s.depth, s.log10_ratio_mean, yerr=s.log10_ratio_std.fillna(0), color=S.net_colour(residual),
                        ls=ls, capsize=3, label=f"{LABELS[variant]}, {family}-style (darker: deeper)", zorder=1)
            ax.scatter(s.depth, s.log10_ratio_mean, c=[S.net_colour(residual, d) for d in s.depth], marker=marker,
                       s=36, zorder=2, edgecolors="0.2")
            for x, y in zip(s.depth, s.log10_ratio_mean):  # the ratios the verdict quotes, on the figure
                if np.isfinite(y):
                    ax.annotate(f"×10^{y:.1f}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("total depth (weighted layers)")
    ax.set_ylabel("log10 (first conv ‖∂L/∂W‖ / last conv's)\n0: even; 7: first is 10^7 times larger", fontsize=8)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside upper center", ncols=cols, fontsize=7)  # above the axes: never over a curve
    return fig


def plot_all(df: pd.DataFrame, cols: int = 3) -> Figure:
    """The three plots stacked in one Figure (what the CLI's --plot writes); `cols=1`: one panel per row, for a
    phone."""
    from matplotlib.figure import Figure

    n = df.arch.nunique()
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    width = 4.2 * cols if cols > 1 else S.NARROW_WIDTH
    panel_h = 3.2 if cols > 1 else 3.2 * S.NARROW_WIDTH / 4.2
    top, middle, bottom = Figure(figsize=(width, 2 * panel_h * rows + 3.6), layout="constrained").subfigures(
        3, 1, height_ratios=[panel_h * rows, panel_h * rows, 3.6])
    plot_profile(df, "grad_w", parent=top, cols=cols)
    top.suptitle("‖∂L/∂W‖: the gradient of each conv's weights", fontsize=10)
    plot_profile(df, "grad_x", r"$\|\partial L/\partial x\|$ at block output", parent=middle, cols=cols)
    middle.suptitle("‖∂L/∂x‖: the gradient at each block's output", fontsize=10)
    plot_summary(summarize(df), parent=bottom, cols=1 if cols == 1 else 2)
    return top.figure
