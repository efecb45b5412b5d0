"""Throughput of the pieces of a Shapes training run: rendering, training steps, evaluation.

    python -m benchmarks.bench_train --arch resnet20 --threads 1 2     (from the repository root)

Run it on an otherwise idle machine: with other jobs on the cores, OpenMP
threads wait on each other and the numbers say more about the neighbours.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from resnet_lab.resnet import build
from resnet_lab.shapes import CLASSES, ShapesDataset


def images_per_s(fn, n_images: int, repeats: int = 3) -> float:
    """Best of `repeats` timings of `fn()` (after one warm-up call), as images per second."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n_images / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(training, inference) images per second on one batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            model(x)

    model.train()
    train_rate = images_per_s(step, len(x))
    model.eval()
    return train_rate, images_per_s(infer, len(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = p.parse_args()

    print(f"render: {images_per_s(lambda: ShapesDataset(1000, seed=1, size=args.size), 1000, 1):.0f} images/s")
    data = ShapesDataset(args.batch_size, seed=2, size=args.size)
    x = data.normalized().contiguous(memory_format=torch.channels_last)
    y = data.labels
    for threads in args.threads:
        torch.set_num_threads(threads)
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = build(args.arch, num_classes=len(CLASSES), seed=0).to(memory_format=fmt)
            train_rate, eval_rate = bench_model(model, x.contiguous(memory_format=fmt), y)
            name = "channels_last" if fmt is torch.channels_last else "contiguous"
            print(f"{args.arch} {args.size}px threads={threads} {name:13s}: train {train_rate:6.0f} images/s, "
                  f"eval {eval_rate:6.0f} images/s")

if __name__ == "__main__":
    main()
