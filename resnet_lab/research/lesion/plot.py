"""The lesion study's figure, drawn without pyplot (no global state: safe in Gradio's worker threads).

One row per twin pair (a ResNet beside its plain twin of the same depth, so the two can be compared at a glance):
single-block lesion accuracy per block, downsampling blocks marked | mean accuracy with k random blocks deleted;
in the Research figures' one style (`research.style`), `cols=1` stacks the panels for a phone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ...models.resnet import twin_name
from .. import style as S
from .describe import k_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure



def plot_lesion(df: pd.DataFrame, cols: int | None = None) -> Figure:
    """Per twin pair, a row: single-block lesion accuracy per block (downsampling blocks marked) | accuracy vs k;
    `cols=1`: the two panels of each pair one above the other."""
    models = list(dict.fromkeys(df.model))
    groups: dict[str, list[str]] = {}
    for m in models:
        arch = df[df.model == m].arch.iloc[0]
        key = arch if arch.startswith("resnet") else twin_name(arch)
        groups.setdefault(key, []).append(m)
    fig, flat = S.panels(2 * len(groups), 2 if cols is None else cols, (6.0, 4.0))
    axes = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    curves = k_curve(df)
    for (key, ms), (ax_s, ax_k) in zip(groups.items(), axes):
        for m in ms:
            d = df[df.model == m]
            style = S.line_style(str(d.arch.iloc[0]))
            single = d[d.kind == "single"].sort_values("position")
            ax_s.plot(single.position, single.accuracy, marker="o", ms=3, label=m, **style)
            down = single[single.downsampling]
            ax_s.scatter(down.position, down.accuracy.fillna(0.0), marker="s", s=60, facecolors="none",
                         edgecolors=style["color"], zorder=3)
            for pos in single[~single.removable].position:
                ax_s.annotate("not removable", (pos, 0.02), rotation=90, fontsize=7, ha="center", va="bottom",
                              color=style["color"])
            c = curves[curves.model == m].sort_values("k")
            ax_k.plot(c.k, c["mean"], marker="o", ms=3, label=m, **style)
            ax_k.fill_between(c.k, (c["mean"] - c["std"]).clip(0, 1), (c["mean"] + c["std"]).clip(0, 1), alpha=0.2,
                              color=style["color"])
            intact = c[c.k == 0]["mean"]
            if len(intact):
                ax_s.axhline(float(intact.iloc[0]), lw=0.8, alpha=0.6, **style)
        chance = float(df[df.model.isin(ms)].chance.iloc[0])
        for ax in (ax_s, ax_k):
            S.chance_line(ax, chance)
            ax.set(ylim=(0, 1.02), ylabel="held-out accuracy (fraction)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        names = df[df.model == ms[0]]
        names = names[names.kind == "single"].sort_values("position")
        ax_s.set_xticks(names.position, names.block, rotation=90, fontsize=7)
        ax_s.set_title(f"{key} twins: one block deleted\n(squares: downsampling blocks; flat lines: intact net)",
                       fontsize=9)
        ax_s.set_xlabel("block deleted", fontsize=8)
        ax_k.set(xlabel="blocks deleted at random (k)")
        ax_k.set_title(f"{key} twins: k random blocks deleted\n(mean ± std over random orders)", fontsize=9)
    return fig
