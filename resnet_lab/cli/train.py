"""`python -m resnet_lab train`: a training run from its options (`training.config`), the loop (`training.train`);
a bad option, device or data set is a message and exit code 2, a stop signal the state saved and 128 + its number."""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys

from ..data.datasets import DatasetError
from ..data.loaders import per_rank_batch
from ..models.weights import WeightsUnavailable
from ..runtime.devices import resolve_device
from ..runtime.distributed import Dist
from ..runtime.torchrun import env_rank, env_world_size
from ..training import resume
from ..training.config import DEFAULTS, TrainConfig
from ..training.precision_probe import resolve_precision
from ..training.recipe import BATCH
from ..training.train import train
from .args import add_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `train` command's options: one per declared option of `TrainConfig`, at its default."""
    add_options(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    """The `train` command: a bad option, device or data set is a message and exit code 2, not a traceback."""
    try:
        config = TrainConfig.from_options({k: v for k, v in vars(args).items() if k in DEFAULTS})
        resolve_precision(config.precision, resolve_device(config.device))
        per_rank_batch(config.batch_size or BATCH, Dist(world_size=env_world_size()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    typed = sys.argv[1:2] == ["train"]  # run from the command line, not through main(argv)
    try:
        result = train(config, command=shlex.join(["python", "-m", "resnet_lab", *sys.argv[1:]]) if typed else None)
    except (DatasetError, WeightsUnavailable, ValueError) as e:  # ResumeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except resume.Stopped as e:
        if env_rank() == 0:
            print(e, file=sys.stderr)
        return 128 + signal.Signals[e.signal_name].value
    if env_rank() == 0:
        print(f"val acc {result.best_acc:.4f}  test acc {result.test_acc:.4f}  epochs {len(result.history)}")
    return 0 if math.isfinite(result.test_acc) else 1
