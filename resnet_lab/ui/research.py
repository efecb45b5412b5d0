"""Research tab: why do residual connections let us train 152 layers?

Measured, not asserted: gradient norms layer by layer for every chosen depth,
plain twin against ResNet, under the user's BN mode and init; an explanation
written from the measured numbers (so it cannot claim vanishing gradients where
the plot shows growth); and the degradation curves (He et al. 2015, Fig. 1).

Both runs are long jobs: they go through `user_errors` into the app-wide LONG
queue group (one at a time across all users), a sweep is refused up front when
its estimated memory exceeds what this process can spare, and the degradation
re-run is fixed in size and says how long it will take, timed on this machine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import gradio as gr
import pandas as pd

from .. import degradation, gradflow
from ..resnet import REGISTRY, twin_name
from ..shapes import CLASSES
from .common import LONG, on_gpu, tmp_file, user_errors, zoo

ARCH_CHOICES = [(f"{a} (ImageNet-style)", a) for a in gradflow.IMAGENET_ARCHS] + [
    (f"{a} (CIFAR-style, 32 px)", a) for a in gradflow.CIFAR_ARCHS]
DEFAULT_ARCHS = ["resnet20", "resnet56", "resnet110"]
BN_CHOICES = [("train mode (as in training)", "train"), ("eval mode (running stats)", "eval"), ("no BN at all", "none")]
INIT_CHOICES = [("default (He / Kaiming)", "default"), ("zero-γ: last BN of each block starts at 0", "zero-gamma")]
AUTO_SIZE = "auto"
SIZES = (32, 48, 64, 96, 112, 128, 160, 224)
SIZE_CHOICES = [("auto: 64 px ImageNet-style, 32 px CIFAR-style", AUTO_SIZE)] + [(f"{s} px", str(s)) for s in SIZES]
BATCH_RANGE = (2, 64)
# A sweep may take this share of the memory available now: the loaded models, Gradio and a QUICK job (which
# runs beside it) live in the rest. ResNet-152 at 224 px with batch 64 needs ~15 GiB (gradflow.estimate_memory):
# on a 16 GB Space one click would get the process killed; it is refused with settings that fit instead.
MEMORY_SHARE = 0.5
TABLE_COLUMNS = {
    "log10_ratio": "log10 first/last ‖∂L/∂W‖",
    "growth": "‖∂L/∂W‖ growth per layer toward input (stage 1)",
    "dx_log10_ratio": "log10 first/last block ‖∂L/∂x‖",
    "loss": "initial loss",
}
YANG = "Yang et al. 2019, *A Mean Field Theory of Batch Normalization*"
HE_2016 = "He et al. 2016, *Identity Mappings in Deep Residual Networks*"
HE_2015 = "He et al. 2015, *Deep Residual Learning*"


class _Untracked:
    """Rides through `lru_cache` without being part of the key (a progress callback is not a setting)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Untracked)


@functools.lru_cache(maxsize=16)
def _sweep(cfg: gradflow.GradFlowConfig, progress: _Untracked) -> pd.DataFrame:
    return gradflow.run_sweep(cfg, progress.value)


def make_config(archs: list[str], bn_mode: str, init: str, batch: int, input_size: Any,
                seeds: int) -> gradflow.GradFlowConfig:
    """UI values -> a canonical, hashable config (arch order fixed, so ticking order does not miss the cache),
    run on the app's device (a GPU when the app has one)."""
    if not archs:
        raise gr.Error("Pick at least one depth.")
    order = list(REGISTRY)
    size = None if input_size in (None, "", AUTO_SIZE) else int(input_size)
    try:
        return gradflow.GradFlowConfig(archs=tuple(sorted(set(archs), key=order.index)), bn_mode=bn_mode,
                                       zero_init=init == "zero-gamma", batch_size=int(batch), input_size=size,
                                       seeds=int(seeds), device=zoo().device.type)  # the app's device
    except ValueError as e:
        raise gr.Error(str(e)) from e


def memory_budget(device: str = "cpu") -> int:
    """Bytes one sweep may use: a share of what `device` can still allocate (free GPU memory on CUDA, else the
    container's limit, not the host's RAM: see `resources`), read at the click, so a busy server refuses sooner."""
    return int(gradflow.available_memory(device) * MEMORY_SHARE)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _fits(cfg: gradflow.GradFlowConfig, budget: int, **change: Any) -> bool:
    return gradflow.estimate_memory(dataclasses.replace(cfg, **change)) <= budget


def _smaller_size(cfg: gradflow.GradFlowConfig, need: int, budget: int) -> int | None:
    """An offered input size below the current one that fits at this batch.

    Each new size costs the estimate a pass over the nets, so the walk down starts where activations scaling with
    the pixel count predict a fit, and each candidate is then checked with the estimate itself.
    """
    now = max(cfg.size_for(a) for a in cfg.archs)
    smaller = [s for s in sorted(SIZES, reverse=True) if s < now]
    first = next((i for i, s in enumerate(smaller) if need * (s / now) ** 2 <= budget), len(smaller))
    return next((s for s in smaller[first:] if _fits(cfg, budget, input_size=s)), None)


def check_memory(cfg: gradflow.GradFlowConfig, budget: int | None = None) -> None:
    """Refuse a sweep whose estimated peak memory exceeds the budget, saying which settings would fit.

    The suggestions are checked with the same estimate: the largest batch at this input size, a smaller
    offered input size at this batch, and the sweep without its hungriest depth.
    """
    need = gradflow.estimate_memory(cfg)
    budget = memory_budget(cfg.device) if budget is None else budget
    if need <= budget:
        return
    options = []
    batch = gradflow.largest_batch(cfg, budget)
    if batch and batch >= BATCH_RANGE[0]:  # a batch the slider offers
        options.append(f"batch size {batch} at {f'{cfg.input_size} px' if cfg.input_size else 'this input size'}")
    size = _smaller_size(cfg, need, budget)
    if size:
        options.append(f"{size} px at batch size {cfg.batch_size}")
    if len(cfg.archs) > 1:
        hungriest = max(cfg.archs, key=lambda a: gradflow.estimate_memory(dataclasses.replace(cfg, archs=(a,))))
        rest = tuple(a for a in cfg.archs if a != hungriest)
        if _fits(cfg, budget, archs=rest):
            options.append(f"the same settings without {hungriest}")
    what = ("What fits: " + "; or ".join(options) + "." if options else
            "Nothing smaller of these settings fits now: try again when the server is less busy.")
    raise gr.Error(f"This sweep needs about {_gb(need)} for its largest net's forward and backward pass; this server "
                   f"can give a sweep {_gb(budget)} now ({MEMORY_SHARE:.0%} of the memory available). {what}",
                   title="Settings too large for this server")


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
    return out.rename(columns={"arch": "net"})


def _direction(log_ratio: float) -> str:
    """What a first/last log10 ratio says, in words; the words follow the sign and size of the measurement."""
    if math.isnan(log_ratio):
        return "has no first/last ratio (a gradient is exactly 0)"
    if log_ratio > 0.3:
        verb = "**grows** toward the input"
    elif log_ratio <= -2:
        verb = "**vanishes** toward the input"
    elif log_ratio < -0.3:
        verb = "**shrinks** mildly toward the input"
    else:
        verb = "is roughly flat"
    return f"{verb} (first/last = 10^{log_ratio:.1f})"


def describe_gradnorms(cfg: gradflow.GradFlowConfig, summary: pd.DataFrame) -> str:
    """Plain-language reading of *these* numbers under *these* settings, with the papers that explain them."""
    plain = summary[summary.variant == "plain"].set_index("arch")
    res = summary[summary.variant == "residual"].set_index("arch")
    deepest = max(cfg.archs, key=lambda a: REGISTRY[a].depth)
    p, r = plain.loc[deepest], res.loc[deepest]
    d = REGISTRY[deepest].depth
    ln_c = math.log(cfg.num_classes)
    parts: list[str] = []

    if cfg.zero_init and cfg.bn_mode != "none":
        parts.append(
            "**Zero-γ init** (Goyal et al. 2017): every residual block starts as its shortcut (the identity, or "
            f"the projection where shapes change). The ResNet's ‖∂L/∂x‖ profile is "
            f"{'flat' if abs(r.dx_growth_mean - 1) < 0.02 else 'nearly flat'} (×{r.dx_growth_mean:.2f} per layer "
            "inside stage 1) and its branch convs get "
            "**exactly zero** gradient at this first step: only the zeroed γ's do, so they move first. "
            + (f"The blocks add nothing, so every depth computes the same function and starts at the same loss "
               f"({r.loss_mean:.2f}). " if len(cfg.archs) > 1 and res.loss_mean.max() - res.loss_mean.min() < 1e-4
               else "")
            + "The plain twin has no identity path: with γ = 0 each block outputs a constant, so **every** conv "
            "gradient is exactly 0 (nothing is drawn). Zero-γ only makes sense with shortcuts.")
    elif cfg.bn_mode == "train":
        if p.log10_ratio_mean > 0.3 and p.growth_mean > 1.0:
            gap = p.log10_ratio_mean - r.log10_ratio_mean
            flatter = (f"is {gap:.1f} orders of magnitude flatter" if gap >= 1 else
                       f"is flatter by a factor of {10 ** gap:.1f}" if gap > 0 else "is not flatter at this depth")
            parts.append(
                f"**Gradients grow; they do not vanish.** With BatchNorm in train mode the plain-{d} gradient "
                f"{_direction(p.log10_ratio_mean)}, about ×{p.growth_mean:.2f} per layer in the first stage. "
                f"{YANG} show that BN itself causes this gradient explosion at init (≈ ×1.2 per layer for ReLU nets). "
                f"The ResNet-{d} profile {flatter} (10^{r.log10_ratio_mean:.1f}): each block hands the gradient back "
                f"through its identity term unchanged and only *adds* the branch's share ({HE_2016}).")
        else:
            parts.append(f"With BatchNorm in train mode the plain-{d} gradient {_direction(p.log10_ratio_mean)}; "
                         f"the ResNet-{d} gradient {_direction(r.log10_ratio_mean)}.")
    else:
        if cfg.bn_mode == "eval":
            parts.append("**Eval-mode BN at init** normalizes with its running statistics (mean 0, variance 1): "
                         "it is the identity, so these nets behave like nets without BN.")
        if cfg.zero_init:
            parts.append("Zero-γ needs a BN to zero: without one this run is the default init.")
        parts.append(
            f"**Without normalization** the plain-{d} weight gradient {_direction(p.log10_ratio_mean)} and its "
            f"block-output gradient {_direction(p.dx_log10_ratio_mean)}"
            + (": He init keeps a plain net's signal roughly in scale." if abs(p.dx_log10_ratio_mean) < 2 else "."))
        if r.loss_mean > 3 * ln_c:
            parts.append(
                f"The ResNet-{d} instead **blows up in the forward pass**: each block adds a branch as large as its "
                f"input, so activations roughly double block after block and the initial loss is {r.loss_mean:.3g} "
                f"(ln {cfg.num_classes} = {ln_c:.2f}). Backward, ‖∂L/∂x‖ {_direction(r.dx_log10_ratio_mean)}; "
                f"‖∂L/∂W‖, the product of activations (large at the output) and those gradients, "
                f"{_direction(r.log10_ratio_mean)}. Fixup (Zhang et al. 2019) and SkipInit (De & Smith 2020) "
                "scale each branch down at init to undo exactly this.")
        else:
            parts.append(f"The ResNet-{d} weight gradient {_direction(r.log10_ratio_mean)}; its initial loss is "
                         f"{r.loss_mean:.3g} (ln {cfg.num_classes} = {ln_c:.2f}).")

    per_arch = [f"- **{twin_name(a)}** {_direction(plain.loc[a].log10_ratio_mean)}; "
                f"**{a}** {_direction(res.loc[a].log10_ratio_mean)}." for a in cfg.archs]
    parts.append("Per depth, ‖∂L/∂W‖ of the first conv against the last:\n" + "\n".join(per_arch))

    if cfg.bn_mode == "train" and not cfg.zero_init:
        losses = [res.loc[a].loss_mean for a in sorted(cfg.archs, key=lambda a: REGISTRY[a].depth)]
        grows = len(losses) > 1 and all(b > a for a, b in zip(losses, losses[1:]))
        plain_loss = plain.loss_mean.mean()
        near = abs(plain_loss / ln_c - 1) < 0.1
        parts.append(
            f"**Initial loss.** The plain nets start at {plain_loss:.2f} {'≈' if near else 'vs'} ln {cfg.num_classes} "
            f"= {ln_c:.2f}{': their last BN keeps the logits small' if near else ''}. The ResNets start at "
            + ", ".join(f"{x:.2f}" for x in losses)
            + (" — growing with depth: every branch adds its variance to the identity path, so the final features "
               "(and logits) grow with the number of blocks." if grows else
               ": no steady growth with depth here. " + (
                   "ImageNet-style nets re-normalize the stream at the start of every stage (the projection "
                   "shortcut is a 1×1 conv + BN), so only the last stage's branches add up."
                   if any(REGISTRY[a].shortcut == "B" for a in cfg.archs) else
                   "Across seeds the loss varies a lot; more seeds show the trend.")))
    parts.append(f"**This is not the degradation problem.** Deeper plain nets reaching a *higher training loss* "
                 f"({HE_2015}, Fig. 1) is an optimization effect, measured below by training.")
    return "\n\n".join(parts)


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
    df = _sweep(cfg, _Untracked(progress))
    summary = gradflow.summarize(df)
    return (gradflow.plot_profile(df, "grad_w"),
            gradflow.plot_profile(df, "grad_x", r"$\|\partial L/\partial x\|$ at block output"),
            gradflow.plot_summary(summary), display_table(summary), _csv(df, cfg), describe_gradnorms(cfg, summary))


# --- degradation ---

def describe_degradation(df: pd.DataFrame, title: str) -> str:
    """What the curves show, from their final smoothed training losses."""
    final = degradation.final_metrics(df).set_index("arch")
    lines = [f"**{title}** (final smoothed training loss / validation accuracy):"]
    lines += [f"- {a}: {row.train_loss_smooth:.3f} / {row.val_acc:.1%}" for a, row in final.iterrows()]

    chance = math.log(len(CLASSES))

    def compare(ref: str, other: str, kind: str) -> str | None:
        if ref not in final.index or other not in final.index:
            return None
        r, o = final.loc[ref, "train_loss_smooth"], final.loc[other, "train_loss_smooth"]
        verdict = ("trains **worse** (higher training loss) than" if o > 1.05 * r else
                   "trains **better** than" if o < 0.95 * r else "trains about as well as")
        stuck = f", still at chance level (ln {len(CLASSES)} = {chance:.2f})" if abs(o - chance) < 0.03 else ""
        return f"{kind} {other} {verdict} {ref} ({o:.3f} vs {r:.3f}{stuck})."

    pairs = [("plain20", "plain56", "Plain:"), ("resnet20", "resnet56", "Residual:"),
             ("plain56", "resnet56", "Same depth:")]
    verdicts = [v for v in (compare(*pair) for pair in pairs) if v]
    return "\n".join(lines) + "\n\n" + " ".join(verdicts)


def final_table(df: pd.DataFrame) -> pd.DataFrame:
    final = degradation.final_metrics(df).round(3).rename_axis(columns=None)
    return final.rename(columns=lambda c: c.replace("_smooth", "").replace("_", " "))


def shipped_curves() -> tuple[Any, pd.DataFrame | None, str]:
    """The precomputed curves shown on load (figure, final-metrics table, text)."""
    path = degradation.SHIPPED_CSV
    if not path.exists():
        return None, None, f"No shipped curves at `{path}`; press the button to train a short version."
    df = degradation.read_csv(path)
    steps = int(df.step.max())
    return degradation.plot_curves(df), final_table(df), describe_degradation(df, f"Shipped run, {steps} steps")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _probe_degradation() -> dict[str, float]:
    """Time a 2-step version of the short re-run through its progress reports: setup, one training step of the
    four nets, one validation of one batch of images (scaled to the re-run's validation set by the caller)."""
    q = degradation.QUICK
    marks: list[tuple[str, float]] = [("start", time.perf_counter())]
    degradation.run_degradation(steps=2, batch_size=q["batch_size"], train_size=2 * q["batch_size"],
                                val_size=q["batch_size"], evals=1,  # validation at the start and the end only
                                device=zoo().device,
                                progress=lambda _f, desc: marks.append((desc, time.perf_counter())))
    at = dict(marks)
    return {"setup": at["validating at step 0"] - at["start"],
            "step": at["step 2/2"] - at["step 1/2"],  # the first step also validates and warms up
            "validation": at["done"] - at["step 2/2"]}


def estimate_rerun(t: dict[str, float]) -> float:
    """Seconds of the short re-run from probe timings: setup + steps x one step + each validation, scaled from
    one batch of images to the validation set. Rendering its training images is left out (about 2% of the run)."""
    q = degradation.QUICK
    return t["setup"] + q["steps"] * t["step"] + (q["evals"] + 1) * t["validation"] * q["val_size"] / q["batch_size"]


@functools.lru_cache(maxsize=1)
def rerun_estimate() -> float:
    """The short re-run's duration on this server, timed once per process (about a second)."""
    return estimate_rerun(_probe_degradation())


@functools.lru_cache(maxsize=1)
def _quick_run(progress: _Untracked) -> tuple[pd.DataFrame, float]:
    t = time.perf_counter()
    df = degradation.run_degradation(progress=progress.value, device=zoo().device, **degradation.QUICK)
    return df, time.perf_counter() - t


def rerun_label() -> str:
    """The re-run button's text: what the run took here once it has run (it is then cached), else the estimate."""
    steps = degradation.QUICK["steps"]
    if _quick_run.cache_info().currsize:
        _, seconds = _quick_run(_Untracked(None))  # the one cached run (the key ignores its progress)
        return f"Show the short re-run ({steps} steps; it trained in {_duration(seconds)} on this server, cached)"
    return f"Re-run a short version ({steps} steps, about {_duration(rerun_estimate())} on this server)"


def rerun_degradation(progress: Any = gr.Progress()) -> tuple[Any, pd.DataFrame, str]:
    """Train the four nets for the short, fixed budget (cached: it is deterministic)."""
    cached = _quick_run.cache_info().currsize > 0
    df, seconds = _quick_run(_Untracked(progress))
    text = describe_degradation(df, f"Short re-run, {degradation.QUICK['steps']} steps")
    text += ("\n\nThis short budget shows only the start: in the shipped run the nets leave chance level between "
             "~150 and ~350 steps, and the plain-20 / plain-56 gap opens after that.")
    text += (f"\n\n⏱️ {'Cached: the re-run' if cached else 'This re-run'} trained in {_duration(seconds)} "
             f"on this server (estimated: {_duration(rerun_estimate())}).")
    return degradation.plot_curves(df), final_table(df), text


def build_tab() -> None:
    """The tab's components and events, inside the caller's `gr.Blocks` and `gr.Tab`."""
    gr.Markdown(
        "### Why can a ResNet be 152 layers deep?\n"
        "One batch, one backward pass, at initialization: the norm of the gradient of every conv's weights and at "
        "every block's output, layer by layer, for each chosen depth and its **plain twin** (the same net without "
        "shortcuts, built from the same seed, so every shared weight is identical). Bands show the spread "
        "over seeds; the y axes are logarithmic.")
    archs = gr.CheckboxGroup(ARCH_CHOICES, value=DEFAULT_ARCHS, label="Depths (each with its plain twin)",
                             elem_id="research-archs")
    with gr.Row(equal_height=True):
        bn = gr.Radio(BN_CHOICES, value="train", label="BatchNorm", scale=2)
        init = gr.Radio(INIT_CHOICES, value="default", label="Init", scale=2)
        size = gr.Dropdown(SIZE_CHOICES, value=AUTO_SIZE, label="Input size", scale=2)
        batch = gr.Slider(*BATCH_RANGE, 8, step=1, label="Batch size", scale=1)
        seeds = gr.Slider(1, 10, 3, step=1, label="Seeds (mean and spread)", scale=1, elem_id="research-seeds")
    run = gr.Button("Measure", variant="primary")
    with gr.Row():
        with gr.Column(scale=3):
            fig_w = gr.Plot(label="‖∂L/∂W‖ per conv, input → output", format="png", elem_id="gradnorms-plot")
            fig_x = gr.Plot(label="‖∂L/∂x‖ at each block output", format="png")
        with gr.Column(scale=2):
            text = gr.Markdown("Press **Measure**: the default (three CIFAR depths, 3 seeds) takes a few seconds "
                               "on a CPU.")
            fig_s = gr.Plot(label="First/last conv gradient ratio against depth", format="png")
    with gr.Row():
        table = gr.Dataframe(label="Summary (mean ± std over seeds)", interactive=False, wrap=True, scale=4,
                             elem_id="gradnorms-table")
        csv = gr.File(label="Per-layer results (CSV)", scale=1)
    run.click(on_gpu(user_errors(run_gradnorms)), [archs, bn, init, batch, size, seeds],
              [fig_w, fig_x, fig_s, table, csv, text], api_name="gradnorms", **LONG)

    gr.Markdown(
        "### Degradation: deeper plain nets train worse\n"
        f"{HE_2015}, Fig. 1 and 6: plain-20, plain-56, ResNet-20 and ResNet-56 trained on the same Shapes "
        "batches from the same seed with the same SGD schedule. Lines: smoothed training loss and accuracy; "
        "dots: held-out accuracy. Plain nets dashed, ResNets solid. A higher *training* loss for the deeper plain "
        "net is not overfitting: the solver fails to find what the shallower net proves exists. The budget is ~2% "
        "of He et al.'s schedule, so read the ordering at the end of this run, not of a full training.")
    fig, final, note = shipped_curves()
    with gr.Row():
        with gr.Column(scale=3):
            deg_plot = gr.Plot(fig, label="Training curves", format="png", elem_id="degradation-plot")
        with gr.Column(scale=2):
            deg_text = gr.Markdown(note)
            deg_table = gr.Dataframe(final, label="Final metrics", interactive=False, elem_id="degradation-table")
            rerun = gr.Button(rerun_label())
    rerun.click(on_gpu(user_errors(rerun_degradation)), None, [deg_plot, deg_table, deg_text],
                api_name="degradation", **LONG).then(rerun_label, None, rerun, queue=False, api_visibility="private")
