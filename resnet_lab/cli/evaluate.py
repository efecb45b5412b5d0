"""`python -m resnet_lab evaluate`: top-1/top-5, per-class accuracy, confusion and calibration of a checkpoint or a
timm tag (`training.evaluation`); under torchrun each rank scores its share and rank 0 merges, prints and writes."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from ..data.datasets import DatasetError
from ..models.weights import WeightsUnavailable, load_weights
from ..progress import tqdm_progress
from ..runtime import distributed
from ..training.evaluation import DATASETS, FOLDER, score_share, write_results
from ..training.metrics import EvaluationResult
from .args import int_in, positive_int, seed, writable


def _data_option(text: str) -> str:
    if text in DATASETS or (text.startswith(FOLDER) and text != FOLDER):
        return text
    raise argparse.ArgumentTypeError(f"unknown data {text[:60]!r}: choose one of {', '.join(DATASETS)} or "
                                     f"{FOLDER}PATH")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="assets/shapes_resnet20.safetensors", help="a checkpoint file or a timm tag")
    p.add_argument("--data", type=_data_option, default="shapes",
                   help=f"one of {', '.join(DATASETS)} or {FOLDER}PATH (PATH/<class>/<image>; an ImageNet "
                        "validation folder with synset-id sub-folders maps onto timm's class order)")
    p.add_argument("--n", type=positive_int, default=2000, help="Shapes: test images rendered")
    p.add_argument("--seed", type=seed, default=None, help="Shapes: data seed (default: the checkpoint's test seed)")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR: the folder holding cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--no-checksum", dest="checksum", action="store_false",
                   help="CIFAR: read files in torchvision's layout without the md5 check of the official ones")
    p.add_argument("--out", type=writable("folder"), default=None,
                   help="write summary.json, per_class.csv, confusion.png, reliability.png here")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=int_in(0, 64), default=2, help="folders: DataLoader processes decoding images")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: $RESNET_LAB_DEVICE, else cuda when present; under torchrun "
                        "each process takes cuda:LOCAL_RANK)")


def run(args: argparse.Namespace) -> int:
    """The evaluate command; under torchrun each rank scores its `shard_indices` share and rank 0 merges and writes."""

    def fail(message: str) -> int:
        print(f"evaluate: {message}", file=sys.stderr)
        return 2

    folder = args.data.startswith(FOLDER)
    try:
        dist = distributed.setup(args.device)  # cuda:LOCAL_RANK under torchrun; refuses CUDA where there is none
    except ValueError as e:
        return fail(str(e))
    try:
        # every rank reaches the gather, failed or not, so one rank's error never leaves the others waiting there
        # (until a collective timeout); the error is then every rank's exit code, printed once by rank 0
        result, skipped, data, error = None, [], {}, None
        try:
            loaded = load_weights(args.model)
            loaded.model.to(dist.device)
            progress, close = tqdm_progress(100, "evaluate") if dist.is_main else (None, lambda: None)
            try:
                share = score_share(loaded, args.data, dist, n=args.n, seed=args.seed, data_dir=args.data_dir,
                                    checksum=args.checksum, batch_size=args.batch_size, workers=args.workers,
                                    progress=progress, name=args.model)
            finally:
                close()
            result, skipped, data = share.result, share.skipped, share.data
            for note in share.notes if dist.is_main else ():
                print(f"evaluate: warning: {note}", file=sys.stderr)
        except (WeightsUnavailable, DatasetError, ValueError) as e:
            error = str(e) if dist.world_size == 1 else f"rank {dist.rank}: {e}"
        parts = distributed.gather_objects((result, skipped, error), dist)
        errors = [e for _, _, e in parts if e]
        if errors:
            return fail(errors[0]) if dist.is_main else 2
        if not dist.is_main:
            return 0
        result = functools.reduce(EvaluationResult.merge, [r for r, _, _ in parts])
        skipped = sorted(s for _, found, _ in parts for s in found)
        for path, reason in skipped:
            print(f"evaluate: skipped {path}: {reason}", file=sys.stderr)
        if folder:
            data["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
        extra = {"command": getattr(args, "command_line", None), "model": loaded.source, "data": data,
                 "device": str(dist.device), "world_size": dist.world_size}
        print(f"{loaded.source} on {args.data} ({result.n} images): top-1 {result.top1:.4f}  "
              f"top-{result.k} {result.topk:.4f}  ECE {result.ece:.4f}  NLL {result.nll:.4f}")
        if args.out:
            write_results(result, Path(args.out), extra)
            print(f"wrote summary.json, per_class.csv, confusion.png, reliability.png to {args.out}")
        return 0
    finally:
        distributed.cleanup(dist)
