"""What a training step of a ResNet holds in memory, counted on the meta device (nothing is allocated).

The gradient study, the degradation run, the loss landscape, the curvature and lesion studies and the app's live
runs refuse work that would not fit before they start: their estimates are built from `step_memory` (parameters,
tensors saved for backward, retained block outputs, the largest activation) times the allocator's measured
overhead, against what the process may still allocate (`available_memory`); `largest_fitting` bisects for what
does fit, and `refusal` is the sentence a command refuses with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import REGISTRY, ResNet, twin_name
from . import resources
from .scoring import EVAL_BATCH

BACKWARD_WORKSPACE = 3  # activation-sized gradient buffers alive at once during backward
# What a process really holds per byte of tensors, from peaks measured against the tensor count: the resident peak
# on 2 CPU cores is 0.95-1.27x for one `measure`, up to 1.93x for a few degradation steps and 1.92x for a landscape
# (a CI run; 1.0-1.7x in most runs), since glibc keeps freed activation-sized blocks in its heap and how many it
# keeps varies from run to run; CUDA's max_memory_allocated on an H100 is 0.75-1.04x. So the estimates bound both
# (benchmarks/bench_gradflow.py --cuda-check; tests/test_gradflow.py, test_degradation.py, test_landscape.py).
ALLOCATOR_OVERHEAD = {"cpu": 2.2, "cuda": 1.1}
# Resident bytes per byte of a loaded model's tensors (the app's cached nets): RSS grows ~17 % beyond the tensors'
# bytes (ResNet-152: +565 MB for 482 MB of tensors). A different quantity from ALLOCATOR_OVERHEAD (a held state dict,
# not a step's freed and re-taken activations), so both numbers stay, each checked where it is measured
# (tests/test_zoo.py for this one; the studies' tests and benchmarks/bench_gradflow.py for the other).
ALLOCATOR_MARGIN = 1.2
# Shares of `available_memory` each consumer plans for, so that they fit beside one another:
ZOO_SHARE = 0.5  # the app's cached models: the other half is for requests' activations and Research jobs
STUDY_SHARE = 0.5  # one live Research or Playground run in the app (tests/test_resources.py)
FOLDER_CACHE_SHARE = 0.25  # an image folder decoded once and trained from memory (`train --folder-cache auto`)


def saved_tensor_bytes(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(bytes autograd keeps for backward, bytes of the largest such tensor) in one forward + loss.

    Each storage counts once (a ReLU output saved by the ReLU and by the next conv
    is one tensor) and the weights are left out (they are counted as parameters).
    Works on the meta device, where nothing is allocated, at any batch and size.
    """
    params = {id(p) for p in net.parameters()}
    storages = {p.untyped_storage().data_ptr() for p in net.parameters() if not p.is_meta}
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # on meta, ids identify tensors only while they live

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if t.is_meta:
            if id(t) in params or id(base) in params:
                return t
            keep.append(base)
            seen.setdefault(id(base), base.numel() * base.element_size())
        elif (ptr := t.untyped_storage().data_ptr()) not in storages:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(net(x), y)
    return sum(seen.values()), max(seen.values(), default=0)


class _ShapeOnlyBN(nn.BatchNorm2d):
    """A BN that autograd treats like one (it saves the input; the weight is a parameter) at meta speed.

    torch's meta BatchNorm is a Python decomposition, ~100x slower than this
    affine map. A real BN also saves per-channel vectors: `stats` of them (the
    running mean and variance, plus the batch mean and inverse std in train mode).
    """

    @staticmethod
    def stats(bn_mode: str) -> int:
        return 4 if bn_mode == "train" else 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


@functools.lru_cache(maxsize=256)
def _profile(arch: str, variant: str, size: int, bn_mode: str, num_classes: int) -> tuple[int, tuple, tuple]:
    """(parameter bytes, (saved, retained, largest saved) bytes at batch 2, the same at batch 4), on meta.

    Saved: the tensors autograd keeps for backward; retained: the block outputs
    whose gradients `measure` keeps.
    """
    config = REGISTRY[arch if variant == "residual" else twin_name(arch)]
    with torch.device("meta"):
        net = ResNet(config, num_classes, norm_layer=nn.Identity if bn_mode == "none" else _ShapeOnlyBN, seed=0)
    per_channel = sum(_ShapeOnlyBN.stats(bn_mode) * m.num_features * 4 for m in net.modules()
                      if isinstance(m, _ShapeOnlyBN))
    block_out: list[int] = []
    handles = [blk.register_forward_hook(lambda _m, _i, out: block_out.append(out.numel() * out.element_size()))
               for _, blk in net.blocks()]
    points = []
    try:
        for batch in (2, 4):
            block_out.clear()
            x = torch.empty(batch, 3, size, size, device="meta")
            saved, largest = saved_tensor_bytes(net, x, torch.zeros(batch, dtype=torch.long, device="meta"))
            points.append((saved + per_channel, sum(block_out), largest))
    finally:
        for h in handles:
            h.remove()
    return sum(p.numel() * p.element_size() for p in net.parameters()), points[0], points[1]


def step_memory(arch: str, variant: str, batch: int, size: int, bn_mode: str = "train",
                num_classes: int = 10) -> tuple[int, int, int, int]:
    """(parameter, saved, retained block-output, largest saved tensor) bytes of one training step of a net.

    `arch` is a registered ResNet and `variant` "residual" or "plain" (its twin).
    Activations are affine in the batch size (per-channel BN statistics are the
    constant part), so two cached meta passes at batch 2 and 4 give every batch
    exactly: bisecting for the largest batch that fits costs nothing.
    """
    params, (s2, r2, l2), (s4, r4, l4) = _profile(arch, variant, size, bn_mode, num_classes)
    k = batch - 2
    return params, s2 + (s4 - s2) * k // 2, r2 + (r4 - r2) * k // 2, l2 + (l4 - l2) * k // 2


def available_memory(device: str | torch.device = "cpu") -> int:
    """The one free-memory reading: bytes a computation on `device` may still allocate now, free GPU memory on CUDA
    (`cudaMemGetInfo`), else what the container (not the host) can still give (`resources.memory_available`)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return resources.memory_available()


def refusal(need: int, budget: int, hint: str) -> str | None:
    """None if `need` bytes fit `budget`, else the one sentence every command refuses with: what the run needs,
    what is free for it now, and `hint`, the settings that make it smaller."""
    if need <= budget:
        return None
    return (f"this run needs about {need / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB free for it "
            f"now; {hint}.")


def largest_fitting(estimate: Callable[[int], int], lo: int, hi: int, budget: int) -> int | None:
    """The largest n in lo..hi with estimate(n) <= budget (the estimate grows with n), or None if not even lo.

    One bisection for every "what batch fits" question (a sweep, a training run, a landscape), so each
    refusal offers a setting checked with the same estimate that refused it.
    """
    if hi < lo or estimate(lo) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if estimate(mid) <= budget else (lo, mid - 1)
    return lo


def inference_memory(archs: list[str], n: int, size: int = 32, eval_batch: int = EVAL_BATCH, weight_copies: int = 3,
                     num_classes: int = 8, device: str = "cpu") -> int:
    """Peak bytes of evaluating the nets `archs` (loaded together, run one at a time, no gradients) on `n` images.

    Every net's weights, `weight_copies` more of the largest net's (a private copy, the saved weights, directions),
    the images (rendered as uint8, one float copy being normalized and one kept), and one batch's forward pass (six
    activation-sized buffers at its largest layer alive at once: a block's input kept for its shortcut, the conv,
    BN and ReLU outputs, and oneDNN's reordered copies), counted on meta
    (`step_memory`), times the device's `ALLOCATOR_OVERHEAD`: an upper bound, for refusing what cannot fit. The
    landscape, the lesion study and the app's live runs all size themselves with this.
    """
    params, largest = [], 0
    for arch in archs:
        name, variant = (arch, "residual") if REGISTRY[arch].residual else (twin_name(arch), "plain")
        p, _, _, big = step_memory(name, variant, max(2, min(n, eval_batch)), size, "eval", num_classes)
        params.append(p)
        largest = max(largest, big)
    images = n * 3 * size * size
    peak = sum(params) + weight_copies * max(params, default=0) + images * (1 + 4 + 4) + 6 * largest
    return math.ceil(ALLOCATOR_OVERHEAD[torch.device(device).type] * peak)


def hvp_memory(arch: str, chunk: int, size: int = 32, num_classes: int = 8, krylov_vectors: int = 30,
               device: str = "cpu") -> int:
    """Peak bytes of Hessian-vector products of one net on chunks of `chunk` images: the weights and
    `krylov_vectors` parameter-sized vectors (ARPACK's or Lanczos' basis, the product, its input), and about three
    training steps' saved tensors (forward-over-reverse keeps the forward, the backward and their tangents)."""
    name, variant = (arch, "residual") if REGISTRY[arch].residual else (twin_name(arch), "plain")
    params, saved, _, largest = step_memory(name, variant, max(2, chunk), size, "eval", num_classes)
    peak = (2 + krylov_vectors) * params + 3 * saved + 3 * BACKWARD_WORKSPACE * largest
    return math.ceil(ALLOCATOR_OVERHEAD[torch.device(device).type] * peak)
