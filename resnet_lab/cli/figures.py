"""`python -m resnet_lab figures`: the shipped Research figures redrawn from the shipped CSVs (`research.figures`)."""

from __future__ import annotations

import argparse

from ..paths import ASSETS
from ..research.figures import render


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(ASSETS), help="folder to write the PNGs into (default: assets/)")


def run(args: argparse.Namespace) -> int:
    for path in render(args.out):
        print(f"wrote {path}")
    return 0

