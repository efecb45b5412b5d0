"""The evaluate command's figures: a confusion matrix and a reliability diagram of an `EvaluationResult`.

matplotlib Figures made without pyplot (no global state: safe in Gradio's worker threads).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .metrics import EvaluationResult

NAMES_ON_AXES_MAX = 30  # above this many classes the confusion matrix's tick labels would be unreadable
VALUES_IN_CELLS_MAX = 12


def confusion_figure(result: EvaluationResult) -> Figure:
    """The confusion matrix normalized per true class (each row sums to 1), as a Figure (no pyplot)."""
    c = result.num_classes
    counts = result.class_counts[:, None]
    norm = np.where(counts > 0, result.confusion / np.maximum(counts, 1), 0.0)
    side = min(12.0, 3.0 + 0.35 * c)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if c <= NAMES_ON_AXES_MAX:
        ax.set_xticks(range(c), result.classes, rotation=90 if c > 8 else 45, ha="right" if c <= 8 else "center")
        ax.set_yticks(range(c), result.classes)
    if c <= VALUES_IN_CELLS_MAX:
        for i in range(c):
            for j in range(c):
                if result.confusion[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion (top-1 {result.top1:.2%}, n={result.n})")
    fig.tight_layout()
    return fig


def reliability_figure(result: EvaluationResult) -> Figure:
    """Accuracy per confidence bin against the diagonal, the gap to the bin's mean confidence shaded."""
    rows = result.reliability()
    width = 1.0 / result.bins
    left = np.array([r["lo"] for r in rows])
    filled = np.array([r["count"] > 0 for r in rows])
    acc = np.nan_to_num(np.array([r["accuracy"] for r in rows]))
    conf = np.nan_to_num(np.array([r["confidence"] for r in rows]))
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.bar(left[filled], acc[filled], width=width, align="edge", color="tab:blue", edgecolor="black",
           label="accuracy")
    ax.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width, align="edge",
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability: ECE {result.ece:.2%} ({result.bins} bins, n={result.n})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
