"""Research section 3: loss landscapes of the trained twins (Li et al. 2018, Fig. 5).

Shipped: the 2-D contours of plain-20, ResNet-20, plain-56 and ResNet-56 (`assets/landscape_shapes*`), with the
numbers that say what the picture says and the library's reading of them (`landscape.describe_landscape`). Live: a
1-D slice through a chosen twin pair, its grid and image count cut by the library (`landscape.quick_settings`) to
finish within about 25 s on a 2-core CPU, on the app's device, in the LONG queue group, refused up front if it would
not fit.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ...research import landscape
from ...resnet import REGISTRY, twin_name
from ...serving.zoo import SHAPES_CHECKPOINT
from ...weights import load_checkpoint
from ..common import LONG, on_gpu, tmp_file, user_errors, zoo
from . import _common

SHAPES_NET = "app-shapes"  # the app's own Shapes ResNet-20 (no twin): offered even before any twin is shipped
SPAN_RANGE = (0.1, 2.0)
LIVE_BUDGET_S = 25.0  # the live run's estimated seconds on a 2-core CPU, at most (the library cuts grid and images)
TABLE_COLUMNS = {"model": "net", "loss0": "loss at w₀", "acc0": "accuracy at w₀", "step": "step",
                 "rise_mean": "mean loss rise", "rise_max": "largest loss rise", "acc_drop": "accuracy drop",
                 "nonconvex_share": "non-convex share", "median_ratio": "median |λmin/λmax|",
                 "nonconvex_center": "non-convex share near w₀", "local_minima": "local minima on the grid"}
PERCENT = ("acc0", "acc_drop", "nonconvex_share", "nonconvex_center")
SHIPPED_COMMAND = ("python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --dims 2 --grid 21 "
                   "--span 1.0 --n 500 --out assets --stem landscape_shapes")


def pair_choices(twins: dict[str, Path] | None = None) -> list[tuple[str, str]]:
    """(label, value) per live choice: each twin pair both of whose checkpoints exist, a lone twin where its pair's
    other half is missing, and the app's Shapes ResNet-20 (always shipped) last. A value is a comma-separated list
    of archs (or `SHAPES_NET`), never a path: the server maps it onto its own files."""
    twins = _common.twin_checkpoints() if twins is None else twins
    out, seen = [], set()
    for arch in twins:
        if arch in seen:
            continue
        res, plain = (arch, twin_name(arch)) if REGISTRY[arch].residual else (twin_name(arch), arch)
        both = [a for a in (res, plain) if a in twins]
        seen.update(both)
        label = f"{res} vs {plain} (trained twins)" if len(both) == 2 else f"{both[0]} (its twin is not shipped)"
        out.append((label, ",".join(both)))
    return out + [("resnet20, the app's Shapes model (no twin)", SHAPES_NET)]


def _checkpoints(choice: str | None) -> list[Path]:
    """The files behind a choice, or a message naming the offered ones (an API user may send anything)."""
    offered = dict((v, k) for k, v in pair_choices())
    if choice not in offered:
        raise gr.Error(f"Pick one of the offered nets: {'; '.join(offered.values())}.", title="Unknown choice")
    if choice == SHAPES_NET:
        return [SHAPES_CHECKPOINT]
    twins = _common.twin_checkpoints()
    return [twins[a] for a in choice.split(",")]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """`landscape.summarize` as people read it: named columns, shares in %, other numbers to 3 digits; a measure
    that no net has (a 1-D slice has no curvature map) is left out rather than shown empty."""
    s = landscape.summarize(df).drop(columns="dims").dropna(axis="columns", how="all")
    for col in s.columns.drop("model"):
        fmt = "{:.1%}" if col in PERCENT else "{:.3g}"
        s[col] = [fmt.format(v) if pd.notna(v) else "–" for v in s[col]]
    return s.rename(columns=TABLE_COLUMNS)


def shipped_figure() -> Path | None:
    """The shipped 2-D contour PNG (`landscape.write_results` names it <stem>_2d.png), else <stem>.png, else the
    1-D plot, if there is one."""
    stem = landscape.SHIPPED_CSV.with_suffix("")
    return next((p for p in (Path(f"{stem}_2d.png"), Path(f"{stem}.png"), Path(f"{stem}_1d.png")) if p.is_file()),
                None)


def shipped_results() -> tuple[str | None, pd.DataFrame | None, str | None, str]:
    """(contour PNG, summary table, CSV path, text) of the shipped run, or Nones and a note saying what is missing
    and how to make it. A PNG missing beside its CSV is drawn from the CSV."""
    csv = landscape.SHIPPED_CSV
    if not csv.is_file():
        return None, None, None, _common.shipped_note("Loss landscapes", [csv], SHIPPED_COMMAND)
    try:
        df = landscape.read_csv(csv)
        table, text = summary_table(df), landscape.describe_landscape(df)
    except (ValueError, KeyError) as e:
        return None, None, None, f"**The shipped landscape `{csv.name}` cannot be read:** {e}"
    png = shipped_figure()
    if png is None:
        png = tmp_file(".png", "landscape_", "landscape_shapes.png")
        (landscape.plot_2d(df) if df.beta.nunique() > 1 else landscape.plot_1d(df)).savefig(png, dpi=100)
    dims = "2-D" if df.beta.nunique() > 1 else "1-D"
    grid = df.alpha.nunique()
    return str(png), table, str(csv), f"**Shipped run** ({dims}, {grid} points per axis):\n\n{text}"


def live_settings(archs: list[str]) -> dict[str, Any]:
    """The live run's grid and image count for these nets, cut by the library until its estimate fits
    `LIVE_BUDGET_S` on a 2-core CPU (`landscape.quick_settings`; "seconds" is that estimate)."""
    return landscape.quick_settings(archs, LIVE_BUDGET_S)


def check_memory(archs: list[str], n: int) -> None:
    """Refuse a live run whose estimated peak (`landscape.estimate_memory`) exceeds what this server can spare."""
    _common.refuse_if_too_big(landscape.estimate_memory(archs, n), _common.memory_budget(zoo().device.type),
                              f"This landscape ({' and '.join(archs)})",
                              "Pick a shallower pair, or try again when the server is less busy.")


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _compute(files: tuple[tuple[str, int, int], ...], grid: int, n: int, span: float, seed: int,
             progress: _common.Untracked) -> tuple[pd.DataFrame, float]:
    """The live run (deterministic, so cached per files, their versions and settings) and its seconds."""
    t = time.perf_counter()
    models = [load_checkpoint(f) for f, _, _ in files]
    df = landscape.compute_landscape(models, grid=grid, span=span, dims=1, n=n, seed=seed, device=zoo().device,
                                     progress=progress.value)
    return df, time.perf_counter() - t


def run_landscape(choice: str | None, span: float = 1.0, seed: int = 0,
                  progress: Any = gr.Progress()) -> tuple[Any, pd.DataFrame, str, str]:
    """(1-D plot, summary table, CSV path, text) of the chosen nets along one filter-normalized direction."""
    files = _checkpoints(choice)
    span, seed = float(span), int(seed)
    if not SPAN_RANGE[0] <= span <= SPAN_RANGE[1]:
        raise gr.Error(f"The span must be between {SPAN_RANGE[0]} and {SPAN_RANGE[1]}, not {span}.")
    archs = [load_arch(f) for f in files]
    q = live_settings(archs)
    check_memory(archs, q["n"])
    hits = _compute.cache_info().hits
    df, seconds = _compute(tuple(_stamp(f) for f in files), q["grid"], q["n"], span, seed,
                           _common.Untracked(progress))
    csv = tmp_file(".csv", "landscape_", f"landscape_{'_'.join(archs)}_span{span:g}_seed{seed}.csv")
    df.to_csv(csv, index=False, float_format="%.7g")
    again = _compute.cache_info().hits > hits  # this answer came from the cache
    text = landscape.describe_landscape(df)
    text += (f"\n\n⏱️ {q['grid']} points × {q['n']} held-out images per net: "
             + ("cached, it first " if again else "") + f"took {_common.duration(seconds)} on this server "
             f"(estimated {_common.duration(q['seconds'])} on a 2-core CPU).")
    return landscape.plot_1d(df), summary_table(df), str(csv), text


def load_arch(path: Path) -> str:
    """The arch a checkpoint's JSON names (read without loading the weights)."""
    return str(json.loads(path.with_suffix(".json").read_text())["arch"])


def build() -> None:
    """The section's components and events, inside the caller's Blocks."""
    gr.Markdown(
        "### Loss landscape: what the shortcuts do to the surface a solver walks on\n"
        "Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets*, Fig. 5: the held-out loss around each "
        "trained net's weights w₀, at w₀ + α·d₁ + β·d₂ for random directions d whose every filter is scaled to the "
        "norm of the same filter of w₀ (so nets of different scale compare); biases and BN are not moved, BN runs "
        "on its running statistics. A net and its twin get the same random tensors. Numbers, not only pictures: "
        "the loss rise a fixed step away, and the share of the surface that is non-convex.")
    png, table, csv, note = shipped_results()
    with gr.Row():
        with gr.Column(scale=3):
            gr.Image(png, label="Shipped: 2-D loss contours (log-spaced levels)", type="filepath",
                     interactive=False, visible=png is not None, elem_id="landscape-shipped-plot")
        with gr.Column(scale=2):
            gr.Markdown(note, elem_id="landscape-shipped-text")
            gr.Dataframe(table, label="Shipped: what the surfaces measure", interactive=False, wrap=True,
                         visible=table is not None, elem_id="landscape-shipped-table")
            gr.File(csv, label="Shipped grid (CSV)", visible=csv is not None, elem_id="landscape-shipped-csv")
    choices = pair_choices()
    with gr.Row(equal_height=True):
        pair = gr.Dropdown(choices, value=choices[0][1], label="Nets (a trained twin pair where shipped)", scale=3,
                           elem_id="landscape-pair")
        span = gr.Slider(*SPAN_RANGE, 1.0, step=0.1, label="Span: α from −span to span", scale=2)
        seed = gr.Number(0, precision=0, minimum=0, label="Direction seed", scale=1)
    archs = choices[0][1].split(",") if choices[0][1] != SHAPES_NET else ["resnet20"]
    q = live_settings(archs)
    run = gr.Button(f"Compute a 1-D slice live (about {_common.duration(q['seconds'])} for {' and '.join(archs)} "
                    "on a 2-core CPU)", elem_id="landscape-run")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.Plot(label="Live: loss and accuracy along one direction", format="png",
                           elem_id="landscape-plot")
        with gr.Column(scale=2):
            text = gr.Markdown(elem_id="landscape-text")
            out_table = gr.Dataframe(label="Live: what the slice measures", interactive=False, wrap=True,
                                     elem_id="landscape-table")
            out_csv = gr.File(label="Live slice (CSV)", elem_id="landscape-csv")
    run.click(on_gpu(user_errors(run_landscape)), [pair, span, seed], [plot, out_table, out_csv, text],
              api_name="landscape", **LONG)
