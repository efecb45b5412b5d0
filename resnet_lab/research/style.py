"""One look for every figure, written once so a reader learns it once, in Research as in the Playground: colour =
the kind of net (plain twin orange, ResNet blue: Okabe-Ito's pair, told apart by colour-blind readers too), its shade
= depth (lighter shallow, darker deep), and in Research also dashed = plain, solid = ResNet; dotted black = chance.
And one way to lay panels out, in a row for a wide screen or one column (`cols=1`) for a phone, so no figure has
to be shrunk until its text cannot be read."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.resnet import REGISTRY

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLAIN_COLOUR, RESNET_COLOUR = "#E69F00", "#0072B2"  # Okabe-Ito orange and blue; the Playground's too
# the depths in shade order (lighter shallow, darker deep): the same depth has the same shade in every figure
DEPTHS = (18, 20, 32, 34, 44, 50, 56, 101, 110, 152)
OTHER_COLOUR = "black"  # a model whose depth is not in the registry
RESNET_LINE, PLAIN_LINE = "-", "--"
CHANCE = {"color": "black", "ls": ":", "lw": 1.0}  # where accuracy or loss is at chance (guessing)
CHANCE_CONTOUR = {"colors": "red", "linestyles": ":", "linewidths": 1.4}  # loss = ln C on a map: the basin's edge
CONVENTION = ("orange, dashed: plain twin (no shortcuts) · blue, solid: ResNet · darker: deeper · dotted black: "
              "chance")
NARROW_WIDTH = 4.4  # inches of a one-column figure: ~440 px at 100 dpi, a phone's width at about 1:1


def arch_of(model: str) -> str | None:
    """The registered arch a plotted model's name starts with ("resnet56 (run 2)" -> "resnet56"), or None."""
    arch = str(model).split(" ")[0]
    return arch if arch in REGISTRY else None


def net_colour(residual: bool, depth: int | None = None) -> str:
    """Orange for a plain net, blue for a ResNet, shaded by depth (the middle depths the pure colour, the shallowest
    mixed with white, the deepest with black); a depth not in `DEPTHS` gets the pure colour."""
    from matplotlib.colors import to_hex, to_rgb

    rgb = np.array(to_rgb(RESNET_COLOUR if residual else PLAIN_COLOUR))
    if depth not in DEPTHS:
        return to_hex(rgb)
    f = DEPTHS.index(depth) / (len(DEPTHS) - 1) - 0.5  # -0.5 (shallowest) .. 0.5 (deepest)
    return to_hex(rgb + (1 - rgb) * -f * 0.9 if f < 0 else rgb * (1 - f * 0.8))


def line_style(model: str) -> dict[str, Any]:
    """The colour (orange plain, blue ResNet, shade = depth) and line style (solid ResNet, dashed plain) of a
    model's lines."""
    arch = arch_of(model)
    if arch is None:
        return {"color": OTHER_COLOUR, "ls": RESNET_LINE}
    cfg = REGISTRY[arch]
    return {"color": net_colour(cfg.residual, cfg.depth), "ls": RESNET_LINE if cfg.residual else PLAIN_LINE}


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
