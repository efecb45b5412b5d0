"""Curvature figures: the eigenvalue density of each net (log scale, as PyHessian draws it) with the numbers the
verdict quotes written on it, and Li et al.'s |lambda_min/lambda_max| map on the landscape's plane; in the Research
figures' one style (`research.style`), `cols=1` for a phone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ...models.resnet import REGISTRY
from .. import style as S
from .describe import spectrum_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _depth(model: str) -> int:
    arch = S.arch_of(model)
    return REGISTRY[arch].depth if arch else 0


def numbers_label(model: str, row: pd.Series) -> str:
    """A net's legend entry: its mean top eigenvalue and trace over the image sets, as the verdict quotes them."""
    sets = f" ({int(row.sets)} image sets)" if row.sets > 1 else ""
    return f"{model}: λmax {row.lambda_max_mean:.0f}, trace {row.trace_mean:.0f}{sets}"


def plot_density(dens: pd.DataFrame, spec: pd.DataFrame, cols: int | None = None) -> Figure:
    """Density of the Hessian's eigenvalues per net (log y), one panel per depth; each net's mean top eigenvalue
    (sharpness) a vertical line, its value and trace in the legend: the numbers the verdict quotes."""
    models = list(dict.fromkeys(dens.model))
    depths = sorted({_depth(m) for m in models})
    table = spectrum_table(spec).set_index("model") if len(spec) else pd.DataFrame()
    fig, axes = S.panels(len(depths), cols, (5.2, 3.6), extra=(0, 0.2))
    for ax, depth in zip(axes, depths):
        for m in [m for m in models if _depth(m) == depth]:
            d = dens[dens.model == m]
            style = S.line_style(m)
            label = numbers_label(m, table.loc[m]) if m in table.index else m
            ax.plot(d.eigenvalue, d.density.clip(lower=1e-8), label=label, **style)
            if m in table.index:
                ax.axvline(table.loc[m].lambda_max_mean, lw=1.0, alpha=0.8, **style)
        ax.set(yscale="log", xlabel="eigenvalue of the Hessian (curvature along that direction)",
               ylabel="density of eigenvalues", ylim=(1e-8, None),
               title=f"{depth} layers: vertical lines at λmax (sharpness)" if depth else "")
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
