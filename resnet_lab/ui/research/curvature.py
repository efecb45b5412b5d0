"""Research section: curvature from the full Hessian (Li et al. 2018, §6; Yao et al. 2020, PyHessian).

Shipped (`assets/curvature_shapes*`): each twin's top eigenvalue, trace and |lambda_min / lambda_max| against the
number of training images the Hessian is taken on (disjoint image sets at each n, the convergence figure the
verdicts are read from), the eigenvalue density, and the library's reading (`curvature.describe_curvature`). Live:
the top eigenvalue of a chosen twin's Hessian on its own training images, the image count cut by the cost model to
about 25 s on the app's device, in the LONG queue group, refused up front if it would not fit in memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ...data.heldout import held_out_set
from ...models.weights import load_checkpoint
from ...research import curvature, verdicts
from ...research.curvature.hessian import Hessian, top_eigenvalues
from ..common import LONG, on_gpu, user_errors, zoo
from . import _common
from .landscape import checkpoints, load_arch, pair_choices

LIVE_BUDGET_S = 25.0
LIVE_TOL = 1e-2
LIVE_IMAGES = (128, 96, 64, 48, 32, 16)  # the most images first; the first that fits the budget is used
SPECTRUM_COLUMNS = {"model": "net", "n": "images (n)", "sets": "sets", "loss": "loss",
                    "lambda_max_mean": "λmax (mean of sets)", "lambda_max_std": "± (sets)",
                    "trace_mean": "trace (mean of sets)", "trace_std": "± (sets) ", "ratio_mean": "|λmin/λmax|"}
SHIPPED_COMMAND = ("python -m resnet_lab curvature --models plain20,resnet20,plain56,resnet56 --sizes 64,256,1024 "
                   "--sets 3 --trace-matvecs 24 --density-steps 40 --out assets --stem curvature_shapes")


def spectrum_table(spec: pd.DataFrame) -> pd.DataFrame:
    t = curvature.spectrum_table(spec)[list(SPECTRUM_COLUMNS)]
    for col in t.columns[3:]:
        t[col] = [f"{v:.4g}" if pd.notna(v) else "–" for v in t[col]]
    return t.rename(columns=SPECTRUM_COLUMNS).rename(columns=_common.unbroken)


def shipped_results() -> dict[str, Any]:
    """The shipped figures, table and reading, or a note saying what is missing and how to make it."""
    stem = curvature.SHIPPED_STEM
    if not Path(f"{stem}.csv").is_file():
        return {"note": _common.shipped_note("Curvature", [Path(f"{stem}.csv")], SHIPPED_COMMAND)}
    try:
        spec, dens, maps = curvature.read_results(stem)
        text = curvature.describe_curvature(spec, maps if len(maps) else None)
        table, verdict = spectrum_table(spec), (verdicts.curvature_plain(spec), verdicts.curvature(spec))
    except (ValueError, KeyError) as e:
        return {"note": f"**The shipped curvature results cannot be read:** {e}"}
    figures = {k: f"{stem}_{k}.png" if Path(f"{stem}_{k}.png").is_file() else None
               for k in ("convergence", "density", "map")}
    return {**figures, "table": table, "note": f"**Shipped run** ({Path(stem).name}.csv):\n\n{text}",
            "verdict": verdict}


def live_images(arch: str) -> tuple[int, float]:
    """(images, estimated seconds) of the live top-eigenvalue run: the most images that fit the budget."""
    for n in LIVE_IMAGES:
        cost = curvature.estimate_cost([arch], (n,), sets=1, top_k=1, trace_matvecs=0, lambda_min=False,
                                       device=zoo().device)
        if cost.seconds <= LIVE_BUDGET_S or n == LIVE_IMAGES[-1]:
            return n, cost.seconds
    raise AssertionError("unreachable")


def run_top_eigenvalue(choice: str | None, progress: Any = gr.Progress()) -> tuple[pd.DataFrame, str]:
    """(table, text): the top Hessian eigenvalue of each chosen net on its own training images."""
    files = checkpoints(choice)
    rows, notes = [], []
    for i, f in enumerate(files):
        arch = load_arch(f)
        n, estimate = live_images(arch)
        need = curvature.estimate_cost([arch], (n,), sets=1, top_k=1, trace_matvecs=0, lambda_min=False,
                                       device=zoo().device).bytes
        _common.refuse_if_too_big(need, _common.memory_budget(zoo().device), f"The Hessian of {arch}",
                                  "Try again when the server is less busy.")
        progress(i / len(files), desc=f"{arch}: Hessian on {n} images")
        w = load_checkpoint(f)
        net = w.model.to(zoo().device).eval()
        data = held_out_set(w, n, split="train", device=zoo().device)
        t = time.perf_counter()
        h = Hessian(net, data.x, data.y, chunk=64)
        top = float(top_eigenvalues(h, 1, LIVE_TOL, seed=0)[0])
        seconds = time.perf_counter() - t
        rows.append({"net": arch, "images": n, "λmax": f"{top:.4g}", "Hessian-vector products": h.matvecs,
                     "seconds": f"{seconds:.1f}"})
        notes.append(f"{arch}: {h.matvecs} products in {_common.duration(seconds)} (estimated "
                     f"{_common.duration(estimate)})")
    text = ("Top eigenvalue of the full Hessian of the mean cross-entropy on each net's own first training images "
            f"(ARPACK, relative tolerance {LIVE_TOL:g}). On this few images λmax is ruled by the few images a net "
            "has not fitted yet: expect it well above the shipped value at the largest n, and as far from the "
            "shipped 64-image numbers as their image sets are from each other (the figure above). "
            + "; ".join(notes) + ".")
    return pd.DataFrame(rows), text


def build() -> gr.Dropdown:
    """The section's components and events, inside the caller's Blocks; the nets picker (the app adds the
    session's own Playground pairs to it)."""
    gr.Markdown("### Curvature: the full Hessian at each minimum")
    shipped = shipped_results()
    _common.opening(shipped.get("convergence"), "Shipped: how sharply each minimum curves, against how many "
                    "training images the Hessian is measured on", "curvature-convergence",
                    shipped.get("verdict", shipped["note"]), "curvature-verdict")
    with _common.full_reading():
        gr.Markdown(
            "A landscape plot shows two directions out of hundreds of thousands. The Hessian of the loss with respect "
            "to every parameter says how sharp a minimum is in *all* directions: its top eigenvalue (sharpness), its "
            "trace (total curvature), its most negative eigenvalue, and Li et al.'s |λmin/λmax| (their §6: near 0 is "
            "convex). Measured with Hessian-vector products (double backward) and scipy's Lanczos (ARPACK), the "
            "trace by Hutch++, as PyHessian (Yao et al. 2020) reports them; checked in the tests against a dense "
            "Hessian. Each number is taken on several disjoint sets of n training images, at several n: on 64 "
            "images a Hessian is ruled by the one or two images a net has not fitted yet, so a difference between "
            "twins is read only where a paired test over the sets finds it at the two largest n.")
        with _common.beside_figure(shipped.get("density"), "Shipped: the eigenvalue density of each net (set 0; "
                                   "the isolated peak at the right is λmax)", "curvature-density"):
            gr.Markdown(shipped["note"], elem_id="curvature-shipped-text")
        gr.Dataframe(shipped.get("table"), label="Shipped: the Hessian at each minimum", interactive=False,
                     wrap=True, visible=shipped.get("table") is not None, elem_id="curvature-shipped-table")
    gr.Markdown("#### Live: the top eigenvalue of a pair of your choice")
    choices = pair_choices()
    pair = gr.Dropdown(choices, value=choices[0][1], label="Nets", elem_id="curvature-pair")
    run = gr.Button("Top eigenvalue, live (sized to about 25 s on this server)", elem_id="curvature-run")
    with _common.live_results(run):
        text = gr.Markdown(elem_id="curvature-text")
        table = gr.Dataframe(label="Live: top eigenvalue", interactive=False, elem_id="curvature-table")
    run.click(on_gpu(user_errors(run_top_eigenvalue)), [pair], [table, text], api_name="curvature", **LONG)
    return pair
