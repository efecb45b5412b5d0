"""Research section: loss landscapes of the trained twins (Li et al. 2018, Fig. 5), read with their controls.

Shipped: the 2-D contours of plain-20, ResNet-20, plain-56 and ResNet-56 over five direction seeds
(`assets/landscape_shapes*`), the sharpness study at four radii over ten seeds with its two controls
(`assets/landscape_shapes_sharpness*`), the tables the reading rests on, and the reading itself, computed by the
library (`landscape.describe_landscape`, which the CLI prints too). Live: a 1-D slice through a chosen twin pair,
its grid and image count cut by the library's cost model (`landscape.quick_settings`) to fit about 25 s on the
app's device, in the LONG queue group, refused up front if it would not fit in memory.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ...models.resnet import REGISTRY, twin_name
from ...models.weights import load_checkpoint
from ...research import landscape, verdicts
from ...serving.zoo import SHAPES_CHECKPOINT
from .. import session_nets
from ..common import LONG, on_gpu, tmp_file, user_errors, zoo
from . import _common

SHAPES_NET = "app-shapes"  # the app's own Shapes ResNet-20 (no twin): offered even before any twin is shipped
SPAN_RANGE = (0.1, 2.0)
LIVE_BUDGET_S = 25.0  # the live run's estimated seconds on this server, at most (the library cuts grid and images)
SHARPNESS_COLUMNS = {"model": "net", "control": "control", "radius": "r", "mean": "mean rise", "std": "± std",
                     "seeds": "seeds"}
SURFACE_COLUMNS = {"model": "net", "seeds": "seeds", "nonconvex_basin_mean": "non-convex in basin",
                   "nonconvex_all_mean": "non-convex, whole grid", "minima_below_chance_mean": "minima below chance",
                   "dips_above_chance_mean": "dips above chance"}
SHIPPED_COMMAND = ("python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --dims 2 --grid 21 "
                   "--span 1.0 --n 256 --out assets --stem landscape_shapes\n"
                   "python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --radii 0.05,0.1,0.2,0.5 "
                   "--seeds 5 --n 256 --bn-images 512 --controls none,temperature,bn,bn+temperature --out assets "
                   "--stem landscape_shapes_sharpness")


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


def checkpoints(choice: str | None) -> list[Path]:
    """The files behind a choice, or a message naming the offered ones (an API user may send anything)."""
    if choice and choice.startswith(session_nets.PREFIX):  # the session's own Playground pair
        return session_nets.resolve(choice)
    offered = dict((v, k) for k, v in pair_choices())
    if choice not in offered:
        raise gr.Error(f"Pick one of the offered nets: {'; '.join(offered.values())}.", title="Unknown choice")
    if choice == SHAPES_NET:
        return [SHAPES_CHECKPOINT]
    twins = _common.twin_checkpoints()
    return [twins[a] for a in choice.split(",")]


def _fmt(df: pd.DataFrame, percent: tuple[str, ...] = ()) -> pd.DataFrame:
    df = df.copy()
    for col in df.columns:
        if df[col].dtype.kind == "f":
            fmt = "{:.0%}" if col in percent else "{:.3g}"
            df[col] = [fmt.format(v) if pd.notna(v) else "–" for v in df[col]]
    return df


def sharpness_table(df: pd.DataFrame) -> pd.DataFrame:
    """The rise at each radius per net and control (mean ± std over seeds), as people read it."""
    t = landscape.summary_tables(df)["sharpness"]
    return _fmt(t[list(SHARPNESS_COLUMNS)]).rename(columns=SHARPNESS_COLUMNS).rename(columns=_common.unbroken)


def surface_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """The 2-D surface readings per net (means over seeds), or None for a frame without 2-D grids."""
    t = landscape.summary_tables(df).get("surface")
    if t is None:
        return None
    return _fmt(t[list(SURFACE_COLUMNS)], ("nonconvex_basin_mean", "nonconvex_all_mean")).rename(
        columns=SURFACE_COLUMNS).rename(columns=_common.unbroken)


def shipped_results() -> dict[str, Any]:
    """The shipped figures, tables and reading (grid and sharpness study read together), or a note saying what is
    missing and how to make it. Figures missing beside their CSVs are drawn from the CSVs."""
    csvs = [p for p in (landscape.SHIPPED_CSV, landscape.SHIPPED_SHARPNESS_CSV) if p.is_file()]
    if not csvs:
        return {"note": _common.shipped_note("Loss landscapes", [landscape.SHIPPED_CSV], SHIPPED_COMMAND)}
    try:
        df = landscape.combine([landscape.read_csv(str(p)) for p in csvs])
        text = landscape.describe_landscape(df)
        tables = (sharpness_table(df), surface_table(df))
    except (ValueError, KeyError) as e:
        return {"note": f"**The shipped landscape results cannot be read:** {e}"}
    figures = []
    for csv, suffix, draw in ((landscape.SHIPPED_CSV, "_2d", landscape.plot_2d),
                              (landscape.SHIPPED_SHARPNESS_CSV, "", landscape.plot_sharpness)):
        png = csv.with_name(csv.stem + suffix + ".png")
        if not png.is_file() and csv in csvs:
            png = Path(tmp_file(".png", "landscape_", png.name))
            draw(landscape.read_csv(str(csv))).savefig(png, dpi=100)
        figures.append(str(png) if png.is_file() else None)
    return {"contours": figures[0], "sharpness": figures[1], "sharpness_table": tables[0],
            "surface_table": tables[1], "csvs": [str(p) for p in csvs],
            "verdict": (verdicts.landscape_plain(df), verdicts.landscape(df)),
            "note": f"**Shipped runs** ({', '.join(p.name for p in csvs)}):\n\n{text}"}


def live_settings(archs: list[str]) -> dict[str, Any]:
    """The live run's grid and image count for these nets on the app's device, cut to `LIVE_BUDGET_S`."""
    return landscape.quick_settings(archs, LIVE_BUDGET_S, zoo().device)


def check_memory(archs: list[str], n: int, grid: int) -> None:
    """Refuse a live run whose estimated peak exceeds what this server can spare."""
    need = landscape.estimate_cost(archs, grid, n, device=zoo().device).bytes
    _common.refuse_if_too_big(need, _common.memory_budget(zoo().device), f"This landscape ({' and '.join(archs)})",
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
    df, _ = landscape.compute_landscape(models, grid=grid, span=span, dims=1, n=n, seeds=[seed],
                                        device=zoo().device, progress=progress.value)
    return df, time.perf_counter() - t


def run_landscape(choice: str | None, span: float = 1.0, seed: int = 0,
                  progress: Any = gr.Progress()) -> tuple[Any, pd.DataFrame, str, str]:
    """(1-D plot, rise table, CSV path, text) of the chosen nets along one filter-normalized direction."""
    files = checkpoints(choice)
    span, seed = float(span), int(seed)
    if not SPAN_RANGE[0] <= span <= SPAN_RANGE[1]:
        raise gr.Error(f"The span must be between {SPAN_RANGE[0]} and {SPAN_RANGE[1]}, not {span}.")
    archs = [load_arch(f) for f in files]
    q = live_settings(archs)
    check_memory(archs, q["n"], q["grid"])
    hits = _compute.cache_info().hits
    df, seconds = _compute(tuple(_stamp(f) for f in files), q["grid"], q["n"], span, seed,
                           _common.Untracked(progress))
    csv = tmp_file(".csv", "landscape_", f"landscape_{'_'.join(archs)}_span{span:g}_seed{seed}.csv")
    df.to_csv(csv, index=False, float_format="%.7g")
    again = _compute.cache_info().hits > hits  # this answer came from the cache
    text = landscape.describe_landscape(df)
    text += (f"\n\n⏱️ {q['grid']} points × {q['n']} held-out images per net, one direction seed (the shipped study "
             "uses ten, with controls): " + ("cached, it first " if again else "")
             + f"took {_common.duration(seconds)} on this server (estimated {_common.duration(q['seconds'])}).")
    return landscape.plot_1d(df), sharpness_table(df), str(csv), text


def load_arch(path: Path) -> str:
    """The arch a checkpoint's JSON names (read without loading the weights)."""
    return str(json.loads(path.with_suffix(".json").read_text())["arch"])


def build() -> gr.Dropdown:
    """The section's components and events, inside the caller's Blocks; the nets picker (the app adds the
    session's own Playground pairs to it)."""
    gr.Markdown("### Loss landscape: what the shortcuts do to the surface a solver walks on")
    shipped = shipped_results()
    _common.opening(shipped.get("contours"), "Shipped: 2-D loss contours, seed 0 (red dotted: chance loss)",
                    "landscape-shipped-plot", shipped.get("verdict", shipped["note"]), "landscape-verdict")
    with _common.full_reading():
        gr.Markdown(
            "Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets* (their Fig. 5 is theirs; every number "
            "here is ours): the held-out loss at w₀ + α·d₁ + β·d₂ for random directions whose every filter is scaled "
            "to the norm of the same filter of w₀; biases and BN are not moved. The reading is measured, not looked "
            "at: how far the loss rises a radius r away, over several direction seeds, with two controls (BatchNorm "
            "re-estimated at each point; each net's logits scaled to the same confidence), and how convex the "
            "plotted surface is inside the basin.")
        with _common.beside_figure(shipped.get("sharpness"), "Shipped: loss rise against radius, per control",
                                   "landscape-shipped-sharpness"):
            gr.Markdown(shipped["note"], elem_id="landscape-shipped-text")
        gr.Dataframe(shipped.get("surface_table"), label="Shipped: the 2-D surfaces (means over seeds)",
                     interactive=False, wrap=True, visible=shipped.get("surface_table") is not None,
                     elem_id="landscape-shipped-table")
        gr.Dataframe(shipped.get("sharpness_table"), label="Shipped: loss rise at each radius", interactive=False,
                     wrap=True, visible=shipped.get("sharpness_table") is not None, max_height=320)
        gr.File(shipped.get("csvs"), label="Shipped results (CSV)", file_count="multiple",
                visible=bool(shipped.get("csvs")), elem_id="landscape-shipped-csv")
    gr.Markdown("#### Live: a 1-D slice through a pair of your choice")
    choices = pair_choices()
    with gr.Row(equal_height=True):
        pair = gr.Dropdown(choices, value=choices[0][1], label="Nets (a trained twin pair where shipped)", scale=3,
                           min_width=300, elem_id="landscape-pair")  # on a phone a row of its own: no name cut
        span = gr.Slider(*SPAN_RANGE, 1.0, step=0.1, label="Span: α from −span to span", scale=2)
        seed = gr.Number(0, precision=0, minimum=0, label="Direction seed", scale=1)
    run = gr.Button("Compute a 1-D slice live (sized to about 25 s on this server)", elem_id="landscape-run")
    plot, out_table, out_csv, text = _common.live_figure(
        run, "landscape", "Live: loss and accuracy along one direction", "Live: the rise at each radius on the slice",
        "Live slice (CSV)")
    run.click(on_gpu(user_errors(run_landscape)), [pair, span, seed], [plot, out_table, out_csv, text],
              api_name="landscape", **LONG)
    return pair
