"""Research section 1: gradient norms at initialization, every chosen depth against its plain twin.

Measured, not asserted: the norms layer by layer under the user's BN mode and init, and the library's reading of
*these* numbers (`gradflow.describe_gradnorms`), so the text cannot claim vanishing gradients where the plot shows
growth. A sweep is refused up front when its estimated memory exceeds what this process can spare
(`gradflow.what_fits`, the same answer the CLI words as flags), or when the cost model says it would hold the one
long-job slot longer than `TIME_BUDGET_S` (`gradflow.time_fits`); each refusal names settings that fit. It runs on
the app's own device (`zoo().device`, e.g. cuda:1 from RESNET_LAB_DEVICE).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import gradio as gr
import pandas as pd

from ...models.resnet import REGISTRY, twin_name
from ...research import gradflow, verdicts
from ..common import LONG, on_gpu, tmp_file, user_errors, zoo
from . import _common
from ._common import Untracked, duration, memory_budget, refuse_if_too_big

ARCH_CHOICES = [(f"{a} (ImageNet-style)", a) for a in gradflow.IMAGENET_ARCHS] + [
    (f"{a} (CIFAR-style, 32 px)", a) for a in gradflow.CIFAR_ARCHS]
DEFAULT_ARCHS = ["resnet20", "resnet56", "resnet110"]
BN_CHOICES = [("train mode (as in training)", "train"), ("eval mode (running stats)", "eval"), ("no BN at all", "none")]
INIT_CHOICES = [("default (He / Kaiming)", "default"), ("zero-γ: last BN of each block starts at 0", "zero-gamma")]
AUTO_SIZE = "auto"
SIZE_CHOICES = [("auto", AUTO_SIZE)] + [
    (f"{s} px", str(s)) for s in gradflow.INPUT_SIZES]
BATCH_RANGE = (2, 64)
TIME_BUDGET_S = 60.0  # the longest estimated sweep a click may start: it holds the app's one long-job slot
TABLE_COLUMNS = {
    "log10_ratio": "log10 first/last ‖∂L/∂W‖",
    "growth": "‖∂L/∂W‖ growth per layer toward input (stage 1)",
    "dx_log10_ratio": "log10 first/last block ‖∂L/∂x‖",
    "loss": "initial loss",
}


@functools.lru_cache(maxsize=16)
def _sweep(cfg: gradflow.GradFlowConfig, progress: Untracked) -> pd.DataFrame:
    return gradflow.run_sweep(cfg, progress.value)


def make_config(archs: list[str], bn_mode: str, init: str, batch: int, input_size: Any,
                seeds: int) -> gradflow.GradFlowConfig:
    """UI values -> a canonical, hashable config (arch order fixed, so ticking order does not miss the cache),
    run on the app's own device, index included (cuda:1 when the app runs there)."""
    if not archs:
        raise gr.Error("Pick at least one depth.")
    order = list(REGISTRY)
    size = None if input_size in (None, "", AUTO_SIZE) else int(input_size)
    try:
        return gradflow.GradFlowConfig(archs=tuple(sorted(set(archs), key=order.index)), bn_mode=bn_mode,
                                       zero_init=init == "zero-gamma", batch_size=int(batch), input_size=size,
                                       seeds=int(seeds), device=zoo().device)
    except ValueError as e:
        raise gr.Error(str(e)) from e


def check_memory(cfg: gradflow.GradFlowConfig, budget: int | None = None) -> None:
    """Refuse a sweep whose estimated peak memory exceeds the budget, saying which settings would fit (each
    checked with the same estimate: the largest batch the slider offers at this input size, a smaller offered
    input size at this batch, the sweep without its hungriest depth)."""
    budget = memory_budget(cfg.device) if budget is None else budget
    fit = gradflow.what_fits(cfg, budget)
    if fit is None:
        return
    options = []
    if fit.batch and fit.batch >= BATCH_RANGE[0]:
        options.append(f"batch size {fit.batch} at {f'{cfg.input_size} px' if cfg.input_size else 'this input size'}")
    if fit.input_size:
        options.append(f"{fit.input_size} px at batch size {cfg.batch_size}")
    if fit.without:
        options.append(f"the same settings without {fit.without}")
    refuse_if_too_big(fit.need, budget, "This sweep (its largest net's forward and backward pass)",
                      "What fits: " + "; or ".join(options) + "." if options else
                      "Nothing smaller of these settings fits now: try again when the server is less busy.")


def check_time(cfg: gradflow.GradFlowConfig, budget: float = TIME_BUDGET_S) -> None:
    """Refuse a sweep the cost model says would take longer than `budget` seconds on its device, saying what
    fits (fewer seeds, a smaller batch, a smaller input size, fewer depths: each checked with the same estimate)."""
    fit = gradflow.time_fits(cfg, budget)
    if fit is None:
        return
    options = []
    if fit.seeds:
        options.append(f"{fit.seeds} seed{'s' if fit.seeds > 1 else ''}")
    if fit.batch and fit.batch >= BATCH_RANGE[0]:
        options.append(f"batch size {fit.batch}")
    if fit.input_size:
        options.append(f"{fit.input_size} px")
    if fit.archs and len(fit.archs) < len(cfg.archs):
        options.append("only " + ", ".join(fit.archs))
    raise gr.Error(f"This sweep ({len(cfg.archs) * len(gradflow.VARIANTS) * cfg.seeds} nets) would take about "
                   f"{duration(fit.need)} on this server ({cfg.device}), more than the {duration(budget)} one live "
                   "run may hold the shared long-job queue. "
                   + ("What fits, the other settings kept: " + "; or ".join(options) + "." if options else
                      "Nothing smaller of these settings fits: use the command line (python -m resnet_lab "
                      "gradnorms) for long sweeps."), title="Sweep too long for a live run")


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a (gradients exactly 0)"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: mean ± std over seeds."""
    out = summary[["arch", "variant", "depth", "seeds"]].copy()
    out["arch"] = [a if v == "residual" else twin_name(a) for a, v in zip(summary.arch, summary.variant)]
    for key, title in TABLE_COLUMNS.items():
        digits = 3 if key == "growth" else 2
        out[title] = [_pm(m, s, digits) for m, s in zip(summary[f"{key}_mean"], summary[f"{key}_std"])]
    return out.rename(columns={"arch": "net"}).rename(columns=_common.unbroken)


def _csv(df: pd.DataFrame, cfg: gradflow.GradFlowConfig) -> str:
    name = (f"gradnorms_{cfg.bn_mode}_{'zero-gamma' if cfg.zero_init else 'default'}_b{cfg.batch_size}_"
            f"{cfg.input_size or 'auto'}px_{cfg.seeds}seeds.csv")
    path = tmp_file(".csv", "gradnorms_", name)
    gradflow.to_csv(df, str(path))
    return str(path)


def run_gradnorms(archs: list[str], bn_mode: str = "train", init: str = "default", batch: int = 8,
                  input_size: Any = AUTO_SIZE, seeds: int = 3, progress: Any = gr.Progress()) -> tuple:
    """(fig ‖∂L/∂W‖, fig ‖∂L/∂x‖, fig summary, summary table, CSV path, explanation markdown)."""
    cfg = make_config(archs, bn_mode, init, batch, input_size, seeds)
    check_memory(cfg)
    check_time(cfg)
    df = _sweep(cfg, Untracked(progress))
    summary = gradflow.summarize(df)
    return (gradflow.plot_profile(df, "grad_w"),
            gradflow.plot_profile(df, "grad_x", r"$\|\partial L/\partial x\|$ at block output"),
            gradflow.plot_summary(summary), display_table(summary), _csv(df, cfg),
            gradflow.describe_gradnorms(cfg, summary))


def shipped_results() -> dict[str, Any]:
    """The shipped sweep (`gradflow.SHIPPED_CSV`, its figure, the reading and the verdict), or a note on what is
    missing and how to make it."""
    csv, png = gradflow.SHIPPED_CSV, gradflow.SHIPPED_CSV.with_suffix(".png")
    if not csv.is_file():
        return {"note": _common.shipped_note("Gradient norms", [csv], gradflow.SHIPPED_COMMAND)}
    try:
        summary = gradflow.summarize(gradflow.read_csv(str(csv)))
        return {"figure": str(png) if png.is_file() else None, "table": display_table(summary),
                "verdict": (verdicts.gradients_plain(summary), verdicts.gradients(summary)),
                "note": f"**Shipped sweep** ({csv.name}: {gradflow.SHIPPED_COMMAND.split(' gradnorms ')[1]}):\n\n"
                        + gradflow.describe_gradnorms(gradflow.SHIPPED_CONFIG, summary)}
    except (ValueError, KeyError) as e:
        return {"note": f"**The shipped gradient norms cannot be read:** {e}"}


def build() -> None:
    """The section's components and events, inside the caller's Blocks."""
    gr.Markdown("### Why can a ResNet be 152 layers deep? The gradient at initialization, layer by layer")
    shipped = shipped_results()
    _common.opening(shipped.get("figure"), "Shipped: CIFAR nets, plain twins against ResNets, 5 seeds",
                    "gradnorms-shipped-plot", shipped.get("verdict", shipped["note"]), "gradnorms-verdict")
    with _common.full_reading():
        gr.Markdown(
            "One batch, one backward pass, at initialization: the norm of the gradient of every conv's weights and at "
            "every block's output, layer by layer, for each chosen depth and its **plain twin** (the same net without "
            "shortcuts, built from the same seed, so every shared weight is identical). Bands show the spread over "
            "seeds; the y axes are logarithmic.")
        gr.Markdown(shipped["note"], elem_id="gradnorms-shipped-text")
        gr.Dataframe(shipped.get("table"), label="Shipped: summary (mean ± std over seeds)", interactive=False,
                     wrap=True, visible=shipped.get("table") is not None, elem_id="gradnorms-shipped-table")
    gr.Markdown("#### Live: measure at the depths and settings of your choice (a few seconds on a CPU)")
    archs = gr.CheckboxGroup(ARCH_CHOICES, value=DEFAULT_ARCHS, label="Depths (each with its plain twin)",
                             elem_id="research-archs")
    with gr.Row(equal_height=True):
        bn = gr.Radio(BN_CHOICES, value="train", label="BatchNorm", scale=2)
        init = gr.Radio(INIT_CHOICES, value="default", label="Init", scale=2)
        # the choice short, its meaning in the label: a long choice ran under the dropdown's arrow
        size = gr.Dropdown(SIZE_CHOICES, value=AUTO_SIZE, scale=2, elem_id="research-size",
                           label="Input size (auto: 64 px ImageNet-style, 32 px CIFAR-style)")
        batch = gr.Slider(*BATCH_RANGE, 8, step=1, label="Batch size", scale=1)
        seeds = gr.Slider(1, 10, 3, step=1, label="Seeds (mean and spread)", scale=1, elem_id="research-seeds")
    run = gr.Button("Measure", variant="primary", elem_id="gradnorms-run")
    with _common.live_results(run):
        with gr.Row():
            with gr.Column(scale=3, min_width=320):
                fig_w = _common.live_plot("‖∂L/∂W‖ per conv, input → output", "gradnorms-plot")
                fig_x = _common.live_plot("‖∂L/∂x‖ at each block output")
            with gr.Column(scale=2, min_width=300):
                text = gr.Markdown(elem_id="gradnorms-text")
                fig_s = _common.live_plot("First/last conv gradient ratio against depth")
        with gr.Row():
            table = gr.Dataframe(label="Summary (mean ± std over seeds)", interactive=False, wrap=True, scale=4,
                                 elem_id="gradnorms-table")
            csv = gr.File(label="Per-layer results (CSV)", scale=1)
    run.click(on_gpu(user_errors(run_gradnorms)), [archs, bn, init, batch, size, seeds],
              [fig_w, fig_x, fig_s, table, csv, text], api_name="gradnorms", **LONG)
