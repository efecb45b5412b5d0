"""Throughput of the pieces of a Shapes training run: rendering, training steps, evaluation.

    python -m benchmarks.bench_train --arch resnet20 --threads 1 2     (from the repository root)
    python -m benchmarks.bench_train --cifar --device cuda             (CIFAR-sized loaders and precisions)
    python -m benchmarks.bench_train --pipeline --device cuda --compile (real data vs synthetic tensors)

`--cifar` times, side by side on random CIFAR-sized data: one epoch of batches from `loaders.TensorBatches`
(uint8 on the device, crop + flip there) against a CPU DataLoader doing the same augmentation per image, and
resnet training steps per second at fp32 / bf16-or-fp16 autocast, contiguous / channels_last.

`--pipeline` answers "does the input pipeline keep the device busy?" (issue 9) in one run: training steps per
second fed by one synthetic batch already on the device, against the real paths train.py takes: CIFAR-10 written
to a temporary folder in the official python-pickle format, read by `datasets.load_cifar(checksum=False)` and fed
by `loaders.TensorBatches`, and a folder of JPEGs read by `folders.image_folder` through `loaders.LoaderBatches`
(decoding workers). For fp32 and the half dtype (bf16, or fp16 on GPUs without native bf16), eager and, with
`--compile`, torch.compile'd. real/synthetic is the ratio of the times per step (target for CIFAR: <= 1.15).

Run it on an otherwise idle machine: with other jobs on the cores, OpenMP
threads wait on each other and the numbers say more about the neighbours.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from resnet_lab.data.shapes import CLASSES, ShapesDataset
from resnet_lab.models.resnet import build
from resnet_lab.runtime.devices import resolve_device, synchronize


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


def bench_cifar(arch: str, n: int, batch: int, device: torch.device, workers: int) -> None:
    """Loader epochs per second (device-resident vs CPU DataLoader), then training throughput per precision."""
    import torchvision.transforms.v2 as T

    from resnet_lab.data.loaders import TensorBatches
    from resnet_lab.models.resnet import CIFAR_MEAN, CIFAR_STD
    from resnet_lab.training.precision_probe import optimizer_step, resolve_precision

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
        synchronize(device)

    def epoch_cpu() -> None:
        for x, y in cpu_loader:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        synchronize(device)

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
                synchronize(device)

            rate = images_per_s(step, 10 * len(x))
            name = "channels_last" if fmt is torch.channels_last else "contiguous"
            print(f"{arch} train step batch {len(x)} {str(dtype or 'fp32'):15s} {name:13s}: {rate:8,.0f} images/s")


# ----------------------------------------------------------------------------- --pipeline: real data vs synthetic

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random CIFAR-10 in the official on-disk format under `root/cifar-10-batches-py`: five `data_batch_i` and a
    `test_batch` (dicts with bytes keys: uint8 `data` [N, 3072] in CHW order, `labels` list, `filenames`), plus
    `batches.meta`, pickled at protocol 2 as the published files are; readable by `load_cifar(checksum=False)`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int, tag: str) -> dict:
        return {b"batch_label": tag.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [f"{tag}_{i}.png".encode() for i in range(n)]}

    files = {f"data_batch_{i + 1}": batch(len(part), f"training batch {i + 1} of 5")
             for i, part in enumerate(np.array_split(np.arange(n_train), 5))}
    files["test_batch"] = batch(n_test, "testing batch 1 of 1")
    files["batches.meta"] = {b"label_names": [c.encode() for c in CIFAR10_NAMES],
                             b"num_cases_per_batch": -(-n_train // 5), b"num_vis": 3072}
    for name, d in files.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return folder


def write_jpeg_folder(root: Path, n: int, size: int, n_classes: int = 10, seed: int = 0) -> Path:
    """`n` photo-like JPEGs (smooth colour + noise, quality 90) of side `size` in `root/<class>/`, round robin."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = i % n_classes
        phase = rng.uniform(0, 6.3, 3)
        base = 128 + 90 * np.sin(np.stack([xx * 5 + phase[0], yy * 4 + phase[1], (xx + yy) * 3 + phase[2]], -1))
        img = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"class{c}" / f"{i:06d}.jpg", quality=90)
    return root


def steps_per_s(step: Callable[[torch.Tensor, torch.Tensor], None], batches: Iterator, steps: int, warmup: int,
                device: torch.device) -> float:
    """Training steps per second over `steps` steps fed from `batches`, after `warmup` steps, device-synchronized."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    synchronize(device)
    return steps / (time.perf_counter() - t)


def forever(batches: Iterable) -> Iterator:
    """Epoch after epoch of an iterable of batches (each epoch reshuffles, as in training)."""
    while True:
        yield from batches


def bench_pipeline(arch: str, n: int, n_folder: int, batch: int, device: torch.device, workers: int, steps: int,
                   warmup: int, compile_too: bool, channels_last: bool, tmp: Path) -> list[dict]:
    """Steps/s fed by synthetic tensors, real CIFAR files and a JPEG folder, per precision and compile; one row each."""
    from resnet_lab.data.datasets import load_cifar
    from resnet_lab.data.folders import image_folder
    from resnet_lab.data.loaders import LoaderBatches, TensorBatches
    from resnet_lab.models.resnet import CIFAR_MEAN, CIFAR_STD
    from resnet_lab.runtime.precision import cuda_half_dtype, dtype_name
    from resnet_lab.training.augment import train_transform
    from resnet_lab.training.precision_probe import optimizer_step
    from resnet_lab.training.train import maybe_compile

    t = time.perf_counter()
    write_cifar10(tmp, n, max(batch, 16))
    images, labels, _ = load_cifar("cifar10", tmp, train=True, checksum=False)
    read_s = time.perf_counter() - t
    size = 32  # CIFAR's, for every row: the folder rows then differ from the others only in where batches come from
    cfg = {**build(arch).pretrained_cfg, "input_size": (3, size, size)}
    write_jpeg_folder(tmp / "folder", n_folder, size + size // 4)
    split = image_folder(tmp / "folder", 0.1, 0, train_transform(cfg), None)
    print(f"wrote and read {n} CIFAR images in {read_s:.1f} s; {len(split.train)} JPEGs of "
          f"{size + size // 4} px for {arch} at {size} px, batch {batch}, {steps} timed steps after {warmup}, "
          f"{'channels_last' if channels_last else 'contiguous'}, folder workers={workers}, on {device}")
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    synthetic = (torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt),
                 torch.randint(0, 10, (batch,), generator=g).to(device))
    sources: dict[str, Callable[[], Iterator]] = {
        "synthetic": lambda: itertools.repeat(synthetic),
        "cifar": lambda: forever(TensorBatches(images, labels, CIFAR_MEAN, CIFAR_STD, batch, device, g, train=True,
                                               channels_last=channels_last)),
        "folder": lambda: forever(LoaderBatches(split.train, batch, device, workers, g, train=True,
                                                channels_last=channels_last)),
    }
    half = cuda_half_dtype(device) if device.type == "cuda" else torch.bfloat16
    rows: list[dict] = []
    print(HEADER, flush=True)  # rows as they come: a run cut short by a time limit still says what it measured
    for dtype, compiled in itertools.product((None, half), (False, True) if compile_too else (False,)):
        model = build(arch, num_classes=10, seed=0).to(device, memory_format=fmt)
        forward = maybe_compile(model, compiled, print)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

        def step(x: torch.Tensor, y: torch.Tensor, forward=forward, opt=opt, scaler=scaler, dtype=dtype) -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(forward(x).float(), y)
            optimizer_step(loss, opt, scaler)

        base = None
        for source, make in sources.items():
            row = {"precision": dtype_name(dtype), "compile": compiled, "source": source}
            try:
                rate = steps_per_s(step, make(), steps, warmup, device)
            except Exception as e:  # a compile that fails at its first call: say so in the table, keep going
                rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"})
            else:
                base = rate if source == "synthetic" else base
                rows.append({**row, "steps_s": rate, "images_s": rate * batch,
                             "ratio": base / rate if base else float("nan")})
            print(format_row(rows[-1]), flush=True)
    return rows


def report_choices(specs: list[str], batch: int, device: torch.device) -> list[dict]:
    """What `choose_train_precision` (train's --precision auto) picks for each ARCH@SIZE, and its cost."""
    from resnet_lab.training.precision_probe import choose_train_precision

    records = []
    for spec in specs:
        arch, _, size = spec.partition("@")
        model = build(arch, num_classes=10, seed=0).to(device)
        t = time.perf_counter()
        _, record = choose_train_precision(model, (3, int(size or 32), int(size or 32)), batch, device)
        took = time.perf_counter() - t
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in record.get("images_per_s", {}).items()) or "not measured"
        print(f"precision auto for {arch} @ {size or 32} px, batch {batch}: {record['choice']} "
              f"(images/s: {rates}; {took:.2f} s) {'' if record['measured'] else record['reason']}", flush=True)
        records.append(record)
        del model
    return records


HEADER = f"{'precision':9s} {'compile':7s} {'source':9s} {'steps/s':>9s} {'images/s':>10s} {'real/synthetic':>14s}"


def format_row(r: dict) -> str:
    """One line of the --pipeline table (under `HEADER`)."""
    head = f"{r['precision']:9s} {'yes' if r['compile'] else 'no':7s} {r['source']:9s}"
    if "error" in r:
        return f"{head} failed: {r['error']}"
    ratio = "" if r["source"] == "synthetic" else f"{r['ratio']:.2f}x"
    return f"{head} {r['steps_s']:9.1f} {r['images_s']:10,.0f} {ratio:>14s}"

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--cifar", action="store_true", help="CIFAR loaders and precisions instead (see above)")
    p.add_argument("--device", default=None,
                   help="--cifar, --pipeline: cpu, cuda or cuda:N (default: $RESNET_LAB_DEVICE, else cuda if present)")
    p.add_argument("--n", type=int, default=50_000, help="--cifar: images per epoch")
    p.add_argument("--workers", type=int, default=4, help="--cifar, --pipeline: workers of the CPU DataLoader")
    p.add_argument("--pipeline", action="store_true", help="real data pipelines vs synthetic tensors (see above)")
    p.add_argument("--steps", type=int, default=50, help="--pipeline: timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="--pipeline: untimed steps first (compiling, autotuning)")
    p.add_argument("--n-folder", type=int, default=2048, help="--pipeline: JPEGs in the image folder")
    p.add_argument("--compile", action="store_true", help="--pipeline: torch.compile'd rows as well as eager")
    p.add_argument("--channels-last", action="store_true", help="--pipeline: channels_last model and batches")
    p.add_argument("--choose", nargs="*", default=["resnet20@32", "resnet50@224"], metavar="ARCH@SIZE",
                   help="--pipeline: first print what --precision auto picks for these (measured on CUDA only)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.pipeline:
        report_choices(args.choose, args.batch_size, device)
        with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
            bench_pipeline(args.arch, args.n, args.n_folder, args.batch_size, device, args.workers,
                           args.steps, args.warmup, args.compile, args.channels_last, Path(tmp))
        return
    if args.cifar:
        bench_cifar(args.arch, args.n, args.batch_size, device, args.workers)
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
