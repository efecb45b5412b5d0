"""Big folders: time to the first training step against the number of files, and the header scan against the full
decode it replaced.

    python benchmarks/bench_folder.py [--files 10000 30000 100000] [--classes 10] [--out /tmp/bench_folder]

Generates (once, reused on later runs) a folder of small JPEGs (48x48, quality 90, PATH/<class>/<n>.jpg), then
for each size N takes the first N files (a sub-folder tree of links, so the file system sees N real entries)
and measures, in one process:

- scan: `folders.image_folder` (list the files, read each header on `SCAN_THREADS` threads, split): files/s;
- first step: the scan plus building the training batches and drawing the first batch from a DataLoader with two
  workers, what stands between `train` and its first optimizer step;
- header against decode: `check_header` and the full `decode_image` the old scan did, side by side on one
  thread, on 200 photo-sized JPEGs (500x375).

With `--epoch N`: the same N images (32 px PNGs) as a folder held in memory (`--folder-cache auto`) and as
CIFAR-format files, one epoch of ResNet-20 each (median of 3 epochs after the first), and the one-time decode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from resnet_lab.data.folders import image_folder
from resnet_lab.data.images import check_header, decode_image
from resnet_lab.data.loaders import LoaderBatches
from resnet_lab.training.augment import train_transform  # noqa: E402

CFG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}


def generate(root: Path, n: int, classes: int) -> list[Path]:
    """n JPEGs spread over `classes` sub-folders (written only where missing), in a fixed order."""
    rng = np.random.default_rng(0)
    paths = [root / f"c{i % classes:02d}" / f"{i:07d}.jpg" for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    base = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    for i, p in enumerate(missing):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i % 48, axis=i % 2)).save(p, quality=90)
    return paths


def photo_jpegs(root: Path, n: int = 200) -> list[str]:
    """n photo-sized JPEGs (500x375, ImageNet's typical size: a gradient plus noise, quality 90), made once."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 500)[None, :, None] * np.ones((375, 1, 3))
    paths = [root / f"{i:04d}.jpg" for i in range(n)]
    for p in paths:
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(p, quality=90)
    return [str(p) for p in paths]


def subset(paths: list[Path], n: int, where: Path) -> Path:
    """A tree of symlinks to the first n files (made once)."""
    if not where.exists():
        for p in paths[:n]:
            link = where / p.parent.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
    return where


def epoch_vs_cifar(root: Path, n: int) -> None:
    """Seconds per epoch of a small folder held in memory against the same images as CIFAR-format files."""
    import pickle

    from resnet_lab.training.train import TrainConfig, train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    folder, cifar = root / f"epoch{n}" / "folder", root / f"epoch{n}" / "cifar" / "cifar-10-batches-py"
    if not folder.exists():
        for i, (img, c) in enumerate(zip(images, labels)):
            (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"c{c}" / f"{i:06d}.png")
        cifar.mkdir(parents=True)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)
        for k in range(1, 6):
            part = slice((k - 1) * n // 5, k * n // 5)
            batch = {b"data": flat[part], b"labels": labels[part].tolist()}
            (cifar / f"data_batch_{k}").write_bytes(pickle.dumps(batch))
        (cifar / "test_batch").write_bytes(pickle.dumps({b"data": flat[:100], b"labels": labels[:100].tolist()}))
        (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}))
    common = dict(arch="resnet20", epochs=4, batch_size=128, quiet=True, device="cpu", patience=10)
    t = time.perf_counter()
    held = train(TrainConfig(data=f"folder:{folder}", workers=0, **common))
    folder_total = time.perf_counter() - t
    tensors = train(TrainConfig(data="cifar10", checksum=False, data_dir=str(cifar.parent), **common))
    per = [statistics.median(h["time_s"] for h in r.history[1:]) for r in (held, tensors)]
    assert held.meta["data"]["in_memory"]
    print(f"{n} images of 32 px, ResNet-20, batch 128, one thread each: epoch {per[0]:.2f} s from the folder held "
          f"in memory, {per[1]:.2f} s from CIFAR-format files ({per[0] / per[1]:.2f}x); the folder run took "
          f"{folder_total:.1f} s in all for 4 epochs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--out", default="/tmp/bench_folder")
    ap.add_argument("--repeats", type=int, default=3, help="timed scans per size (the median is reported)")
    ap.add_argument("--epoch", type=int, default=0, help="also time an epoch of N images held in memory vs CIFAR")
    args = ap.parse_args()
    out = Path(args.out)
    if args.epoch:
        epoch_vs_cifar(out, args.epoch)
    t = time.perf_counter()
    paths = generate(out / "all", max(args.files), args.classes)
    print(f"{len(paths)} files ready in {time.perf_counter() - t:.1f} s")

    photos = photo_jpegs(out / "photos")
    t = time.perf_counter()
    for p in photos:
        check_header(p)
    per_header = (time.perf_counter() - t) / len(photos)
    t = time.perf_counter()
    for p in photos:
        decode_image(p)
    per_decode = (time.perf_counter() - t) / len(photos)
    print(f"one thread, {len(photos)} JPEGs of 500x375: header {per_header * 1e6:.0f} us/file, full decode (what "
          f"the old scan did) {per_decode * 1e6:.0f} us/file ({per_decode / per_header:.0f}x the header)")
    rows = []
    for n in sorted(args.files):
        root = subset(paths, n, out / f"first{n}")
        times, firsts = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                split = image_folder(root, 0.1, 0, train_transform(CFG), None, 32)
            t1 = time.perf_counter()
            batches = LoaderBatches(split.train, 64, torch.device("cpu"), workers=2,
                                    generator=torch.Generator().manual_seed(0), train=True)
            next(iter(batches))
            times.append(t1 - t0)
            firsts.append(time.perf_counter() - t0)
        scan, first = statistics.median(times), statistics.median(firsts)
        rows.append((n, scan, first))
        print(f"{n:>7} files: scan {scan:.2f} s ({n / scan:,.0f} files/s), first step after {first:.2f} s")
    if len(rows) > 1:
        (n0, _, f0), (n1, _, f1) = rows[0], rows[-1]
        print(f"time to first step grows {f1 / f0:.1f}x for {n1 / n0:.0f}x the files "
              f"({(f1 - f0) / (n1 - n0) * 1e6:.0f} us per extra file)")


if __name__ == "__main__":
    main()
