"""Gradient flow at initialization: every net against its plain twin, layer by layer.

Why can a ResNet be 152 layers deep? One batch, one backward, and the norms of
dL/dW (every conv) and dL/dx (every block output) answer it. With BatchNorm in
train mode a plain net's gradients do not vanish: they *grow* toward the input
by roughly x1.2 per layer (Yang et al. 2019, "A Mean Field Theory of Batch
Normalization"), so plain-110's first conv sees a gradient ~10^7 times its
last conv's. The identity term of a residual block (He et al. 2016, "Identity
Mappings in Deep Residual Networks") keeps the profile orders of magnitude
flatter. Without BN the story changes: plain nets shrink mildly while ResNets
blow up in the forward pass (what Fixup and SkipInit address). The residual
nets' initial loss is above ln(classes) and grows with depth (2.59, 3.12, 3.91
for ResNet-20/56/110, batch 8 of noise, seeds 0-4): each branch adds its
variance to the identity path, so the logits' variance across classes grows
about linearly with the block count (0.56, 2.0, 4.5), and i.i.d. Gaussian
logits of that variance give the same loss within 2% (E[CE] ~ ln C + var/2
while var is small). The plain twins' logits barely spread: their loss is ln C.

A net and its plain twin are built from the same init seed (never from torch's
global RNG, which another thread may draw from at any time) and fed the same
batch, so any difference comes from the shortcuts alone.

Results are tidy (one row per arch, variant, seed, layer and quantity):

- ``grad_w``: ||dL/dW|| of a main-path conv; ``depth_index`` counts weighted
  layers from the input (1 = stem conv).
- ``grad_w_shortcut``: ||dL/dW|| of a 1x1 projection shortcut (ImageNet-style
  ResNets only), at the depth index of its block's first conv.
- ``grad_x``: ||dL/dx|| at a block's output, at its last conv's depth index.
- ``act_std``: std of a block's output. He et al. (2015, Fig. 7) plot the std of
  BN outputs after training; at init a train-mode BN output has std ~ gamma = 1,
  so the block output is where depth shows.
- ``loss``: the initial cross-entropy (depth index 0).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..progress import Progress, tqdm_progress
from ..resnet import REGISTRY, build, init_seed, list_archs, twin_name
from ..shapes import ShapesDataset
from .memory import ALLOCATOR_OVERHEAD, BACKWARD_WORKSPACE, available_memory, largest_fitting, step_memory
from .tables import read_checked_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

IMAGENET_ARCHS = tuple(a for a in list_archs("imagenet") if a.startswith("resnet"))
CIFAR_ARCHS = tuple(a for a in list_archs("cifar") if a.startswith("resnet"))
DEFAULT_INPUT_SIZE = {"imagenet": 64, "cifar": 32}  # 64 px keeps the default sweep well under 15 s on 2 CPU cores
BN_MODES = ("train", "eval", "none")
VARIANTS = ("plain", "residual")
COLUMNS = ["arch", "variant", "depth", "seed", "depth_index", "layer", "quantity", "value"]


@dataclass(frozen=True)
class GradFlowConfig:
    """One experiment; frozen so it can key a cache."""

    archs: tuple[str, ...] = IMAGENET_ARCHS
    bn_mode: str = "train"  # "train" | "eval" (running stats: identity at init) | "none" (no BN layers)
    zero_init: bool = False  # zero each block's last BN gamma (Goyal et al. 2017)
    batch_size: int = 8
    input_size: int | None = None  # None: DEFAULT_INPUT_SIZE of each arch's stem
    seeds: int = 1
    num_classes: int = 10
    data: str = "noise"  # "noise" (standard Gaussian) | "shapes" (normalized Shapes images)
    device: str = "cpu"  # where the nets run; they are built (and seeded) on the CPU, so every device has the same init

    def __post_init__(self) -> None:
        for arch in self.archs:
            if arch not in REGISTRY or not REGISTRY[arch].residual:
                raise ValueError(f"{arch!r} is not a registered ResNet; its plain twin is built for it")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, not {self.bn_mode!r}")
        if self.data not in ("noise", "shapes"):
            raise ValueError(f"data must be 'noise' or 'shapes', not {self.data!r}")
        if self.batch_size < 2 and self.bn_mode == "train":
            raise ValueError("train-mode BatchNorm needs a batch of at least 2")
        if self.seeds < 1:
            raise ValueError("seeds must be >= 1")
        if torch.device(self.device).type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, not {self.device!r}")

    def size_for(self, arch: str) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[REGISTRY[arch].stem]


def make_batch(cfg: GradFlowConfig, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of one seed: inputs plus random labels (a net at init knows no labels anyway)."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same batch whatever the device
    if cfg.data == "noise":
        x = torch.randn(cfg.batch_size, 3, size, size, generator=g)
    else:
        x = ShapesDataset(cfg.batch_size, seed, size).normalized()
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g)
    return x.to(cfg.device), y.to(cfg.device)


def build_net(arch: str, variant: str, seed: int, cfg: GradFlowConfig) -> nn.Module:
    """The residual net or its plain twin; the same seed gives both the same shared weights.

    `init_seed(seed)` is the init seed that `torch.manual_seed(seed)` + `build()` used to give, drawn
    privately: the published numbers stay, and no other thread's use of the global RNG can split a twin pair.
    """
    net = build(arch if variant == "residual" else twin_name(arch), num_classes=cfg.num_classes,
                zero_init_last=cfg.zero_init, norm="none" if cfg.bn_mode == "none" else "bn", seed=init_seed(seed))
    return net.to(cfg.device).train(cfg.bn_mode == "train")


def conv_layers(net: nn.Module) -> list[tuple[str, int, bool, nn.Conv2d]]:
    """(name, depth index, is_shortcut, conv) for every conv, in depth order.

    Shortcut projections are off the main path: they share the depth index of
    their block's first conv instead of taking one of their own.
    """
    out, depth, block_start = [], 0, 0
    for name, m in net.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if ".downsample." in name:
            out.append((name, block_start, True, m))
            continue
        depth += 1
        if name.endswith(".conv1"):
            block_start = depth
        out.append((name, depth, False, m))
    return out


def measure(arch: str, variant: str, seed: int, cfg: GradFlowConfig,
            batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[tuple]:
    """One forward and backward of one net; rows in `COLUMNS` order."""
    net = build_net(arch, variant, seed, cfg)
    x, y = batch if batch is not None else make_batch(cfg, cfg.size_for(arch), seed)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [blk.register_forward_hook(keep(name)) for name, blk in net.blocks()]
    try:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
    finally:
        for h in handles:
            h.remove()

    depth = REGISTRY[arch].depth
    rows = [(arch, variant, depth, seed, 0, "loss", "loss", loss.item())]
    last_conv_of: dict[str, int] = {}
    for name, index, shortcut, conv in conv_layers(net):
        grad = conv.weight.grad
        norm = float(grad.norm()) if grad is not None else 0.0  # an unused conv gets no gradient: its norm is 0
        rows.append((arch, variant, depth, seed, index, name, "grad_w_shortcut" if shortcut else "grad_w", norm))
        if not shortcut:
            last_conv_of[name.rsplit(".", 1)[0]] = index
    for name, out in outputs.items():
        index = last_conv_of[name]
        grad_norm = float(out.grad.norm()) if out.grad is not None else 0.0
        rows.append((arch, variant, depth, seed, index, name, "grad_x", grad_norm))
        rows.append((arch, variant, depth, seed, index, name, "act_std", float(out.detach().std())))
    return rows


# --- memory: a sweep measures one net at a time, so its peak is the hungriest single net's ---


def net_memory(arch: str, variant: str, cfg: GradFlowConfig) -> int:
    """Peak tensor bytes of `measure` for one net of `cfg` besides its batch, counted on meta (allocates nothing).

    Parameters and their gradients, every tensor saved for backward, the
    retained gradients of the block outputs (`measure` keeps them), and
    `BACKWARD_WORKSPACE` gradient buffers the size of the largest activation.
    """
    params, saved, retained, largest = step_memory(arch, variant, cfg.batch_size, cfg.size_for(arch), cfg.bn_mode,
                                                   cfg.num_classes)
    return 2 * params + saved + retained + BACKWARD_WORKSPACE * largest


def estimate_memory(cfg: GradFlowConfig) -> int:
    """Estimated peak bytes `run_sweep(cfg)` adds to the process: an upper bound, for refusing what cannot fit.

    Nets are measured one after another and each is freed before the next, so
    the peak is one net's (`net_memory`), not the sum; the twins' batches (one
    per seed and input size) stay for the whole sweep. Times the device's
    `ALLOCATOR_OVERHEAD`, since the process holds more than its tensors.
    """
    peak = max(net_memory(arch, variant, cfg) for arch in cfg.archs for variant in VARIANTS)
    sizes = {cfg.size_for(arch) for arch in cfg.archs}
    batches = sum(cfg.seeds * cfg.batch_size * (3 * s * s * 4 + 8) for s in sizes)
    return math.ceil(ALLOCATOR_OVERHEAD[torch.device(cfg.device).type] * (peak + batches))


def largest_batch(cfg: GradFlowConfig, budget: int) -> int | None:
    """The largest batch up to `cfg.batch_size` whose estimate fits `budget`, or None if not even the smallest."""
    return largest_fitting(lambda b: estimate_memory(replace(cfg, batch_size=b)),
                           2 if cfg.bn_mode == "train" else 1, cfg.batch_size, budget)


INPUT_SIZES = (32, 48, 64, 96, 112, 128, 160, 224)  # the input sizes a refusal may offer (and the app lists)


@dataclass(frozen=True)
class WhatFits:
    """What an oversized sweep needs, and settings near it that fit (each None where nothing does)."""

    need: int
    budget: int
    hungriest: str  # the arch whose net sets the peak
    batch: int | None  # the largest batch at this input size
    input_size: int | None  # the largest offered size below the current one, at this batch
    without: str | None  # an arch whose removal makes the rest fit (the hungriest), if more than one


def what_fits(cfg: GradFlowConfig, budget: int, sizes: tuple[int, ...] = INPUT_SIZES) -> WhatFits | None:
    """None if `cfg` fits `budget` bytes, else what it needs and which nearby settings fit.

    The CLI and the app word it their own way (flags or widget names) from this one answer. Each new input
    size costs the estimate a pass over the nets, so the walk down starts where activations scaling with the
    pixel count predict a fit, and each candidate is then checked with the estimate itself.
    """
    need = estimate_memory(cfg)
    if need <= budget:
        return None
    fits = lambda **change: estimate_memory(replace(cfg, **change)) <= budget  # noqa: E731
    hungriest = max(cfg.archs, key=lambda a: estimate_memory(replace(cfg, archs=(a,))))
    now = max(cfg.size_for(a) for a in cfg.archs)
    smaller = [s for s in sorted(sizes, reverse=True) if s < now]
    first = next((i for i, s in enumerate(smaller) if need * (s / now) ** 2 <= budget), len(smaller))
    size = next((s for s in smaller[first:] if fits(input_size=s)), None)
    rest = tuple(a for a in cfg.archs if a != hungriest)
    without = hungriest if rest and fits(archs=rest) else None
    return WhatFits(need, budget, hungriest, largest_batch(cfg, budget), size, without)


def memory_refusal(cfg: GradFlowConfig, budget: int) -> str | None:
    """None if `cfg` fits `budget` bytes, else a message (in CLI flags) saying what it needs and what would fit."""
    fit = what_fits(cfg, budget)
    if fit is None:
        return None
    text = (f"this sweep needs about {fit.need / 2**30:.1f} GiB at its peak ({fit.hungriest} at "
            f"{cfg.size_for(fit.hungriest)} px, batch {cfg.batch_size}), more than the {budget / 2**30:.1f} GiB "
            "free for it now. ")
    options = ([f"--batch-size {fit.batch}"] if fit.batch is not None else []) + (
        [f"--input-size {fit.input_size}"] if fit.input_size else []) + (
        [f"--archs without {fit.without}"] if fit.without else [])
    if fit.batch is None:
        text += "Even the smallest batch does not fit. "
    return text + ("What fits: " + "; or ".join(options) + "." if options else
                   f"Leave out {fit.hungriest} or use a smaller --input-size.")


def run_sweep(cfg: GradFlowConfig, progress: Progress | None = None) -> pd.DataFrame:
    """Measure every (arch, variant, seed) of `cfg`; `progress(fraction, desc)` is told after each net."""
    jobs = [(a, v, s) for a in cfg.archs for s in range(cfg.seeds) for v in VARIANTS]
    rows: list[tuple] = []
    batches: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (arch, variant, seed) in enumerate(jobs):
        if progress is not None:
            progress(i / len(jobs), f"{variant} {arch}, seed {seed}")
        key = (cfg.size_for(arch), seed)
        if key not in batches:  # the twins see the very same batch
            batches[key] = make_batch(cfg, *key)
        rows += measure(arch, variant, seed, cfg, batches[key])
    if progress is not None:
        progress(1.0, "done")
    return pd.DataFrame(rows, columns=COLUMNS)


def _log10_ratio(first: float, last: float) -> float:
    if not (first > 0 and last > 0 and math.isfinite(first) and math.isfinite(last)):
        return math.nan  # a zero or non-finite end (zero-gamma plain nets, overflow) has no ratio
    return math.log10(first / last)


def _growth_factor(index: np.ndarray, norm: np.ndarray) -> float:
    """exp(-slope) of ln(norm) against depth index: > 1 means growth toward the input."""
    ok = (norm > 0) & np.isfinite(norm)
    if ok.sum() < 2:
        return math.nan
    slope = np.polyfit(index[ok].astype(float), np.log(norm[ok]), 1)[0]
    return float(np.exp(-slope))


def per_seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, variant, seed): the headline numbers of one measured net."""
    records = []
    for (arch, variant, depth, seed), g in df.groupby(["arch", "variant", "depth", "seed"], sort=False):
        w = g[g.quantity == "grad_w"].sort_values("depth_index")
        x = g[g.quantity == "grad_x"].sort_values("depth_index")
        w1, x1 = (q[q.layer.str.startswith("layer1.")] for q in (w, x))
        records.append({
            "arch": arch, "variant": variant, "depth": depth, "seed": seed,
            "log10_ratio": _log10_ratio(w.value.iloc[0], w.value.iloc[-1]),
            "growth": _growth_factor(w1.depth_index.to_numpy(), w1.value.to_numpy()),
            "dx_log10_ratio": _log10_ratio(x.value.iloc[0], x.value.iloc[-1]),
            "dx_growth": _growth_factor(x1.depth_index.to_numpy(), x1.value.to_numpy()),
            "loss": float(g[g.quantity == "loss"].value.iloc[0]),
        })
    return pd.DataFrame.from_records(records)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds per (arch, variant).

    log10_ratio: log10(||dL/dW|| of the first conv / of the last conv).
    growth: fitted per-layer growth of ||dL/dW|| toward the input inside the first stage.
    dx_log10_ratio, dx_growth: the same for ||dL/dx|| at block outputs (defined where
        zero-gamma leaves the block convs without any gradient).
    loss: the initial loss; ln(num_classes) is what a net with near-zero logits gives.
    """
    per_seed = per_seed_summary(df)
    stats = ["log10_ratio", "growth", "dx_log10_ratio", "dx_growth", "loss"]
    agg = per_seed.groupby(["arch", "variant", "depth"], sort=False)[stats].agg(["mean", "std"])
    agg.columns = [f"{q}_{s}" for q, s in agg.columns]
    agg.insert(0, "seeds", per_seed.groupby(["arch", "variant", "depth"], sort=False).size())
    return agg.reset_index()


# --- the reading: text computed from the measured numbers (the app shows it, the CLI prints it) ---

YANG = "Yang et al. 2019, *A Mean Field Theory of Batch Normalization*"
HE_2016 = "He et al. 2016, *Identity Mappings in Deep Residual Networks*"
HE_2015 = "He et al. 2015, *Deep Residual Learning*"


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


def describe_gradnorms(cfg: GradFlowConfig, summary: pd.DataFrame) -> str:
    """Plain-language reading (Markdown) of *these* numbers under *these* settings, with the papers that explain
    them: every claim follows the sign and size of a measured value, so the text cannot say "vanishing" where
    the plot shows growth. The app shows it beside the plots; the CLI prints it after the table."""
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
                 f"({HE_2015}, Fig. 1) is an optimization effect: the degradation curves measure it by training.")
    return "\n\n".join(parts)


def to_csv(df: pd.DataFrame, path: str) -> None:
    df.to_csv(path, index=False, float_format="%.9g")


def read_csv(path: str) -> pd.DataFrame:
    return read_checked_csv(path, COLUMNS, "gradnorms")[COLUMNS]


# --- plots: matplotlib Figures without pyplot (no global state, safe in Gradio's worker threads), drawn by Agg ---

COLORS = {"plain": "tab:red", "residual": "tab:blue"}
LABELS = {"plain": "plain twin", "residual": "ResNet"}


def _panels(n: int, parent: Figure | SubFigure | None = None, panel_size: tuple[float, float] = (4.2, 3.2),
            cols: int = 3) -> tuple[Figure | SubFigure, np.ndarray]:
    """A new Figure (or `parent`, a Figure or SubFigure) split into `n` panels."""
    from matplotlib.figure import Figure

    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = parent or Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_profile(df: pd.DataFrame, quantity: str = "grad_w", ylabel: str = r"$\|\partial L/\partial W\|$",
                 parent: Figure | SubFigure | None = None) -> Figure | SubFigure:
    """One panel per arch: `quantity` against depth index, plain vs residual.

    Lines are the geometric mean over seeds, bands the min-max; values that are
    exactly 0 cannot sit on a log axis, so the panel says how many there are.
    """
    archs = list(dict.fromkeys(df.arch))
    fig, axes = _panels(len(archs), parent)
    for ax, arch in zip(axes, archs):
        sub = df[(df.arch == arch) & (df.quantity == quantity)]
        notes = []
        for variant in VARIANTS:
            v = sub[sub.variant == variant]
            pos = v[v.value > 0]
            if len(pos) < len(v):
                notes.append(f"{LABELS[variant]}: {len(v) - len(pos)} values exactly 0 (not drawn)")
            if pos.empty:
                continue
            stats = np.log10(pos.value).groupby(pos.depth_index).agg(["mean", "min", "max"])
            ax.plot(stats.index, 10 ** stats["mean"], color=COLORS[variant], lw=1.4, label=LABELS[variant])
            if v.seed.nunique() > 1:
                ax.fill_between(stats.index, 10 ** stats["min"], 10 ** stats["max"], color=COLORS[variant],
                                alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{arch} vs {twin_name(arch)}", fontsize=10)
        ax.set_xlabel("depth index (input -> output)", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    return fig


def plot_summary(summary: pd.DataFrame, parent: Figure | SubFigure | None = None) -> Figure | SubFigure:
    """log10(first conv / last conv ||dL/dW||) against total depth, plain vs residual, +-1 std over seeds."""
    fig, (ax,) = _panels(1, parent, panel_size=(5.5, 3.6))
    for variant in VARIANTS:
        for stem, marker, ls in (("imagenet", "o", "-"), ("cifar", "s", "--")):
            s = summary[(summary.variant == variant) & (summary.arch.map(lambda a: REGISTRY[a].stem) == stem)]
            if s.empty:
                continue
            s = s.sort_values("depth")
            family = "ImageNet" if stem == "imagenet" else "CIFAR"
            ax.errorbar(s.depth, s.log10_ratio_mean, yerr=s.log10_ratio_std.fillna(0), color=COLORS[variant],
                        marker=marker, ls=ls, capsize=3, label=f"{LABELS[variant]}, {family}-style")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("total depth (weighted layers)")
    ax.set_ylabel(r"$\log_{10}$ first / last conv $\|\partial L/\partial W\|$", fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside upper center", ncols=2, fontsize=7)  # above the axes: never over a curve
    return fig


def plot_all(df: pd.DataFrame) -> Figure:
    """The three plots stacked in one Figure (what the CLI's --plot writes)."""
    from matplotlib.figure import Figure

    n = df.arch.nunique()
    rows = math.ceil(n / 3)
    top, middle, bottom = Figure(figsize=(12.6, 6.4 * rows + 3.6), layout="constrained").subfigures(
        3, 1, height_ratios=[rows, rows, 1.1])
    plot_profile(df, "grad_w", parent=top)
    plot_profile(df, "grad_x", r"$\|\partial L/\partial x\|$ at block output", parent=middle)
    plot_summary(summarize(df), parent=bottom)
    return top.figure


# --- CLI ---

def _archs(text: str) -> tuple[str, ...]:
    archs = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in archs if a not in REGISTRY or not REGISTRY[a].residual]
    if bad:
        raise argparse.ArgumentTypeError(f"not a ResNet: {', '.join(bad)} (choose from "
                                         f"{', '.join(IMAGENET_ARCHS + CIFAR_ARCHS)})")
    return archs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", type=_archs, default=IMAGENET_ARCHS,
                   help="comma-separated ResNets; each is measured with its plain twin (default: the ImageNet five)")
    p.add_argument("--bn", choices=BN_MODES, default="train", help="BatchNorm mode (none: no BN layers at all)")
    p.add_argument("--zero-init", action="store_true", help="zero each block's last BN gamma")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, default=None,
                   help="image side; default 64 px for ImageNet-style nets, 32 px for CIFAR-style")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; plots show the spread")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--data", choices=["noise", "shapes"], default="noise")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the init is drawn on the CPU either way)")
    p.add_argument("--out", help="write the tidy per-layer results as CSV")
    p.add_argument("--plot", help="write the plots as one PNG")


def config_from_args(args: argparse.Namespace) -> GradFlowConfig:
    return GradFlowConfig(archs=tuple(args.archs), bn_mode=args.bn, zero_init=args.zero_init,
                          batch_size=args.batch_size, input_size=args.input_size, seeds=args.seeds,
                          num_classes=args.num_classes, data=args.data, device=args.device)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"gradnorms: {e}", file=sys.stderr)
        return 2
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gradnorms: device {cfg.device!r} asked for, but CUDA is not available here", file=sys.stderr)
        return 2
    problem = memory_refusal(cfg, available_memory(cfg.device))
    if problem:
        print(f"gradnorms: {problem}", file=sys.stderr)
        return 2
    progress, close = tqdm_progress(len(cfg.archs) * len(VARIANTS) * cfg.seeds, "gradnorms")
    try:
        df = run_sweep(cfg, progress)
    finally:
        close()
    summary = summarize(df)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.round(3).to_string(index=False))
    if args.out:
        to_csv(df, args.out)
        print(f"wrote {args.out}")
    if args.plot:
        plot_all(df).savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    print("\n" + describe_gradnorms(cfg, summary))
    return 0
