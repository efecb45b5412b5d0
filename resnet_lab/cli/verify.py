"""`python -m resnet_lab verify`: our ResNets against timm's and torchvision's (`models.verify`), as a table."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ..models.resnet import list_archs
from ..models.verify import table, verify_arch
from ..models.weights import WeightsUnavailable, hub_file, read_state_dict, resolve_tag
from .args import int_in, seed


def add_arguments(p: argparse.ArgumentParser) -> None:
    archs = [a for a in list_archs("imagenet") if a.startswith("resnet")]  # the ones timm/torchvision have
    p.add_argument("--arch", nargs="+", default=archs, choices=archs)
    p.add_argument("--reference", nargs="+", default=["timm", "torchvision"], choices=["timm", "torchvision"])
    p.add_argument("--pretrained", metavar="TAG", help="compare with real timm weights (needs the hub), e.g. "
                   "resnet50.tv2_in1k; the arch comes from the tag")
    p.add_argument("--image-size", type=int_in(32, 512), default=224)
    p.add_argument("--batch", type=int_in(2, 64), default=2,
                   help="at least 2: train-mode BatchNorm on the last 1x1 feature map needs two images")
    p.add_argument("--seed", type=seed, default=0)


def run(args: argparse.Namespace) -> int:
    jobs: list[tuple[str, str, dict | None]] = []
    if args.pretrained:
        try:
            arch, cfg = resolve_tag(args.pretrained)
            state = read_state_dict(hub_file(cfg.hf_hub_id, what=f"the weights {args.pretrained!r}"))
        except WeightsUnavailable as e:  # offline, unknown or headless tag: a message, not a traceback
            print(f"verify: {e}", file=sys.stderr)
            return 2
        jobs = [(arch, "timm", state)]
    else:
        jobs = [(a, r, None) for a in args.arch for r in args.reference]
    results = [verify_arch(a, r, args.image_size, args.batch, args.seed, s)
               for a, r, s in tqdm(jobs, desc="verify", unit="net")]
    print(table(results))
    return 0 if all(r.ok for r in results) else 1
