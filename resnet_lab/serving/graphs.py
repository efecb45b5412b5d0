"""CUDA graphs for the served models: one captured graph per batch-size bucket, eager for everything else.

At batch 1 a ResNet-50 forward is almost all kernel-launch overhead (3.35 ms eager
against ~0.7 ms replayed on an H100, issue 10). The queue forms batches of 1 to 16,
so we capture one graph per bucket (1, 2, 4, 8, 16), pad a batch up to its bucket
and slice the result.

Manual `torch.cuda.CUDAGraph` capture, not `torch.compile(mode="reduce-overhead")`:
capturing the eager model takes seconds at model load where compiling ResNet-50
for five shapes takes minutes; the graphs run the very kernels the eager model
runs, so their result equals eager (checked at capture); and a replay is one lock
plus two copies, safe from Gradio's worker threads, where the CUDA-graph trees
behind reduce-overhead are kept per thread and would record again in each.
(`benchmarks/bench_inference.py` times both.)

`capture` is injectable, so the bucketing, padding, checking and fallback run in
tests on the CPU (`capture_on_cpu` is a stand-in with the same static buffers). Any failure turns graphs off
for that model with one warning, and the model's status line says so.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)  # the queue's max_batch_size is 16 (ui/classify.py)
Runner = Callable[[torch.Tensor], torch.Tensor]
Capture = Callable[..., Runner]  # (fn, example batch, pool) -> a runner for batches of that shape
CHECK_TOLERANCE = 1e-2  # of the logits' scale: a graph that replays the eager kernels agrees to rounding


def graphs_off_reason(device: str | torch.device) -> str | None:
    """Why CUDA graphs are off for a model on `device`, or None when they are on.

    Off with `RESNET_LAB_CUDA_GRAPHS=0`; off on ZeroGPU (`SPACES_ZERO_GPU` set, as `ui.common.on_gpu`
    reads it), where the GPU is attached per call and the model loads before any GPU exists; off off CUDA.
    """
    if os.environ.get("RESNET_LAB_CUDA_GRAPHS", "1").strip() == "0":
        return "RESNET_LAB_CUDA_GRAPHS=0"
    if os.environ.get("SPACES_ZERO_GPU"):
        return "on ZeroGPU the GPU is attached per call"
    if torch.device(device).type != "cuda":
        return "not on CUDA"
    return None


def bucket_for(n: int, buckets: Sequence[int] = BUCKETS) -> int | None:
    """The smallest bucket that holds `n` rows, None when `n` exceeds them all."""
    return next((b for b in sorted(buckets) if b >= n), None)


CAPTURE_LOCK = threading.Lock()  # one capture at a time in this process (see `capture_cuda_graph`)


def static_runner(static_in: torch.Tensor, replay: Callable[[], None], static_out: torch.Tensor) -> Runner:
    """What a captured graph is to its caller: copy the batch into the static input, replay, return the static
    output (overwritten by the next replay: the caller copies it). Shared by the real capture and the CPU stand-in
    (`capture_on_cpu`), so a runner that forgot the copy would replay stale input in the CPU tests too."""

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        replay()
        return static_out

    return run


def capture_cuda_graph(fn: Runner, example: torch.Tensor, pool: Any = None) -> Runner:
    """Capture `fn` on a batch shaped like `example` into `pool` (a `torch.cuda.graph_pool_handle()` that a
    model's buckets share: one private pool per model, not one per graph).

    Serialized process-wide by `CAPTURE_LOCK` on a dedicated side stream: the zoo loads several models at once,
    entering a capture synchronizes the device and empties the cache, and two captures on torch's one shared
    capture stream would invalidate each other. Warm-up runs on that stream first (cudnn autotuning allocates; a
    capture must not), with cudnn autotuning on only here (`cudnn_benchmark`): the kernels chosen are the ones
    the graph keeps. `thread_local` capture: other threads' eager work meanwhile does not break it.
    """
    device = example.device
    with CAPTURE_LOCK, torch.cuda.device(device), cudnn_benchmark():
        static_in = example.clone(memory_format=torch.preserve_format)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(static_in)
        side.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            static_out = fn(static_in)
        side.synchronize()
    return static_runner(static_in, graph.replay, static_out)


def capture_on_cpu(fn: Runner, example: torch.Tensor, pool: Any = None) -> Runner:
    """A CPU stand-in for `capture_cuda_graph` (tests, machines without CUDA): the same static input and output
    buffers and the same `static_runner`; "replay" recomputes `fn` on the static input into the static output,
    which is what a graph's kernels do. Only the captured shape is accepted, as by a graph."""
    static_in = example.clone(memory_format=torch.preserve_format)
    static_out = fn(static_in).clone()
    # A graph holds kernels, not the Python model: keep a bound method weakly, as a real capture keeps nothing.
    ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else lambda: fn
    runner = static_runner(static_in, lambda: static_out.copy_(ref()(static_in)), static_out)
    shape = tuple(example.shape)

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != shape:
            raise RuntimeError(f"a graph replays only the shape it captured: {shape}, not {tuple(x.shape)}")
        return runner(x)

    return run


_benchmark_lock = threading.Lock()
_benchmark_users = 0


@contextlib.contextmanager
def cudnn_benchmark() -> Iterator[None]:
    """cudnn autotuning on for the serving forward only, restored when the last serving thread leaves.

    `torch.backends.cudnn.benchmark` is one process-wide flag: set at model load (as before) it also changed the
    algorithms of research runs sharing the GPU for the life of the process. Scoped here, a research run sees it
    only while a serving forward is in flight in another thread (torch has no per-thread flag).
    """
    global _benchmark_users
    with _benchmark_lock:
        if _benchmark_users == 0:
            cudnn_benchmark.previous = torch.backends.cudnn.benchmark  # type: ignore[attr-defined]
            torch.backends.cudnn.benchmark = True
        _benchmark_users += 1
    try:
        yield
    finally:
        with _benchmark_lock:
            _benchmark_users -= 1
            if _benchmark_users == 0:
                torch.backends.cudnn.benchmark = cudnn_benchmark.previous  # type: ignore[attr-defined]


class BucketedGraphs:
    """Calls the runner of the smallest bucket that holds the batch, padded with zeros and sliced back.

    Batches larger than the largest bucket go through it in chunks. It holds no reference to the model that owns
    it (the eager forward is passed per call): a classifier and its graphs in a reference cycle stayed in memory,
    weights and graph pools, after the zoo evicted them, until the cycle collector happened to run. Replays are
    serialized: a graph has one static input and output.
    """

    def __init__(self, runners: dict[int, Runner], sample_shape: Sequence[int], device: torch.device):
        self.runners = dict(runners)
        self.sample_shape = tuple(sample_shape)
        self.device = device
        self._lock = threading.Lock()

    @property
    def buckets(self) -> list[int]:
        return sorted(self.runners)

    def fits(self, x: torch.Tensor) -> bool:
        """Whether `x` can replay: the captured sample shape, on the captured device, at least one row."""
        return tuple(x.shape[1:]) == self.sample_shape and x.device == self.device and len(x) > 0

    def __call__(self, x: torch.Tensor, eager: Runner) -> torch.Tensor:
        """`x` through the graphs, or through `eager` when it does not fit them."""
        if not self.fits(x):
            return eager(x)
        top = self.buckets[-1]
        if len(x) > top:
            return torch.cat([self(chunk, eager) for chunk in x.split(top)])
        n = len(x)
        b = bucket_for(n, self.buckets)
        if b is None:  # a bucket list with holes cannot happen via `bucketed`; stay correct anyway
            return eager(x)
        if b > n:
            x = torch.cat([x, x.new_zeros((b - n, *self.sample_shape))])
        with self._lock:  # the pool is shared: the output is copied before another bucket replays over it
            return self.runners[b](x)[:n].clone()


def bucketed(eager: Runner, sample_shape: Sequence[int], device: torch.device,
             memory_format: torch.memory_format = torch.contiguous_format, buckets: Sequence[int] = BUCKETS,
             capture: Capture = capture_cuda_graph, name: str = "model") -> tuple[BucketedGraphs | None, str]:
    """Capture `eager` for each bucket, for float32 batches of `sample_shape` (C, H, W) on `device` in
    `memory_format` (what the model is fed), and check each graph against `eager` on a seeded random batch.

    (graphs, "") when every bucket captured and agrees; (None, the reason), with one warning naming the model,
    when any capture fails or disagrees: the caller keeps running eagerly and shows the reason.
    """
    runners: dict[int, Runner] = {}
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors name it
    gen = torch.Generator(device=device).manual_seed(0)
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None  # one pool for all of its buckets

    def draw(b: int) -> torch.Tensor:
        return torch.empty((b, *sample_shape), device=device).normal_(generator=gen).contiguous(
            memory_format=memory_format)

    try:
        with torch.inference_mode():
            for b in sorted(buckets):
                runner = capture(eager, draw(b), pool)
                batch = draw(b)  # not the captured example: a runner that replays stale input fails the check
                got, want = runner(batch).float(), eager(batch).float()
                gap = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
                if not gap <= CHECK_TOLERANCE * max(float(want.abs().max()), 1e-6):
                    raise RuntimeError(f"the graph for batch {b} disagrees with the eager model (max |diff| {gap:.3g})")
                runners[b] = runner
    except Exception as e:  # any capture or check failure: eager is always right
        reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        log.warning("CUDA graphs off for %s, running eagerly: %s", name, reason)
        return None, reason
    return BucketedGraphs(runners, sample_shape, device), ""
