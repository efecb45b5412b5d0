"""The Playground: a plain net and its ResNet twin trained side by side, watched live.

TensorFlow Playground for convolutional nets with and without shortcuts: the user picks the depth, BatchNorm,
init, optimizer, learning rate, batch size and steps, and watches both nets learn on Shapes. The training is the
degradation study's lockstep loop (`degradation.compute.run_degradation`: identical batches, one init seed for
both, the same schedule), so what the Playground shows is what the study measures; `LiveWatch` only looks:

- training loss and accuracy every step, held-out loss and accuracy at `evals` points;
- a layers x steps map of each main-path conv's weight-gradient norm (the gradient study, over training rather
  than at initialization), kept for at most `MAX_COLUMNS` steps (evenly thinned beyond);
- per-stage weight-update ratios ||W_after - W_before|| / ||W_before|| every `ratio_every` steps.

`snapshot()` copies what has been seen so far for the UI, which polls it once a second from another
thread; `stop()` ends the run after the step in flight, keeping what was trained, and so does the clock at the
watch's `time_limit_s` (the caller's policy: the app's is `ui.playground_time`). The cost comes from the one cost
model (`degradation.estimate_cost`), so a run is sized (`what_fits`) and refused before it starts.

`PlaygroundConfig` declares each setting once with the control the page draws for it (`settings.control`: label,
choices or range, default), so the page builds its controls from it rather than typing them again.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.zipdata import ZipImages, ZipScan
from ..models.resnet import REGISTRY, list_archs, twin_name
from ..runtime import cost as C
from ..settings import control
from .degradation import estimate_cost
from .degradation.compute import OPTIMIZERS, run_degradation
from .gradflow.compute import conv_layers

DEPTHS = tuple(REGISTRY[a].depth for a in list_archs("cifar") if a.startswith("resnet"))  # 20, 32, 44, 56, 110
INITS = ("he", "zero-gamma")
IMAGE_SIZES = (16, 32)  # Shapes rendered at 16 px train ~1.5x faster per step and are still told apart
MAX_COLUMNS = 400  # steps kept in the gradient map (thinned to every k-th beyond): the image stays small
_clock = time.monotonic  # a run's clock; tests replace this, never `time.monotonic` itself (every thread's clock:
# the served app's asyncio loop then schedules its queue's wake-ups at the fake time and hangs; see `cost._clock`)


@dataclass(frozen=True)
class PlaygroundConfig:
    """One Playground run. Defaults: the 56-layer pair on 16-px Shapes with Adam, where ResNet-56 leaves chance
    and plain-56 does not within about two minutes on two CPU cores (README, "Playground"; SGD at 32 px needs
    ~150-350 steps of 0.76 s just to leave chance)."""

    depth: int = control(56, "Depth (6n+2 layers)", choices=DEPTHS, dropdown=True)
    batchnorm: bool = control(True, "BatchNorm")
    # "zero-gamma": each block's last BN gamma zeroed (Goyal et al. 2017)
    init: str = control("he", "Init", choices=INITS)
    optimizer: str = control("adam", "Optimizer", choices=OPTIMIZERS)  # "sgd" (momentum 0.9) | "adam" (AdamW)
    lr: float = control(0.005, "Learning rate", minimum=1e-5, maximum=10)
    batch_size: int = control(32, "Batch size", minimum=2, maximum=128, step=2)
    steps: int = control(300, "Steps", minimum=20, maximum=2000, step=10)
    seed: int = control(0, "Seed", precision=0)
    image_size: int = control(16, "Image size (px)", choices=IMAGE_SIZES)
    evals: int = 8
    val_size: int = 256
    ratio_every: int = 5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(map(str, DEPTHS))} (6n+2), not {self.depth}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.init == "zero-gamma" and not self.batchnorm:
            raise ValueError("zero-gamma init zeroes a BatchNorm weight: it needs BatchNorm on")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise ValueError(f"learning rate must be in (0, 10], not {self.lr}")
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image size must be one of {', '.join(map(str, IMAGE_SIZES))} px, not {self.image_size}")
        if self.steps < 1 or self.batch_size < (2 if self.batchnorm else 1):
            raise ValueError("need at least 1 step and a batch of at least 2 with BatchNorm (1 without)")

    @property
    def archs(self) -> tuple[str, str]:
        """(plain, residual) registry names of the pair."""
        residual = next(a for a in list_archs("cifar") if a.startswith("resnet") and REGISTRY[a].depth == self.depth)
        return twin_name(residual), residual

    def cost(self) -> C.Cost:
        """Seconds and peak bytes on `device` now, from the one cost model."""
        return estimate_cost(self.steps, self.batch_size, self.archs, train_size=self.steps * self.batch_size,
                             val_size=self.val_size, evals=self.evals, image_size=self.image_size,
                             device=self.device)


def net_label(arch: str) -> str:
    """How the Playground names a net of a pair (its curves, its checkpoints, the session's pickers): ResNet-56,
    plain-56."""
    return f"{'ResNet' if REGISTRY[arch].residual else 'plain'}-{REGISTRY[arch].depth}"


def what_fits(cfg: PlaygroundConfig, seconds: float) -> PlaygroundConfig | None:
    """The same run with as many steps as fit in `seconds` on this server now (None when even 10 do not).

    Bisected on the cost model (building the nets and the held-out checks cost the same at any step count, so
    the time is not proportional to the steps)."""
    def with_steps(n: int) -> PlaygroundConfig:
        return PlaygroundConfig(**{**asdict(cfg), "steps": n})

    if cfg.cost().seconds <= seconds:
        return cfg
    lo, hi = 10, cfg.steps  # lo fits (checked next), hi does not
    if with_steps(lo).cost().seconds > seconds:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if with_steps(mid).cost().seconds <= seconds else (lo, mid)
    return with_steps(lo)


def on_images(cfg: PlaygroundConfig, n_train: int, n_val: int) -> tuple[PlaygroundConfig, str]:
    """`cfg` as it runs on an uploaded zip's `n_train` training and `n_val` held-out images: its held-out checks
    over those, and a batch no larger than the training images (a larger one drew images twice into a batch,
    silently), with the sentence that says so ("" when the batch is kept)."""
    batch = min(cfg.batch_size, n_train)
    note = (f"Batch size {batch} is used: your zip gives {n_train} images to train on, fewer than the batch size "
            f"of {cfg.batch_size}." if batch < cfg.batch_size else "")
    return replace(cfg, batch_size=batch, val_size=n_val), note


def read_seconds(scan: ZipScan) -> float:
    """Seconds to decode a zip's images before the run: their header pixels at the decoder's rates now."""
    return C.decode_seconds(scan.pixels)


@dataclass
class Snapshot:
    """What the run has shown so far (copies: the run goes on meanwhile)."""

    step: int  # steps done
    steps: int
    seconds: float
    curves: pd.DataFrame  # net, step, metric (train_loss, train_acc, val_loss, val_acc), value
    grad_maps: dict[str, np.ndarray]  # net -> (layers, columns) log10 gradient norms, NaN where not yet seen
    grad_steps: list[int]  # the step of each column
    ratios: pd.DataFrame  # net, step, stage, ratio
    done: bool
    stopped: bool
    error: str = ""
    timed_out: bool = False  # stopped by the watch's time limit, not by the user


@dataclass
class LiveWatch:
    """Looks at a `run_degradation` run of one twin pair (see the module docstring). Thread-safe reads."""

    steps: int
    ratio_every: int = 5
    _rows: list[tuple[str, int, str, float]] = field(default_factory=list)
    _grads: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    _grad_steps: list[int] = field(default_factory=list)
    _ratios: list[tuple[str, int, str, float]] = field(default_factory=list)
    _before: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    _convs: dict[str, list[nn.Conv2d]] = field(default_factory=dict)
    _done_steps: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = field(default_factory=lambda: _clock())
    time_limit_s: float = math.inf  # the longest the run may go on, from the watch's start (the caller's policy)
    nets: dict[str, nn.Module] = field(default_factory=dict)  # the trained pair, by label, for the caller
    done: bool = False
    error: str = ""
    timed_out: bool = False

    def __post_init__(self) -> None:
        self._every = max(1, math.ceil(self.steps / MAX_COLUMNS))  # keep every k-th step's gradients

    def stop(self) -> None:
        """End the run after the step in flight; what was trained is kept."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def before_update(self, arch: str, net: nn.Module, step: int) -> None:
        if step % self._every == 0:
            if arch not in self._convs:  # the main-path convs, found once per net (not on every step)
                self._convs[arch] = [c for _, _, short, c in conv_layers(net) if not short]
            norms = torch.stack([c.weight.grad.norm() if c.weight.grad is not None else c.weight.new_zeros(())
                                 for c in self._convs[arch]]).cpu()
            with self._lock:
                self._grads.setdefault(arch, []).append(norms)
                if not self._grad_steps or self._grad_steps[-1] != step:
                    self._grad_steps.append(step)
        if step % self.ratio_every == 0:
            self._before[arch] = [p.detach().clone() for _, stage in net.stages() for p in stage.parameters()]

    def after_update(self, arch: str, net: nn.Module, step: int, loss: float, acc: float) -> None:
        ratios = []
        if step % self.ratio_every == 0 and arch in self._before:
            before = iter(self._before.pop(arch))
            for name, stage in net.stages():
                num = den = 0.0
                for p in stage.parameters():
                    b = next(before)
                    num += float((p.detach() - b).pow(2).sum())
                    den += float(b.pow(2).sum())
                ratios.append((net_label(arch), step, name, math.sqrt(num / den) if den > 0 else math.nan))
        with self._lock:
            self.nets.setdefault(net_label(arch), net)
            self._rows += [(net_label(arch), step, "train_loss", loss), (net_label(arch), step, "train_acc", acc)]
            self._ratios += ratios

    def validated(self, arch: str, step: int, loss: float, acc: float) -> None:
        with self._lock:
            self._rows += [(net_label(arch), step, "val_loss", loss), (net_label(arch), step, "val_acc", acc)]

    def keep_going(self, step: int) -> bool:
        """Go on unless stopped or past `time_limit_s` (then stopped here: the run keeps what it trained)."""
        with self._lock:
            self._done_steps = step + 1
        if not self._stop.is_set() and _clock() - self._t0 >= self.time_limit_s:
            self.timed_out = True
            self._stop.set()
        return not self._stop.is_set()

    def snapshot(self) -> Snapshot:
        """A copy of everything seen so far."""
        with self._lock:
            rows, ratios, steps = list(self._rows), list(self._ratios), list(self._grad_steps)
            grads = {a: list(v) for a, v in self._grads.items()}
            done_steps = self._done_steps
        maps = {}
        for arch, cols in grads.items():
            m = torch.stack(cols, 1).numpy() if cols else np.zeros((0, 0))
            with np.errstate(divide="ignore"):
                maps[net_label(arch)] = np.log10(m)
        return Snapshot(done_steps, self.steps, _clock() - self._t0,
                        pd.DataFrame(rows, columns=["net", "step", "metric", "value"]), maps, steps,
                        pd.DataFrame(ratios, columns=["net", "step", "stage", "ratio"]), self.done, self.stopped,
                        self.error, self.timed_out)


def run_playground(cfg: PlaygroundConfig, watch: LiveWatch | None = None, images: ZipImages | None = None
                   ) -> LiveWatch:
    """Train the pair of `cfg` with `watch` looking (made here when not given) on Shapes, or on `images` (an
    uploaded zip's); the watch then holds the trained nets (`watch.nets`, by label). An error is kept in
    `watch.error` (the UI shows it) and raised."""
    watch = watch or LiveWatch(cfg.steps, cfg.ratio_every)
    data = None if images is None else (images.x_train, images.y_train, images.x_val, images.y_val)
    if images is not None:
        cfg = on_images(cfg, len(images.y_train), len(images.y_val))[0]
    try:
        run_degradation(cfg.steps, cfg.batch_size, cfg.archs, cfg.seed, lr=cfg.lr,
                        train_size=cfg.steps * cfg.batch_size, val_size=cfg.val_size, evals=cfg.evals,
                        image_size=cfg.image_size, device=cfg.device, norm="bn" if cfg.batchnorm else "none",
                        zero_init=cfg.init == "zero-gamma", optimizer=cfg.optimizer, watch=watch, data=data)
    except Exception as e:
        watch.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        watch.done = True
    return watch
