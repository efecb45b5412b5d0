"""Research section 2: the degradation curves (He et al. 2015, Fig. 1), shipped and as a short re-run.

The re-run is fixed in size; its button says how long it will take, from the one cost model on the app's device
(`degradation.estimate_cost`), computed when the page loads, so building the page trains and times nothing. It is
refused when its estimated memory exceeds what that device can spare, and runs there. The text beside the curves
is the library's reading of them (`degradation.describe_degradation`), as the CLI prints it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import gradio as gr
import pandas as pd

from ...research import degradation, gradflow, verdicts
from ...runtime import cost
from ..common import LONG, on_gpu, user_errors, zoo
from . import _common
from ._common import Untracked, duration, memory_budget, refuse_if_too_big


def final_table(df: pd.DataFrame) -> pd.DataFrame:
    final = degradation.final_metrics(df).round(3).rename_axis(columns=None)
    return final.rename(columns=lambda c: c.replace("_smooth", "").replace("_", " "))


def shipped_curves(cols: int | None = None) -> tuple[Any, pd.DataFrame | None, str]:
    """The precomputed curves shown on load (figure, `cols` panels per row; final-metrics table; text)."""
    path = degradation.SHIPPED_CSV
    if not path.exists():
        return None, None, f"No shipped curves at `{path}`; press the button to train a short version."
    df = degradation.read_csv(path)
    steps = int(df.step.max())
    return (degradation.plot_curves(df, cols), final_table(df),
            degradation.describe_degradation(df, f"Shipped run, {steps} steps"))


def rerun_cost() -> cost.Cost:
    """The short re-run's seconds and peak bytes on the app's device, from the one cost model (nothing is trained:
    the model's rate is one timed forward pass, measured once per process)."""
    return degradation.estimate_cost(device=zoo().device, **degradation.QUICK)


def rerun_estimate() -> float:
    """The short re-run's estimated seconds on this server."""
    return rerun_cost().seconds


def check_memory(need: int) -> None:
    """Refuse the re-run when its estimated peak exceeds what the app's device can spare for a live run now."""
    refuse_if_too_big(need, memory_budget(str(zoo().device)), "The short re-run (four nets trained together)",
                      "Try again when the server is less busy.")


@functools.lru_cache(maxsize=1)
def _quick_run(progress: Untracked) -> tuple[pd.DataFrame, float]:
    t = time.perf_counter()
    df = degradation.run_degradation(progress=progress.value, device=zoo().device, **degradation.QUICK)
    return df, time.perf_counter() - t


def rerun_label() -> str:
    """The re-run button's text: what the run took here once it has run (it is then cached), else the estimate."""
    steps = degradation.QUICK["steps"]
    if _quick_run.cache_info().currsize:
        _, seconds = _quick_run(Untracked(None))  # the one cached run (the key ignores its progress)
        return f"Show the short re-run ({steps} steps; it trained in {duration(seconds)} on this server, cached)"
    return f"Re-run a short version ({steps} steps, about {duration(rerun_estimate())} on this server)"


def rerun_degradation(progress: Any = gr.Progress()) -> tuple[Any, Any, pd.DataFrame, str]:
    """Train the four nets for the short, fixed budget (cached: it is deterministic); (the curves side by side, the
    curves stacked for a phone, the final metrics, the reading)."""
    cached = _quick_run.cache_info().currsize > 0
    estimate = rerun_cost()
    if not cached:
        check_memory(estimate.bytes)
    df, seconds = _quick_run(Untracked(progress))
    text = degradation.describe_degradation(df, f"Short re-run, {degradation.QUICK['steps']} steps")
    text += ("\n\nThis short budget shows only the start: in the shipped run the nets leave chance level between "
             "~150 and ~350 steps, and the plain-20 / plain-56 gap opens after that.")
    text += (f"\n\n⏱️ {'Cached: the re-run' if cached else 'This re-run'} trained in {duration(seconds)} "
             f"on this server (estimated: {duration(estimate.seconds)}).")
    return degradation.plot_curves(df), degradation.plot_curves(df, cols=1), final_table(df), text


def build() -> None:
    """The section's components and events, inside the caller's Blocks."""
    gr.Markdown("### Degradation: deeper plain nets train worse")
    fig, final, note = shipped_curves()
    with gr.Row():
        with gr.Column(scale=3, min_width=320):
            _common.caption("Training curves: orange dashed = plain, blue solid = ResNet, darker = deeper; dots: "
                            "held-out accuracy; dotted: chance")
            # both layouts, the page's CSS shows the one that fits (as `_common.shipped_image`): stacked on a phone
            deg_plot = gr.Plot(fig, show_label=False, format="png", elem_id="degradation-plot",
                               elem_classes="fig-wide")
            deg_narrow = gr.Plot(shipped_curves(cols=1)[0], show_label=False, format="png",
                                 elem_id="degradation-plot-narrow", elem_classes="fig-narrow")
        with gr.Column(scale=2, min_width=300):
            glance, referee = _common.at_a_glance(_verdict() or note, "degradation-verdict")
            rerun = gr.Button(f"Re-run a short version ({degradation.QUICK['steps']} steps; estimating the time here…)")
    with _common.full_reading():
        gr.Markdown(
            f"{gradflow.HE_2015}, Fig. 1 and 6: plain-20, plain-56, ResNet-20 and ResNet-56 trained on the same Shapes "
            "batches from the same seed with the same SGD schedule. Lines: smoothed training loss and accuracy; "
            "dots: held-out accuracy. Plain nets dashed, ResNets solid. A higher *training* loss for the deeper plain "
            "net is not overfitting: the solver fails to find what the shallower net proves exists. The budget is ~2% "
            "of He et al.'s schedule, so read the ordering at the end of this run, not of a full training.")
        deg_text = gr.Markdown(note)
        deg_table = gr.Dataframe(final, label="Final metrics", interactive=False, elem_id="degradation-table")
    # The estimate times this server (the cost model's probe): on page load, never while the page is built.
    gr.on(None, rerun_label, None, rerun, queue=False, api_visibility="private")
    rerun.click(on_gpu(user_errors(rerun_degradation)), None, [deg_plot, deg_narrow, deg_table, deg_text],
                api_name="degradation", **LONG).then(rerun_label, None, rerun, queue=False, api_visibility="private"
                                                     ).then(_rerun_verdict, None, [glance, referee], queue=False,
                                                            api_visibility="private")


def _verdict(df: pd.DataFrame | None = None) -> _common.Verdict | None:
    """The shipped run (or `df`) at a glance, the student's and the referee's; None where the shipped curves are
    missing."""
    if df is None:
        if not degradation.SHIPPED_CSV.exists():
            return None
        df = degradation.read_csv(degradation.SHIPPED_CSV)
    return verdicts.degradation_plain(df), verdicts.degradation(df)


def _rerun_verdict() -> tuple[str, str]:
    """After a re-run: its verdict, both layers, beside its curves (the cached run; the click just made it)."""
    if not _quick_run.cache_info().currsize:
        plain, referee = _verdict() or ("", "")
        return f"**At a glance.** {plain}", referee
    df, _ = _quick_run(Untracked(None))
    return (f"**At a glance (your short re-run).** {verdicts.degradation_plain(df)}",
            f"Your short re-run: {verdicts.degradation(df)}")
