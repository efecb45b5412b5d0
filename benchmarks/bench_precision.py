"""CPU bf16 vs fp32 for the app: top-1 agreement per corpus, and ResNet-50 latency; writes what `precision` reads.

    python -m benchmarks.bench_precision                       (writes assets/cpu_bf16_agreement.json)
    python -m benchmarks.bench_precision --photos DIR --photos-weights resnet50.a1_in1k --out /tmp/x.json

`RESNET_LAB_PRECISION=auto` serves bf16 on a CPU only where the CPU has native bf16 and this file shows bf16's
top-1 answers agreeing with fp32's on >= 99.5 % of every required corpus (`precision.REQUIRED_CORPORA`):
(a) the Shapes test set (seed 999, as train.py's) through the shipped checkpoint, and (b) a photo corpus through
ImageNet weights. Both go through the app's own path: `Classifier(fuse=True)` (BN folded, channels_last) with its
`amp_dtype` set to None or bf16. A corpus that cannot be measured here (no ImageNet weights reachable or cached,
or random weights) is recorded as not measured, with why, and then counts as failing: no evidence is not agreement.

The latency is the issue's: BN-folded ResNet-50 (weights do not change its speed), batch 1 at 224 px, fp32 and
bf16 interleaved, median of 12 after warm-up. bf16 without native support (no avx512_bf16 / amx_bf16) is emulated,
and slower.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from resnet_lab.data.shapes import ShapesDataset
from resnet_lab.models.weights import load_checkpoint, load_weights
from resnet_lab.runtime.precision import (
    AGREEMENT_FILE,
    AGREEMENT_MIN,
    AGREEMENT_MIN_IMAGES,
    cpu_bf16_agreement,
    cpu_flags,
    cpu_native_bf16,
)
from resnet_lab.serving.inference import Classifier

ROOT = Path(__file__).resolve().parent.parent
SHAPES_CHECKPOINT = ROOT / "assets" / "shapes_resnet20.safetensors"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def top1(clf: Classifier, batch: torch.Tensor, dtype: torch.dtype | None, chunk: int = 256) -> torch.Tensor:
    """Top-1 class of every row of a preprocessed batch, through the Classifier at `dtype` (None: fp32)."""
    clf.amp_dtype = dtype
    return torch.cat([clf.logits(batch[i:i + chunk]).argmax(1) for i in range(0, len(batch), chunk)])


def agreement(clf: Classifier, batch: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Share of rows whose bf16 top-1 equals the fp32 one (and each one's accuracy where labels are known)."""
    a, b = top1(clf, batch, None), top1(clf, batch, torch.bfloat16)
    out: dict[str, Any] = {"measured": True, "n": len(a), "agreement": round(float((a == b).float().mean()), 5),
                           "disagreements": int((a != b).sum())}
    if labels is not None:
        out["acc_fp32"] = round(float((a == labels).float().mean()), 5)
        out["acc_bf16"] = round(float((b == labels).float().mean()), 5)
    return out


def shapes_corpus(n: int) -> dict[str, Any]:
    """The shipped Shapes model on its test set (seed and size from its checkpoint JSON)."""
    weights = load_checkpoint(SHAPES_CHECKPOINT)
    meta = weights.meta
    data = meta.get("data", {})
    ds = ShapesDataset(n, seed=data.get("test_seed", 999), size=meta["input_size"][-1],
                       clutter=data.get("clutter", True))
    result = agreement(Classifier(weights, "cpu", fuse=True), ds.normalized(), ds.labels)
    return {**result, "model": str(SHAPES_CHECKPOINT.relative_to(ROOT)), "seed": ds.seed, "size": ds.size}


def image_files(paths: list[Path]) -> list[Path]:
    """The image files named, and those under each folder named (recursively), sorted."""
    out: set[Path] = set()
    for p in paths:
        out.update(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(out)


def photos_corpus(paths: list[Path], spec: str) -> dict[str, Any]:
    """ImageNet weights `spec` on the photos `paths`; not measured (with why) where that is impossible."""
    files = image_files(paths)
    where = {"photos": [shown(p) for p in paths], "files": len(files), "weights": spec}
    try:
        weights = load_weights(spec)
    except Exception as e:  # offline hub, unknown tag, broken file: each one is a reason to record, not a crash
        return {**where, "measured": False, "why": f"ImageNet weights {spec!r} unavailable: {str(e).split('. ')[0]}"}
    if weights.is_random or weights.model.num_classes != 1000:
        return {**where, "measured": False, "why": f"{spec!r} are not trained ImageNet weights"}
    clf = Classifier(weights, "cpu", fuse=True)
    result = agreement(clf, clf.preprocess([str(p) for p in files]))
    if result["n"] < AGREEMENT_MIN_IMAGES:
        result["note"] = f"fewer than {AGREEMENT_MIN_IMAGES} images cannot show {AGREEMENT_MIN:.1%} agreement"
    return {**where, **result}


def shown(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def latency(repeats: int = 12, warmup: int = 3) -> dict[str, Any]:
    """Median ms of fp32 and bf16, batch 1 at 224 px, through the app's BN-folded ResNet-50, interleaved."""
    clf = Classifier(load_weights(None, "resnet50"), "cpu", fuse=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for i in range(warmup + repeats):
        for name, dtype in dtypes.items():
            clf.amp_dtype = dtype
            t = time.perf_counter()
            clf.logits(x)
            if i >= warmup:
                times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {"model": "resnet50 (random weights, BN folded, channels_last)", "batch": 1, "size": 224,
            "repeats": repeats, "median_ms": med, "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-shapes", type=int, default=2000, help="Shapes test images (the checkpoint's n_test)")
    p.add_argument("--photos", type=Path, nargs="+", default=sorted((ROOT / "assets").glob("*.jpg")),
                   help="photo files or folders (default: the four example photos in assets/)")
    p.add_argument("--photos-weights", default="resnet50", help="ImageNet weights for the photos (a timm tag or file)")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=AGREEMENT_FILE, help="the JSON `precision` reads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    record: dict[str, Any] = {
        "what": "top-1 agreement of bf16 autocast with fp32 on the CPU, through Classifier(fuse=True)",
        "threshold": AGREEMENT_MIN, "min_images": AGREEMENT_MIN_IMAGES,
        "corpora": {"shapes": shapes_corpus(args.n_shapes), "photos": photos_corpus(args.photos, args.photos_weights)},
        "latency": latency(args.repeats),
        "cpu_native_bf16": cpu_native_bf16(flags),
        "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # a shared machine's latencies say as much about the neighbours
        "torch_version": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "-m", "benchmarks.bench_precision",
                               *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    ok, why = cpu_bf16_agreement(args.out)
    for name, c in record["corpora"].items():
        if c["measured"]:
            print(f"{name}: bf16 agrees with fp32 on {c['agreement']:.2%} of {c['n']} images "
                  f"({c['disagreements']} differ)" + (f"; acc fp32 {c['acc_fp32']:.4f} bf16 {c['acc_bf16']:.4f}"
                                                      if "acc_fp32" in c else ""))
        else:
            print(f"{name}: not measured: {c['why']}")
    lat = record["latency"]
    print(f"ResNet-50 batch 1 @224, folded, {record['threads']} thread(s): fp32 {lat['median_ms']['fp32']} ms, "
          f"bf16 {lat['median_ms']['bf16']} ms (median of {lat['repeats']}, interleaved); native bf16: "
          f"{record['cpu_native_bf16']}")
    print(f"CPU auto would serve {'bf16' if ok and record['cpu_native_bf16'] else 'fp32'}: {why}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
