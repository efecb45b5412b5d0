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
tests on the CPU. Any failure turns graphs off for that model with one log line.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)  # the queue's max_batch_size is 16 (ui/classify.py)
Runner = Callable[[torch.Tensor], torch.Tensor]
Capture = Callable[[Runner, torch.Tensor], Runner]  # (fn, example batch) -> a runner for batches of that shape
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


def capture_cuda_graph(fn: Runner, example: torch.Tensor) -> Runner:
    """Capture `fn` on a batch shaped like `example`; the runner copies its input into the graph's static input,
    replays, and returns the graph's static output (overwritten by the next replay: the caller copies it).

    Warm-up runs on a side stream first (cudnn autotuning allocates; a capture must not). `thread_local`
    capture: other threads serving other models meanwhile are not disturbed.
    """
    device = example.device
    with torch.cuda.device(device):
        static_in = example.clone(memory_format=torch.preserve_format)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = fn(static_in)
        torch.cuda.synchronize()

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


class BucketedGraphs:
    """Calls the runner of the smallest bucket that holds the batch, padded with zeros and sliced back.

    Batches larger than the largest bucket go through it in chunks; batches of another sample shape
    (or on another device) run `eager`. Replays are serialized: a graph has one static input and output.
    """

    def __init__(self, eager: Runner, runners: dict[int, Runner], sample_shape: Sequence[int], device: torch.device):
        self.eager = eager
        self.runners = dict(runners)
        self.sample_shape = tuple(sample_shape)
        self.device = device
        self._lock = threading.Lock()

    @property
    def buckets(self) -> list[int]:
        return sorted(self.runners)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape or x.device != self.device or not len(x):
            return self.eager(x)
        top = self.buckets[-1]
        if len(x) > top:
            return torch.cat([self(chunk) for chunk in x.split(top)])
        n = len(x)
        b = bucket_for(n, self.buckets)
        if b is None:  # a bucket list with holes cannot happen via `bucketed`; stay correct anyway
            return self.eager(x)
        if b > n:
            x = torch.cat([x, x.new_zeros((b - n, *self.sample_shape))])
        with self._lock:
            return self.runners[b](x)[:n].clone()


def bucketed(eager: Runner, sample_shape: Sequence[int], device: torch.device,
             memory_format: torch.memory_format = torch.contiguous_format, buckets: Sequence[int] = BUCKETS,
             capture: Capture = capture_cuda_graph, name: str = "model") -> BucketedGraphs | None:
    """Capture `eager` for each bucket, for float32 batches of `sample_shape` (C, H, W) on `device` in
    `memory_format` (what the model is fed), and check each graph against `eager` on a seeded random batch.

    None, with one warning naming the model and the failure, when any capture fails or disagrees: the
    caller keeps running eagerly.
    """
    runners: dict[int, Runner] = {}
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors name it
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        with torch.inference_mode():
            for b in sorted(buckets):
                batch = torch.empty((b, *sample_shape), device=device).normal_(generator=gen)
                batch = batch.contiguous(memory_format=memory_format)
                runner = capture(eager, batch.clone(memory_format=torch.preserve_format))
                got, want = runner(batch).float(), eager(batch).float()
                gap = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
                if not gap <= CHECK_TOLERANCE * max(float(want.abs().max()), 1e-6):
                    raise RuntimeError(f"the graph for batch {b} disagrees with the eager model (max |diff| {gap:.3g})")
                runners[b] = runner
    except Exception as e:  # any capture or check failure: eager is always right
        log.warning("CUDA graphs off for %s, running eagerly: %s: %s", name, type(e).__name__, " ".join(str(e).split()))
        return None
    return BucketedGraphs(eager, runners, sample_shape, device)

