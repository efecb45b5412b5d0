"""Throughput of the pieces of a Shapes training run: rendering, training steps, evaluation.

    python -m benchmarks.bench_train --arch resnet20 --threads 1 2     (from the repository root)
    python -m benchmarks.bench_train --cifar --device cuda             (CIFAR-sized loaders and precisions)

`--cifar` times, side by side on random CIFAR-sized data: one epoch of batches from `loaders.TensorBatches`
(uint8 on the device, crop + flip there) against a CPU DataLoader doing the same augmentation per image, and
resnet training steps per second at fp32 / bf16-or-fp16 autocast, contiguous / channels_last.

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_cifar(arch: str, n: int, batch: int, device: torch.device, workers: int) -> None:
    """Loader epochs per second (device-resident vs CPU DataLoader), then training throughput per precision."""
    import torchvision.transforms.v2 as T

    from resnet_lab.loaders import TensorBatches
    from resnet_lab.resnet import CIFAR_MEAN, CIFAR_STD
    from resnet_lab.train import optimizer_step, resolve_precision

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    ours = TensorBatches(images, labels, CIFAR_MEAN, CIFAR_STD, batch, device, g, train=True)
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                     T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    class _Aug(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            return aug(images[i]), labels[i]

    cpu_loader = torch.utils.data.DataLoader(_Aug(), batch_size=batch, shuffle=True, drop_last=True,
                                             num_workers=workers, pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0)

    def epoch_ours() -> None:
        for _x, _y in ours:
            pass
        _sync(device)

    def epoch_cpu() -> None:
        for x, y in cpu_loader:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _sync(device)

    a, b = images_per_s(epoch_ours, n, 3), images_per_s(epoch_cpu, n, 1)
    print(f"loader, {n} images, batch {batch} on {device}: on-device {a:,.0f} images/s, CPU DataLoader "
          f"(workers={workers}) {b:,.0f} images/s, ratio {a / b:.1f}x")
    x, y = next(iter(ours))
    auto = resolve_precision("auto", device)
    for dtype in dict.fromkeys([None, auto]):
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = build(arch, num_classes=10, seed=0).to(device, memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
            xf = x.contiguous(memory_format=fmt)

            def step(model=model, opt=opt, scaler=scaler, xf=xf, dtype=dtype) -> None:
                for _ in range(10):
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        loss = F.cross_entropy(model(xf).float(), y)
                    optimizer_step(loss, opt, scaler)
                _sync(device)

            rate = images_per_s(step, 10 * len(x))
            name = "channels_last" if fmt is torch.channels_last else "contiguous"
            print(f"{arch} train step batch {len(x)} {str(dtype or 'fp32'):15s} {name:13s}: {rate:8,.0f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--cifar", action="store_true", help="CIFAR loaders and precisions instead (see above)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=50_000, help="--cifar: images per epoch")
    p.add_argument("--workers", type=int, default=4, help="--cifar: workers of the CPU DataLoader")
    args = p.parse_args()
    if args.cifar:
        bench_cifar(args.arch, args.n, args.batch_size, torch.device(args.device), args.workers)
        return

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
