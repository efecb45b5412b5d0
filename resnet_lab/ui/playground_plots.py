"""The Playground's live figures, as Vega-Lite specs that `gr.Plot` draws in the browser (the server renders
nothing: a spec is a few kB of JSON, made in milliseconds, once a second).

One convention in every figure: colour is the net (plain orange, ResNet blue: Okabe-Ito's pair, told apart with
any colour vision), line style is what is drawn (training solid, held-out dashed through its measured points; an
update ratio's stage solid, dashed or dotted). Axes are named with their units, chance is a grey dotted line (1/K
on accuracy, ln K on loss) named in the subtitle, not over the curves, every point shows its values on hover, and
each figure's title is drawn inside it (a Gradio label badge would sit on the drawing).
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
from gradio.components.plot import AltairPlotData
from PIL import Image

from ..research import playground as pg
from ..research.style import PLAIN_COLOUR, RESNET_COLOUR

PLAIN, RESNET = PLAIN_COLOUR, RESNET_COLOUR  # the app's one pair (research.style): Okabe-Ito orange and blue
LOSS_CAP = 1.5  # a loss is drawn up to this times the largest training loss seen (see `curves`)
MAX_POINTS = 500  # training points drawn per net (thinned evenly beyond: a trailing mean, nothing is lost)
HEIGHT = 260  # pixels of a figure's drawing area
CURVES = ("train", "held-out")
DASHES = {"train": [1, 0], "held-out": [6, 4]}
STAGE_DASHES = ([1, 0], [7, 3], [2, 2], [10, 3, 2, 3])


def net_colors(nets: list[str]) -> dict:
    """The colour scale of `nets` (labels such as "plain-56", "ResNet-56"): plain orange, ResNet blue."""
    return {"domain": nets, "range": [PLAIN if n.startswith("plain") else RESNET for n in nets]}


def chart(title: str, subtitle: list[str], layers: list[dict], data: list[dict] | None = None,
          height: int = HEIGHT) -> AltairPlotData:
    """A layered Vega-Lite chart. Sent as Gradio's own Altair payload (no altair needed): for a "scatter" chart
    Gradio's front end sizes it to its box's width (also when the box resizes: a phone's column) and styles the
    axes with the page's theme; every mark here sets its own colours, so the theme's accent colour touches none."""
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "height": height, "encoding": {},
            "usermeta": {"embedOptions": {"actions": False}},  # no "..." menu on the drawing
            "title": {"text": title, "subtitle": subtitle, "anchor": "start", "fontSize": 14}, "layer": layers}
    if data is not None:
        spec["data"] = {"values": data}
    return AltairPlotData(chart="scatter", plot=json.dumps(spec, allow_nan=False))


def _x(steps: int) -> dict:
    return {"field": "step", "type": "quantitative", "title": "step", "scale": {"domain": [0, steps]}}


def _legend(top: bool = False) -> dict:
    """Line-style legends above the drawing, the nets' below: side by side they overflowed a phone's width."""
    return {"orient": "top" if top else "bottom", "title": None, "symbolType": "stroke", "symbolStrokeWidth": 2.5,
            "symbolSize": 250}


def _rule(y: float) -> list[dict]:
    """A grey dotted horizontal line at `y` (chance); its words are in the subtitle, not on the curves that run
    along it (a label there covered the plain net's line, the key evidence)."""
    return [{"data": {"values": [{"y": y}]}, "mark": {"type": "rule", "color": "#777", "strokeDash": [3, 3]},
             "encoding": {"y": {"field": "y", "type": "quantitative"}}}]


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last `window` values at each point (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def curves(snap: pg.Snapshot, metric: str) -> list[dict]:
    """Rows {net, curve, step, value} of each net's training `metric` (a trailing mean over ~1/25 of the run: one
    step's value is one batch's; at most `MAX_POINTS` a net) and its held-out value at each check, plain net first.
    Built with numpy, not pandas: this runs once a second beside the training."""
    df = snap.curves
    net, kind, step, value = (df[c].to_numpy() for c in ("net", "metric", "step", "value"))
    rows: list[dict] = []
    for curve, name in (("train", f"train_{metric}"), ("held-out", f"val_{metric}")):
        for n in dict.fromkeys(net[kind == name]):
            pick = (kind == name) & (net == n)
            s, v = step[pick].astype(int), value[pick].astype(float)
            if curve == "train":
                v = _trailing_mean(v, max(1, snap.steps // 25))
                keep = np.unique(np.linspace(0, len(v) - 1, min(len(v), MAX_POINTS)).round().astype(int))
                s, v = s[keep], v[keep]
            ok = np.isfinite(v)
            rows += [{"net": n, "curve": curve, "step": a, "value": b} for a, b in zip(s[ok].tolist(), v[ok].tolist())]
    return rows


def curve_plot(snap: pg.Snapshot, metric: str, classes: int) -> AltairPlotData | None:
    """Loss ("loss") or accuracy ("acc") of both nets, training solid and held-out dashed through its points, with
    chance marked: ln K on loss, 1/K on accuracy. A loss is drawn up to `LOSS_CAP` times the largest training loss
    (a held-out loss of thousands, BatchNorm's running statistics before they settle, would flatten every other
    curve): a value above is drawn at the top edge, and its hover says its value."""
    rows = curves(snap, metric)
    if not rows:
        return None
    nets = list(dict.fromkeys(r["net"] for r in rows))
    if metric == "acc":
        for r in rows:
            r["value"] = round(100 * r["value"], 2)
        top, title, fmt = 100.0, "accuracy (%)", ".1f"
        rule = _rule(100 / classes)
        subtitle = ["training: trailing mean; held-out: images never trained on",
                    f"grey dotted: chance, 1/{classes} = {100 / classes:.1f} %"]
    else:
        train = [r["value"] for r in rows if r["curve"] == "train"]
        top = max(LOSS_CAP * max(train) if train else max(r["value"] for r in rows), 1.1 * math.log(classes))
        title, fmt = "cross-entropy loss", ".3f"
        rule = _rule(math.log(classes))
        subtitle = ["training: trailing mean; held-out: images never trained on",
                    f"grey dotted: chance, ln {classes} = {math.log(classes):.2f}; held-out values above {top:.1f} "
                    "sit on the top edge"]
    for r in rows:
        r["value"] = round(r["value"], 4)
        r["shown"] = min(r["value"], top)
    y = {"field": "shown", "type": "quantitative", "title": title, "scale": {"domain": [0, top]}}
    color = {"field": "net", "type": "nominal", "scale": net_colors(nets), "legend": _legend()}
    dash = {"field": "curve", "type": "nominal", "legend": _legend(top=True),
            "scale": {"domain": list(CURVES), "range": [DASHES[c] for c in CURVES]}}
    tooltip = [{"field": "net"}, {"field": "curve"}, {"field": "step", "type": "quantitative"},
               {"field": "value", "type": "quantitative", "title": title, "format": fmt}]
    layers = [
        {"mark": {"type": "line", "strokeWidth": 2, "clip": True},
         "encoding": {"x": _x(snap.steps), "y": y, "color": color, "strokeDash": dash}},
        {"transform": [{"filter": "datum.curve == 'held-out'"}],
         "mark": {"type": "point", "filled": True, "size": 45, "strokeWidth": 0, "clip": True},
         "encoding": {"x": _x(snap.steps), "y": y, "color": color, "tooltip": tooltip}},
        {"mark": {"type": "point", "opacity": 0, "size": 60, "strokeWidth": 0},  # hover targets on every point
         "encoding": {"x": _x(snap.steps), "y": y, "tooltip": tooltip}},
        *rule]
    return chart("Accuracy" if metric == "acc" else "Loss", subtitle, layers, rows)


def ratio_plot(snap: pg.Snapshot) -> AltairPlotData | None:
    """Each stage's weight-update ratio ‖ΔW‖/‖W‖ on a log axis: colour the net, line style the stage."""
    df = snap.ratios
    net, step, stage, ratio = (df[c].to_numpy() for c in ("net", "step", "stage", "ratio"))
    ok = np.isfinite(ratio.astype(float)) & (ratio.astype(float) > 0)
    if not ok.any():
        return None
    rows = [{"net": n, "step": s, "stage": g, "ratio": float(f"{r:.4g}")}
            for n, s, g, r in zip(net[ok].tolist(), step[ok].tolist(), stage[ok].tolist(), ratio[ok].tolist())]
    nets, stages = list(dict.fromkeys(net[ok])), list(dict.fromkeys(stage[ok]))
    tooltip = [{"field": "net"}, {"field": "stage"}, {"field": "step", "type": "quantitative"},
               {"field": "ratio", "type": "quantitative", "title": "‖ΔW‖/‖W‖", "format": ".2e"}]
    r = ratio[ok].astype(float)
    decades = [10.0 ** k for k in range(math.floor(math.log10(r.min())), math.ceil(math.log10(r.max())) + 1)]
    if len(decades) == 1:
        decades.append(decades[0] * 10)
    y = {"field": "ratio", "type": "quantitative", "title": "‖ΔW‖ / ‖W‖ (log scale)",  # ticks at whole decades
         "scale": {"type": "log", "domain": [decades[0], decades[-1]]}, "axis": {"format": ".0e", "values": decades}}
    layers = [
        {"mark": {"type": "line", "strokeWidth": 2},
         "encoding": {"x": _x(snap.steps), "y": y,
                      "color": {"field": "net", "type": "nominal", "scale": net_colors(nets), "legend": _legend()},
                      "strokeDash": {"field": "stage", "type": "nominal", "legend": _legend(top=True),
                                     "scale": {"domain": stages, "range": list(STAGE_DASHES[:len(stages)])}}}},
        {"mark": {"type": "point", "opacity": 0, "size": 60, "strokeWidth": 0},
         "encoding": {"x": _x(snap.steps), "y": y, "tooltip": tooltip}}]
    return chart("Update ratio per stage", [f"every {_every(step[ok])} steps: how far one step moves a stage's "
                                            "weights,", "relative to their size"], layers, rows)


def _every(steps: np.ndarray) -> int:
    steps = sorted(set(steps.tolist()))
    return int(steps[1] - steps[0]) if len(steps) > 1 else 1


def _png(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def map_plots(snap: pg.Snapshot) -> tuple[AltairPlotData | None, AltairPlotData | None]:
    """Each net's layers x steps map of log10 gradient norms (viridis: dark small, bright large), both on one
    colour scale, each with its axes and the scale's colour bar; (plain, ResNet), None for a net not seen yet.

    The map is a small PNG (one pixel a layer and a kept step) that the browser stretches over the plot area
    without smoothing: no figure is rendered on the server."""
    from matplotlib import colormaps

    maps = sorted(((n, m) for n, m in snap.grad_maps.items() if m.size), key=lambda kv: not kv[0].startswith("plain"))
    finite = np.concatenate([m[np.isfinite(m)] for _, m in maps]) if maps else np.array([])
    if not finite.size:
        return None, None
    lo, hi = float(finite.min()), float(finite.max())
    hi = max(hi, lo + 1e-6)
    every = max(1, math.ceil(snap.steps / pg.MAX_COLUMNS))
    first = snap.grad_steps[0] if snap.grad_steps else 0
    out: dict[str, AltairPlotData] = {}
    for net, m in maps:
        norm = np.nan_to_num(np.clip((m - lo) / (hi - lo), 0, 1), nan=0.0)
        rgb = (colormaps["viridis"](norm)[..., :3] * 255).astype(np.uint8)
        layers_n, cols = m.shape
        image = {"data": {"values": [{"x0": first, "x1": first + cols * every, "y0": 0.5, "y1": layers_n + 0.5,
                                      "url": _png(rgb)}]},
                 "mark": {"type": "image", "aspect": False, "smooth": False},
                 "encoding": {"x": {"field": "x0", "type": "quantitative", "title": "step",
                                    "scale": {"domain": [0, snap.steps]}},
                              "x2": {"field": "x1"},
                              "y": {"field": "y0", "type": "quantitative", "title": "conv layer (1 = input side)",
                                    "scale": {"domain": [0.5, layers_n + 0.5], "reverse": True, "nice": False},
                                    "axis": {"tickMinStep": 1, "format": "d"}},
                              "y2": {"field": "y1"}, "url": {"field": "url", "type": "nominal"}}}
        bar = {"data": {"values": [{"v": lo, "x": 0, "y": 1}, {"v": hi, "x": 0, "y": 1}]},
               "mark": {"type": "point", "opacity": 0, "strokeWidth": 0},
               "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"},
                            "color": {"field": "v", "type": "quantitative", "scale": {"scheme": "viridis",
                                                                                      "domain": [lo, hi]},
                                      "legend": {"title": "log10 ‖∂L/∂W‖", "orient": "right",
                                                 "gradientLength": HEIGHT - 100, "tickCount": 4,
                                                 "format": ".1f"}}}}
        kind = "plain net" if net.startswith("plain") else "ResNet"
        out[net] = chart(f"{net}: gradient norm of each conv", [f"the {kind}'s layers (rows) over training steps",
                                                                 "(columns); one colour scale for both nets"],
                         [image, bar])
    plain = next((v for n, v in out.items() if n.startswith("plain")), None)
    resnet = next((v for n, v in out.items() if not n.startswith("plain")), None)
    return plain, resnet


def spec(plot: AltairPlotData | None) -> dict[str, Any] | None:
    """The Vega-Lite spec of a figure (for tests and tools)."""
    return None if plot is None else json.loads(plot.plot)
