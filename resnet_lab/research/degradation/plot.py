"""The degradation figure, made without pyplot (no global state: safe in Gradio's worker threads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ...resnet import REGISTRY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE = {20: "tab:green", 56: "tab:purple", 32: "tab:orange", 44: "tab:brown", 110: "tab:gray"}


def plot_curves(df: pd.DataFrame) -> Figure:
    """Smoothed training loss (left) and accuracy with validation points (right): plain dashed, ResNet solid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for arch in dict.fromkeys(df.arch):
        d = df[df.arch == arch]
        cfg = REGISTRY[arch]
        style = {"color": STYLE.get(cfg.depth, "black"), "ls": "-" if cfg.residual else "--"}
        loss, acc = (d[d.metric == m].sort_values("step") for m in ("train_loss_smooth", "train_acc_smooth"))
        val = d[d.metric == "val_acc"].sort_values("step")
        ax_loss.plot(loss.step, loss.value, label=arch, **style)
        ax_acc.plot(acc.step, acc.value, lw=1, label=f"{arch} train", **style)
        ax_acc.plot(val.step, val.value, marker="o", ms=4, lw=2, alpha=0.8, label=f"{arch} val", **style)
    ax_loss.set(xlabel="step", ylabel="training loss (smoothed)")
    ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncols=2 if ax is ax_acc else 1)
    return fig
