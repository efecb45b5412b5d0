"""Big folders: time to the first training step against the number of files, and the header scan against the full
decode it replaced.

    python benchmarks/bench_folder.py [--files 10000 30000 100000] [--classes 10] [--out /tmp/bench_folder]

Generates (once, reused on later runs) a folder of small JPEGs (48x48, quality 90, PATH/<class>/<n>.jpg), then
for each size N takes the first N files (a sub-folder tree of links, so the file system sees N real entries)
and measures, in one process:

- scan: `folders.image_folder` (list the files, read each header on `SCAN_THREADS` threads, split): files/s;
- first step: the scan plus building the training batches and drawing the first batch from a DataLoader with two
  workers, what stands between `train` and its first optimizer step;
- decode (reference, the old scan): `decode_image` of every file at 32 px on one thread, timed on the first 5,000
  files and given per file, so its ratio to the header read is measured side by side.
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
from resnet_lab.data import check_header, decode_image  # noqa: E402
from resnet_lab.training.augment import train_transform  # noqa: E402
from resnet_lab.training.folders import image_folder  # noqa: E402
from resnet_lab.training.loaders import LoaderBatches  # noqa: E402

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


def subset(paths: list[Path], n: int, where: Path) -> Path:
    """A tree of symlinks to the first n files (made once)."""
    if not where.exists():
        for p in paths[:n]:
            link = where / p.parent.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--out", default="/tmp/bench_folder")
    args = ap.parse_args()
    out = Path(args.out)
    t = time.perf_counter()
    paths = generate(out / "all", max(args.files), args.classes)
    print(f"{len(paths)} files ready in {time.perf_counter() - t:.1f} s")

    sample = [str(p) for p in paths[:5000]]
    t = time.perf_counter()
    for p in sample:
        check_header(p)
    per_header = (time.perf_counter() - t) / len(sample)
    t = time.perf_counter()
    for p in sample:
        decode_image(p, min_side=32)
    per_decode = (time.perf_counter() - t) / len(sample)
    print(f"one thread, {len(sample)} files: header {per_header * 1e6:.0f} us/file, full decode at 32 px "
          f"{per_decode * 1e6:.0f} us/file ({per_decode / per_header:.1f}x the header)")
    rows = []
    for n in sorted(args.files):
        root = subset(paths, n, out / f"first{n}")
        times, firsts = [], []
        for _ in range(3):
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
        print(f"{n:>7} files: scan {scan:.2f} s ({n / scan:,.0f} files/s), first step after {first:.2f} s; "
              f"the old full-decode scan would take ~{n * per_decode:.1f} s")
    if len(rows) > 1:
        (n0, _, f0), (n1, _, f1) = rows[0], rows[-1]
        print(f"time to first step grows {f1 / f0:.1f}x for {n1 / n0:.0f}x the files "
              f"({(f1 - f0) / (n1 - n0) * 1e6:.0f} us per extra file)")


if __name__ == "__main__":
    main()
