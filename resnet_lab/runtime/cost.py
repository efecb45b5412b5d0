"""The one cost model: how many seconds and bytes a study's run takes, known before it starts.

Seconds of running nets, for each (net, images) at `batch` images per pass (passes = images / batch):

    WORK[kind] x (passes x layer calls x seconds per call + MACs x seconds per MAC)
    + PARAM_WORK[kind] x passes x parameters x seconds per parameter

Work is counted on the meta device, nothing allocated: a forward pass's multiply-accumulates per image
(`macs_per_image`), its layer calls (`layer_calls`: every conv, BN, ReLU, pooling, shortcut and classifier module
call plus each residual add) and the net's parameters (`params_of`). A pass pays every call, and reads (in a
training step also writes the gradients of) every weight, once whatever the batch holds, so small batches cost
more per image than the MACs say: a batch-8 gradient sweep of the CIFAR nets is mostly per-call overhead on a
CPU, one of the ImageNet nets mostly weights. `WORK` and `PARAM_WORK` say how many forward passes, and how many
training steps' weights, each kind of work is worth (measured by `benchmarks/bench_cost.py`).

The three rates are this device's *now*: a no-grad forward of a ResNet-20 on 2 and on 32 images at 32 px (solved
for seconds per giga-MAC and per layer call, `solve_rates`) and a training step of one wide conv on 2 images of
1 px (seconds per parameter), timed once per process, device and thread count on first use (~0.5 s on two CPU
cores). So an estimate follows the machine it runs on and how busy it is, not a constant calibrated elsewhere;
`remeasure` forgets the rates when the load has changed.

Building a net (`build_seconds`) is charged where a study builds: the seeded init draws every parameter from its
own generator on the CPU, so a build costs seconds per module (meta construction, one generator each) plus seconds
per parameter drawn, both measured on first use from building a ResNet-20 and drawing 2^20 normal numbers
(`solve_build`).

Bytes come from `memory` (tensors counted on the meta device, times the allocator's measured overhead).
Every study's `cost(...)` composes these; the CLIs and the app refuse or size runs with them.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..data.images import decode_image
from ..models.blocks import BasicBlock, Bottleneck
from ..models.resnet import REGISTRY, build
from .devices import synchronize

# Forward-pass equivalents of each kind of work, for both the per-call and the per-MAC part (the shipped twins and
# ResNet-50 at batch 8-256 on two busy cores, benchmarks/bench_cost.py: a training step 2.6-4.6x a forward, median
# 3.5; a Hessian-vector product, curvlinops' forward-over-reverse through torch.func, 10-21x, median 16; the double
# backward that replaced it, 11-15x on the 20- and 56-layer twins at batch 64, one thread, predicted / measured
# 0.93-0.99: kept graphs make sequential products 1.4-1.9x cheaper still, so the estimate stays an upper bound).
WORK = {"forward": 1.0, "train_step": 3.5, "hvp": 15.0}
# How much of a training step's per-parameter cost each kind pays per pass (a forward reads and reorders the weights
# once; a step also writes their gradients, the weight-gradient convs memory-bound at a small batch). Fitted on
# ResNet-18/50/101 at 64 px, batch 2 and 8: forward 0.04-0.22, step 0.5-1.7, HVP 2.5-5.
PARAM_WORK = {"forward": 0.15, "train_step": 1.0, "hvp": 3.5}
PROBE_ARCH, PROBE_SIZE = "resnet20", 32
PROBE_BATCHES = (2, 32)  # overhead-bound and MAC-bound: two equations for the two rates
PROBE_REPEATS = 3  # timed passes at each batch, after one warm-up each (oneDNN primitives, cuDNN plans)
PARAM_PROBE = (512, 1)  # a 3x3 conv of 512 channels on 2 images of 1 px: a training step that is all weights
FILL_PROBE = 2**20  # normal numbers drawn to time the per-parameter part of a build
DEFAULT_BATCH = 64  # images per pass where a caller does not say (what every study used to be charged at)


@dataclass(frozen=True)
class Cost:
    """What a run needs: seconds on this device now, and its peak bytes (an upper bound)."""

    seconds: float
    bytes: int

    def __add__(self, other: Cost) -> Cost:  # runs one after another: times add, the peak is the larger
        return Cost(self.seconds + other.seconds, max(self.bytes, other.bytes))


@dataclass(frozen=True)
class Rates:
    """A device's rates now: seconds per giga-MAC and per layer call of a forward pass, and seconds per parameter
    of a training-step pass (what a pass costs by the weights alone)."""

    per_gmac: float
    per_call: float
    per_param: float = 0.0


@dataclass(frozen=True)
class BuildRates:
    """Building a net now: seconds per module and seconds per parameter (the seeded init, on the CPU)."""

    per_module: float
    per_param: float


def build_meta(arch: str, num_classes: int = 8) -> nn.Module:
    """`arch` with meta weights (shapes only, nothing allocated)."""
    with torch.device("meta"):
        return build(arch, num_classes=num_classes, seed=0)


def _is_add(m: nn.Module) -> bool:
    """A residual block (its `out + shortcut` is one more elementwise call than its modules)."""
    return isinstance(m, (BasicBlock, Bottleneck)) and m.residual


def _same_shape(x: torch.Tensor) -> torch.Tensor:
    return x


@functools.lru_cache(maxsize=128)
def _counts(arch: str, size: int, num_classes: int) -> tuple[int, int]:
    """(MACs, layer calls) of one forward pass of `arch` on one `size` px image, counted on meta."""
    net = build_meta(arch, num_classes).eval()
    macs, calls = 0, 0

    def count(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs, calls
        calls += 1
        if isinstance(m, nn.Conv2d):
            macs += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    leaves = [m for m in net.modules() if not any(m.children()) and not isinstance(m, nn.Identity)]
    for m in leaves:  # BatchNorm keeps the shape; on meta it runs Python decompositions (~40 % of the time)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = _same_shape
    hooks = [m.register_forward_hook(count) for m in leaves + [m for m in net.modules() if _is_add(m)]]
    with torch.no_grad():
        net(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return macs, calls


def macs_per_image(arch: str, size: int = 32, num_classes: int = 8) -> int:
    """Multiply-accumulates of one forward pass of `arch` on one `size` px image (convs and the classifier)."""
    return _counts(arch, size, num_classes)[0]


def layer_calls(arch: str, size: int = 32, num_classes: int = 8) -> int:
    """Layer calls of one forward pass of `arch`, whatever the batch: every leaf module that computes something
    (conv, BN, ReLU, pooling, option-A shortcut, classifier; not an Identity) and one add per residual block.
    ResNet-20: 19 convs + 19 BNs + 19 ReLUs + 2 shortcuts + pool + fc + 9 adds = 70."""
    return _counts(arch, size, num_classes)[1]


@functools.lru_cache(maxsize=128)
def _size_of(arch: str, num_classes: int) -> tuple[int, int]:
    net = build_meta(arch, num_classes)
    return sum(1 for _ in net.modules()), sum(p.numel() for p in net.parameters())


def modules_of(arch: str, num_classes: int = 8) -> int:
    """Modules of `arch` (the net itself included): what a build constructs and initializes one by one."""
    return _size_of(arch, num_classes)[0]


def params_of(arch: str, num_classes: int = 8) -> int:
    """Parameters of `arch`: what a build draws from its seeded generators."""
    return _size_of(arch, num_classes)[1]


def solve_rates(small: tuple[int, float], large: tuple[int, float], step: float | None = None,
                arch: str = PROBE_ARCH, size: int = PROBE_SIZE) -> Rates:
    """The rates that explain two timed forward passes of `arch` ((images, seconds) each) and, if given, `step`
    seconds of the parameter probe's training step. Both passes pay the same layer calls, so their difference is
    the MACs of the extra images; what the step took beyond its calls and MACs is its parameters'. Noise that
    makes the difference non-positive (or the small pass cheaper than its MACs) leaves a rate of at least a tenth
    of the large pass's average, and no negative overhead."""
    (b1, t1), (b2, t2) = sorted((small, large))
    gmacs = macs_per_image(arch, size) / 1e9
    per_gmac = max((t2 - t1) / ((b2 - b1) * gmacs), 0.1 * t2 / (b2 * gmacs))
    per_call = max(0.0, (t1 - b1 * gmacs * per_gmac) / layer_calls(arch, size))
    if step is None:
        return Rates(per_gmac, per_call)
    channels, side = PARAM_PROBE
    params = channels * channels * 9
    probe_gmacs = 2 * side * side * params / 1e9
    rest = step - WORK["train_step"] * (per_call + probe_gmacs * per_gmac)
    return Rates(per_gmac, per_call, max(0.0, rest / params))


def _probe_timer(device: str) -> Callable[[int], float]:
    """Seconds of one no-grad forward of the probe net on `batch` images on `device`."""
    net = build(PROBE_ARCH, num_classes=8, seed=0).to(device).eval()

    def forward(batch: int) -> float:
        x = torch.zeros(batch, 3, PROBE_SIZE, PROBE_SIZE, device=device)
        with torch.inference_mode():
            t = time.perf_counter()
            net(x)
            synchronize(device)
            return time.perf_counter() - t

    return forward


def _param_timer(device: str) -> Callable[[], float]:
    """Seconds of one forward and backward of the parameter probe (`PARAM_PROBE`) on `device`."""
    channels, side = PARAM_PROBE
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False, device=device)
    x = torch.zeros(2, channels, side, side, device=device, requires_grad=True)

    def step() -> float:
        conv.weight.grad = x.grad = None  # a fresh gradient each time, as a step after zero_grad(set_to_none)
        t = time.perf_counter()
        conv(x).sum().backward()
        synchronize(device)
        return time.perf_counter() - t

    return step


def measure_rates(forward: Callable[[int], float], step: Callable[[], float] | None = None) -> Rates:
    """Rates from `forward(batch)` -> seconds (the probe net's pass) and `step()` -> seconds (the parameter
    probe's): each warmed up once, then `PROBE_REPEATS` interleaved runs, the fastest of each solved (timeit's
    rule: a burst of other work only ever slows a run, so the fastest is the machine's own speed; a median taken
    while the app loaded a model at page load priced the Playground's defaults 9x too slow and refused them)."""
    for b in PROBE_BATCHES:
        forward(b)
    if step is not None:
        step()
    times: dict[int, list[float]] = {b: [] for b in PROBE_BATCHES}
    steps = []
    for _ in range(PROBE_REPEATS):
        for b in PROBE_BATCHES:
            times[b].append(forward(b))
        if step is not None:
            steps.append(step())
    small, large = ((b, min(times[b])) for b in PROBE_BATCHES)
    return solve_rates(small, large, min(steps) if steps else None)


RATES_TTL_S = 600.0  # measured rates are kept this long: a probe timed while the server was busy is not kept forever


_clock = time.monotonic  # the period's clock; tests replace this, never `time.monotonic` itself (that is every
# thread's clock: the served app's asyncio loop then scheduled its queue's wake-ups 11 days ahead and hung CI)


def _period() -> int:
    """The current `RATES_TTL_S` period: part of the rate caches' keys, so each period measures afresh."""
    return int(_clock() // RATES_TTL_S)


@functools.lru_cache(maxsize=16)
def _measured_rates(device: str, threads: int, period: int = 0) -> Rates:
    return measure_rates(_probe_timer(device), _param_timer(device))


_PROBING = threading.Lock()  # one probe at a time: two timed at once (two page loads) would slow each other


def rates(device: str | torch.device = "cpu") -> Rates:
    """Seconds per giga-MAC and per layer call of forward passes on `device` with this process's thread count,
    measured on first use and again every `RATES_TTL_S` (a long-running server's load comes and goes)."""
    with _PROBING:
        return _measured_rates(str(torch.device(device)), torch.get_num_threads(), _period())


def rate(device: str | torch.device = "cpu") -> float:
    """Seconds per giga-MAC of forward pass on `device` (the per-call part aside), measured on first use."""
    return rates(device).per_gmac


def solve_build(build_s: float, fill_s: float, arch: str = PROBE_ARCH, filled: int = FILL_PROBE) -> BuildRates:
    """Build rates from a timed build of `arch` and a timed draw of `filled` normal numbers: the draw prices a
    parameter, what the build took beyond its parameters prices a module (never negative)."""
    per_param = fill_s / filled
    return BuildRates(max(0.0, (build_s - params_of(arch) * per_param) / modules_of(arch)), per_param)


def measure_build(device: str) -> BuildRates:
    """Build rates on `device` now: the fastest of three seeded ResNet-20 builds (moved to `device`, as the studies
    do) and of three draws of `FILL_PROBE` normal numbers into fresh memory from a CPU generator (as the init
    draws into the parameters it has just allocated), each after a warm-up."""
    g = torch.Generator().manual_seed(0)

    def timed(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t)
        return min(times)  # the fastest: see measure_rates

    build_s = timed(lambda: build(PROBE_ARCH, num_classes=8, seed=1).to(device))
    return solve_build(build_s, timed(lambda: torch.empty(FILL_PROBE).normal_(generator=g)))


@functools.lru_cache(maxsize=16)
def _measured_build(device: str, threads: int, period: int = 0) -> BuildRates:
    return measure_build(device)


def build_rates(device: str | torch.device = "cpu") -> BuildRates:
    """Seconds per module and per parameter of building a net for `device` now, measured on first use and again
    every `RATES_TTL_S`."""
    with _PROBING:
        return _measured_build(str(torch.device(device)), torch.get_num_threads(), _period())


DECODE_PROBE = 512  # px side of the images `decode_seconds` times, one of each kind (8-bit PNG, 16-bit PNG, JPEG)


def measure_decode() -> dict[str, float]:
    """Seconds per header pixel of `data.decode_image` at 32 px now, by kind (`zipdata.ZipScan.pixels`'s): the
    fastest of three decodes of a photo-like probe (a ramp with noise; its JPEG ~2.5 bits a pixel) after a warm-up."""
    import io
    import timeit

    import numpy as np
    from PIL import Image

    ramp = np.add.outer(np.arange(DECODE_PROBE), np.arange(DECODE_PROBE)) / (2.0 * DECODE_PROBE)
    gray = np.clip(ramp + np.random.default_rng(0).normal(0, 0.1, ramp.shape), 0, 1)
    rgb = Image.fromarray((np.stack([gray, gray.T, gray[::-1]], -1) * 255).astype(np.uint8))
    out = {}
    for kind, img, fmt in (("8-bit", rgb, "PNG"), ("jpeg", rgb, "JPEG"),
                           ("wide", Image.fromarray((gray * 65535).astype(np.uint16)), "PNG")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        times = timeit.repeat(lambda b=buf.getvalue(): decode_image(b, min_side=32), number=1, repeat=4)
        out[kind] = min(times[1:]) / DECODE_PROBE**2  # the first is the warm-up
    return out


@functools.lru_cache(maxsize=4)
def _measured_decode(period: int = 0) -> dict[str, float]:
    return measure_decode()


def decode_seconds(pixels: dict[str, int]) -> float:
    """Seconds to decode images of these header pixels by kind (a zip's, `zipdata.ZipScan.pixels`) at the
    decoder's rates now, measured on first use and again every `RATES_TTL_S`. A 1-bit or flat image decodes
    faster than the probes (the estimate then errs long), JPEG at 1/8 of its size (`decode_image`'s draft)."""
    with _PROBING:
        rate = _measured_decode(_period())
    return sum(n * rate[kind] for kind, n in pixels.items())


def warm_up(device: str | torch.device = "cpu") -> None:
    """Measure the rates now (the app calls this once it serves, while it is idle), so no estimate times the
    machine beside other work; an estimate asked for meanwhile waits for these (`_PROBING`)."""
    rates(device)
    build_rates(device)


def remeasure() -> None:
    """Forget every measured rate: the next estimate times its probes again (for a load that has changed)."""
    _measured_rates.cache_clear()
    _measured_build.cache_clear()
    _measured_decode.cache_clear()


def passes_batch(n: int, batch: int) -> float:
    """The images per pass when `n` images go through in chunks of `batch`: n / ceil(n / batch), so that
    `seconds(..., batch=passes_batch(n, batch))` charges every chunk's calls, the last short one included."""
    return n / math.ceil(n / batch) if n > 0 else float(batch)


def seconds(work: Iterable[tuple[str, int]], kind: str, device: str | torch.device = "cpu", size: int = 32,
            num_classes: int = 8, batch: float = DEFAULT_BATCH) -> float:
    """Seconds for `kind` of work (a key of WORK) over (arch, images) pairs on `device` now, `batch` images per
    pass: e.g. [("resnet56", 256 * 441)]. Each pass pays the net's layer calls and its parameters; each image its
    MACs."""
    if kind not in WORK:
        raise ValueError(f"kind must be one of {', '.join(WORK)}, not {kind!r}")
    if batch <= 0:
        raise ValueError(f"batch must be positive, not {batch}")
    r = rates(device)
    total = 0.0
    for arch, n in work:
        passes = int(n) / batch
        total += WORK[kind] * (passes * layer_calls(arch, size, num_classes) * r.per_call
                               + macs_per_image(arch, size, num_classes) * int(n) / 1e9 * r.per_gmac)
        total += PARAM_WORK[kind] * passes * params_of(arch, num_classes) * r.per_param
    return total


def build_seconds(arch: str, device: str | torch.device = "cpu", num_classes: int = 8) -> float:
    """Seconds to build `arch` with its seeded init (on the CPU) and move it to `device`, from its module and
    parameter counts at the rates measured now."""
    r = build_rates(device)
    return modules_of(arch, num_classes) * r.per_module + params_of(arch, num_classes) * r.per_param


def arch_of(model: nn.Module) -> str:
    """The registry name of a model's config (`resnet56`), or its class name for anything else."""
    for name, cfg in REGISTRY.items():
        if cfg == getattr(model, "config", None):
            return name
    return type(model).__name__
