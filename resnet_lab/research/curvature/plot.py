"""Curvature figures: the eigenvalue density of each net (log scale, as PyHessian draws it) and Li et al.'s
|lambda_min/lambda_max| map on the landscape's plane."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..landscape.plot import style

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_density(dens: pd.DataFrame, spec: pd.DataFrame) -> Figure:
    """Density of the Hessian's eigenvalues per net (log y), top eigenvalues marked; one panel per depth."""
    from matplotlib.figure import Figure

    from ...resnet import REGISTRY

    models = list(dict.fromkeys(dens.model))
    depths = sorted({REGISTRY[m].depth if m in REGISTRY else 0 for m in models})
    fig = Figure(figsize=(5.2 * len(depths), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(depths)))
    for ax, depth in zip(axes, depths):
        for m in models:
            if (REGISTRY[m].depth if m in REGISTRY else 0) != depth:
                continue
            d = dens[dens.model == m]
            ax.plot(d.eigenvalue, d.density.clip(lower=1e-8), label=m, **style(m))
            top = spec[(spec.model == m) & (spec.images == "set0") & (spec.quantity == "eigenvalue")].value
            ax.plot(top, np.full(len(top), 1e-7), marker="|", ms=12, ls="none", color=style(m).get("color"))
        ax.set(yscale="log", xlabel="eigenvalue of the Hessian", ylabel="density", ylim=(1e-8, None),
               title=f"{depth} layers" if depth else "")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_map(maps: pd.DataFrame, num_classes: int = 8) -> Figure:
    """|lambda_min / lambda_max| on the plane per net (same colour scale), the basin's edge (loss = ln C) dotted."""
    from matplotlib import cm
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(maps.model))
    top = float(np.nanmax(maps.ratio)) if len(maps) else 1.0
    norm = Normalize(0, min(max(top, 0.05), 1.0))  # capped at 1: one far corner must not wash out the basin
    fig = Figure(figsize=(3.3 * len(models) + 1.2, 3.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
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
            ax.contour(a, b, loss.to_numpy(), levels=[chance], colors="red", linewidths=1.2, linestyles=":")
        ax.plot([0], [0], marker="+", color="white", ms=8)
        ax.set_title(m, fontsize=10, pad=6)
        ax.set_xlabel("α")
    axes[0].set_ylabel("β")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes), shrink=0.85,
                 label="|λmin/λmax|", extend="max" if top > 1.0 else "neither")
    fig.suptitle("|λmin/λmax| of the full Hessian on the landscape's plane\nred dotted: loss = ln C (the basin's "
                 "edge)", fontsize=9)
    return fig
