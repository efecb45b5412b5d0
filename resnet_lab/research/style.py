"""One look for every Research figure, written once so a reader learns it once: colour = depth, solid = ResNet,
dashed = its plain twin, dotted black = chance; and one way to lay panels out, in a row for a wide screen or one
column (`cols=1`) for a phone, so no figure has to be shrunk until its text cannot be read."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..resnet import REGISTRY

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# colour = depth (the same depth has the same colour in every figure); CIFAR-style depths first, then ImageNet's
DEPTH_COLOURS = {20: "tab:green", 32: "tab:orange", 44: "tab:brown", 56: "tab:purple", 110: "tab:gray",
                 18: "tab:olive", 34: "tab:cyan", 50: "tab:pink", 101: "tab:red", 152: "tab:blue"}
OTHER_COLOUR = "black"  # a model whose depth is not in the registry
RESNET_LINE, PLAIN_LINE = "-", "--"
CHANCE = {"color": "black", "ls": ":", "lw": 1.0}  # where accuracy or loss is at chance (guessing)
CHANCE_CONTOUR = {"colors": "red", "linestyles": ":", "linewidths": 1.4}  # loss = ln C on a map: the basin's edge
CONVENTION = "colour: depth · solid: ResNet · dashed: plain twin (no shortcuts) · dotted black: chance"
NARROW_WIDTH = 4.4  # inches of a one-column figure: ~440 px at 100 dpi, a phone's width at about 1:1


def arch_of(model: str) -> str | None:
    """The registered arch a plotted model's name starts with ("resnet56 (run 2)" -> "resnet56"), or None."""
    arch = str(model).split(" ")[0]
    return arch if arch in REGISTRY else None


def line_style(model: str) -> dict[str, Any]:
    """The colour (depth) and line style (solid ResNet, dashed plain) of a model's lines."""
    arch = arch_of(model)
    if arch is None:
        return {"color": OTHER_COLOUR, "ls": RESNET_LINE}
    cfg = REGISTRY[arch]
    return {"color": DEPTH_COLOURS.get(cfg.depth, OTHER_COLOUR), "ls": RESNET_LINE if cfg.residual else PLAIN_LINE}


def depth_colour(depth: int) -> str:
    return DEPTH_COLOURS.get(depth, OTHER_COLOUR)


def chance_line(ax: Axes, y: float, label: str = "chance") -> None:
    """A dotted black horizontal line at chance level `y`, in the legend as `label`."""
    ax.axhline(y, label=label, zorder=1, **CHANCE)


def panels(n: int, cols: int | None, panel: tuple[float, float], extra: tuple[float, float] = (0.0, 0.0),
           **subplots: Any) -> tuple[Figure, list[Axes]]:
    """A Figure of `n` panels, `cols` per row (default all in one row; 1 for a phone), each `panel` inches, plus
    `extra` inches (a colour bar, a legend); unused cells hidden. Narrow figures keep the panel's proportions."""
    from matplotlib.figure import Figure

    cols = max(1, min(cols or n, n))
    rows = math.ceil(n / cols)
    w, h = panel
    if cols == 1 and w > NARROW_WIDTH:
        w, h = NARROW_WIDTH, h * NARROW_WIDTH / w
    fig = Figure(figsize=(w * cols + extra[0], h * rows + extra[1]), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **subplots)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def legend_outside(fig: Figure, axes: list[Axes], cols: int | None = None, **kw: Any) -> None:
    """One legend for the whole figure, above the panels (never over a curve), entries gathered from `axes`
    without repeats; two columns on a narrow figure."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    wide = kw.pop("ncols", 4)
    if handles:
        ncols = 2 if cols == 1 else min(len(handles), wide)
        fig.legend(handles.values(), handles.keys(), loc="outside upper center", ncols=ncols, fontsize=8, **kw)
