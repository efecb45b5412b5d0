"""The degradation figure, made without pyplot (no global state: safe in Gradio's worker threads), in the Research
figures' one style (`research.style`: orange dashed = plain, blue solid = ResNet, darker = deeper,
dotted = chance)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from .. import style as S

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_curves(df: pd.DataFrame, cols: int | None = None, num_classes: int = 8) -> Figure:
    """Smoothed training loss (left) and accuracy with held-out points (right), chance marked on both; `cols=1`
    stacks the two panels for a narrow screen."""
    fig, (ax_loss, ax_acc) = S.panels(2, cols, (5.4, 3.6), extra=(0, 0.5))
    for arch in dict.fromkeys(df.arch):
        d = df[df.arch == arch]
        style = S.line_style(arch)
        loss, acc = (d[d.metric == m].sort_values("step") for m in ("train_loss_smooth", "train_acc_smooth"))
        val = d[d.metric == "val_acc"].sort_values("step")
        ax_loss.plot(loss.step, loss.value, label=arch, **style)
        ax_acc.plot(acc.step, acc.value, lw=1, **style)
        ax_acc.plot(val.step, val.value, marker="o", ms=4, lw=0, alpha=0.8, color=style["color"])
    ax_acc.plot([], [], marker="o", ms=4, lw=0, color="gray", label="held-out accuracy (dots)")
    S.chance_line(ax_loss, math.log(num_classes), f"chance: loss ln {num_classes}, accuracy 1/{num_classes}")
    S.chance_line(ax_acc, 1 / num_classes, f"chance: loss ln {num_classes}, accuracy 1/{num_classes}")
    ax_loss.set(xlabel="training step", ylabel="training loss (cross-entropy, smoothed)",
                title="training loss: lower is better")
    ax_acc.set(xlabel="training step", ylabel="accuracy (fraction correct)", ylim=(0, 1),
               title="accuracy: higher is better")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.title.set_fontsize(10)
    S.legend_outside(fig, [ax_loss, ax_acc], cols, ncols=4)
    return fig
