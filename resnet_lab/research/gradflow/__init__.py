"""Gradient flow at initialization: every net against its plain twin, layer by layer.

    python -m resnet_lab gradnorms --archs resnet20,resnet56,resnet110 --seeds 5 --out gradnorms.csv --plot g.png

Why can a ResNet be 152 layers deep? One batch, one backward, and the norms of dL/dW (every conv) and dL/dx (every
block output) answer it. With BatchNorm in train mode a plain net's gradients do not vanish: they *grow* toward the
input by roughly x1.2 per layer (Yang et al. 2019, "A Mean Field Theory of Batch Normalization"), so plain-110's
first conv sees a gradient ~10^7 times its last conv's. The identity term of a residual block (He et al. 2016,
"Identity Mappings in Deep Residual Networks") keeps the profile orders of magnitude flatter. Without BN the story
changes: plain nets shrink mildly while ResNets blow up in the forward pass (what Fixup and SkipInit address). The
residual nets' initial loss is above ln(classes) and grows with depth (2.59, 3.12, 3.91 for ResNet-20/56/110,
batch 8 of noise, seeds 0-4): each branch adds its variance to the identity path, so the logits' variance across
classes grows about linearly with the block count (0.56, 2.0, 4.5), and i.i.d. Gaussian logits of that variance
give the same loss within 2% (E[CE] ~ ln C + var/2 while var is small). The plain twins' logits barely spread:
their loss is ln C.

Parts: `compute` (the tidy per-layer rows, `COLUMNS`), `describe` (summaries and the reading), `plot`; here the
cost of a sweep before it runs (`estimate_cost`: seconds from `cost`, bytes from `memory`, and what fits when it is
too big) and the CLI. The CSV written by `--out` gets a JSON record of the run beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch

from ...models.resnet import twin_name
from ...paths import ASSETS
from ...runtime import cost as C
from ...runtime.memory import ALLOCATOR_OVERHEAD, BACKWARD_WORKSPACE, largest_fitting, step_memory
from ..tables import read_checked_csv
from .compute import (
    BN_MODES,
    CIFAR_ARCHS,
    COLUMNS,
    DEFAULT_INPUT_SIZE,
    IMAGENET_ARCHS,
    VARIANTS,
    GradFlowConfig,
    build_net,
    conv_layers,
    jobs,
    make_batch,
    measure,
    run_sweep,
)
from .describe import HE_2015, HE_2016, YANG, describe_gradnorms, per_seed_summary, summarize
from .plot import plot_all, plot_profile, plot_summary

__all__ = ["BN_MODES", "CIFAR_ARCHS", "COLUMNS", "DEFAULT_INPUT_SIZE", "HE_2015", "HE_2016", "IMAGENET_ARCHS",
           "INPUT_SIZES", "VARIANTS", "YANG", "GradFlowConfig", "TimeFit", "WhatFits", "build_net", "conv_layers",
           "describe_gradnorms", "estimate_cost", "estimate_memory", "estimate_seconds", "largest_batch",
           "make_batch", "measure", "memory_refusal", "net_memory", "per_seed_summary", "plot_all", "plot_profile",
           "plot_summary", "read_csv", "run_sweep", "summarize", "time_fits", "to_csv", "what_fits"]

INPUT_SIZES = (32, 48, 64, 96, 112, 128, 160, 224)  # the input sizes a refusal may offer (and the app lists)
SHIPPED_CSV = ASSETS / "gradnorms_cifar.csv"  # and .png beside it: the sweep the app opens on
SHIPPED_COMMAND = ("python -m resnet_lab gradnorms --archs resnet20,resnet56,resnet110 --seeds 5 "
                   "--out assets/gradnorms_cifar.csv --plot assets/gradnorms_cifar.png")
SHIPPED_CONFIG = GradFlowConfig(archs=("resnet20", "resnet56", "resnet110"), seeds=5)  # what that command runs
FLOAT_FORMAT = "%.9g"  # norms span ten orders of magnitude: keep significant digits, not decimals


def to_csv(df: pd.DataFrame, path: str) -> None:
    df.to_csv(path, index=False, float_format=FLOAT_FORMAT)


def read_csv(path: str) -> pd.DataFrame:
    return read_checked_csv(path, COLUMNS, "gradnorms")[COLUMNS]


# --- cost: a sweep measures one net at a time, so its peak memory is the hungriest net's and its time the sum ---


def net_memory(arch: str, variant: str, cfg: GradFlowConfig) -> int:
    """Peak tensor bytes of `measure` for one net of `cfg` besides its batch, counted on meta (allocates nothing).

    Parameters and their gradients, every tensor saved for backward, the retained gradients of the block outputs
    (`measure` keeps them), and `BACKWARD_WORKSPACE` gradient buffers the size of the largest activation.
    """
    params, saved, retained, largest = step_memory(arch, variant, cfg.batch_size, cfg.size_for(arch), cfg.bn_mode,
                                                   cfg.num_classes)
    return 2 * params + saved + retained + BACKWARD_WORKSPACE * largest


def estimate_memory(cfg: GradFlowConfig) -> int:
    """Estimated peak bytes `run_sweep(cfg)` adds to the process: an upper bound, for refusing what cannot fit.

    Each net is freed before the next, so the peak is one net's (`net_memory`), not the sum; the twins' batches
    (one per seed and input size) stay for the whole sweep. Times the device's `ALLOCATOR_OVERHEAD`, since the
    process holds more than its tensors.
    """
    peak = max(net_memory(arch, variant, cfg) for arch in cfg.archs for variant in VARIANTS)
    sizes = {cfg.size_for(arch) for arch in cfg.archs}
    batches = sum(cfg.seeds * cfg.batch_size * (3 * s * s * 4 + 8) for s in sizes)
    return math.ceil(ALLOCATOR_OVERHEAD[torch.device(cfg.device).type] * (peak + batches))


def estimate_seconds(cfg: GradFlowConfig) -> float:
    """Seconds of `run_sweep(cfg)` on its device now, from the one cost model: each net is built (its seeded
    init runs on the CPU, then it moves to the device) and makes one forward and backward pass ("train_step"
    work) on one batch of `cfg.batch_size`, whose layer calls dominate at the small batches a sweep uses."""
    work: dict[int, list[tuple[str, int]]] = {}
    built = 0.0
    for arch, variant, _ in jobs(cfg):
        name = arch if variant == "residual" else twin_name(arch)
        work.setdefault(cfg.size_for(arch), []).append((name, cfg.batch_size))
        built += C.build_seconds(name, cfg.device, cfg.num_classes)
    return built + sum(C.seconds(w, "train_step", cfg.device, size, cfg.num_classes, batch=cfg.batch_size)
                       for size, w in work.items())


def estimate_cost(cfg: GradFlowConfig) -> C.Cost:
    """What `run_sweep(cfg)` needs before it starts: seconds on its device now and peak bytes."""
    return C.Cost(estimate_seconds(cfg), estimate_memory(cfg))


def largest_batch(cfg: GradFlowConfig, budget: int) -> int | None:
    """The largest batch up to `cfg.batch_size` whose estimate fits `budget`, or None if not even the smallest."""
    return largest_fitting(lambda b: estimate_memory(replace(cfg, batch_size=b)),
                           2 if cfg.bn_mode == "train" else 1, cfg.batch_size, budget)


def _smaller_size(cfg: GradFlowConfig, need: float, budget: float, estimate: Callable[[GradFlowConfig], float],
                  sizes: tuple[int, ...]) -> int | None:
    """The largest offered input size below the current one whose `estimate` fits `budget`. Each new size costs
    the estimate a pass over the nets, so the walk down starts where a cost scaling with the pixel count predicts
    a fit, and each candidate is then checked with the estimate itself."""
    now = max(cfg.size_for(a) for a in cfg.archs)
    smaller = [s for s in sorted(sizes, reverse=True) if s < now]
    first = next((i for i, s in enumerate(smaller) if need * (s / now) ** 2 <= budget), len(smaller))
    return next((s for s in smaller[first:] if estimate(replace(cfg, input_size=s)) <= budget), None)


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
    """None if `cfg` fits `budget` bytes, else what it needs and which nearby settings fit (each checked with the
    estimate itself). The CLI and the app word it their own way (flags or widget names) from this one answer."""
    need = estimate_memory(cfg)
    if need <= budget:
        return None
    hungriest = max(cfg.archs, key=lambda a: estimate_memory(replace(cfg, archs=(a,))))
    rest = tuple(a for a in cfg.archs if a != hungriest)
    without = hungriest if rest and estimate_memory(replace(cfg, archs=rest)) <= budget else None
    size = _smaller_size(cfg, need, budget, estimate_memory, sizes)
    return WhatFits(need, budget, hungriest, largest_batch(cfg, budget), size, without)


@dataclass(frozen=True)
class TimeFit:
    """What an overlong sweep would take, and settings near it that fit the time budget (None where nothing does)."""

    need: float
    budget: float
    seeds: int | None  # the most seeds that fit, below the current count
    batch: int | None  # the largest batch that fits, below the current one
    input_size: int | None  # the largest offered size below the current one
    archs: tuple[str, ...] | None  # the depths that fit, the costliest left out first


def time_fits(cfg: GradFlowConfig, budget: float, sizes: tuple[int, ...] = INPUT_SIZES) -> TimeFit | None:
    """None if `cfg` is estimated to finish within `budget` seconds, else its estimate and what fits: fewer seeds,
    a smaller batch, a smaller input size, fewer depths (each checked with `estimate_seconds`, as the refusal)."""
    need = estimate_seconds(cfg)
    if need <= budget:
        return None
    seeds = largest_fitting(lambda n: estimate_seconds(replace(cfg, seeds=n)), 1, cfg.seeds - 1, budget)
    batch = largest_fitting(lambda b: estimate_seconds(replace(cfg, batch_size=b)), 2 if cfg.bn_mode == "train" else 1,
                            cfg.batch_size - 1, budget)
    size = _smaller_size(cfg, need, budget, estimate_seconds, sizes)
    archs = sorted(cfg.archs, key=lambda a: estimate_seconds(replace(cfg, archs=(a,))))
    while archs and estimate_seconds(replace(cfg, archs=tuple(archs))) > budget:
        archs.pop()
    kept = tuple(a for a in cfg.archs if a in archs) or None
    return TimeFit(need, budget, seeds, batch, size, kept)


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


