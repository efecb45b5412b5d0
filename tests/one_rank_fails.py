"""Run `python -m resnet_lab ARGS` under torchrun with rank 1's share of the evaluation failing (a stand-in for an
error only one rank meets: a file it alone reads, a device it alone has), for tests/test_evaluation.py."""

import os
import sys

from resnet_lab.__main__ import main
from resnet_lab.cli import evaluate

if os.environ.get("RANK") == "1":
    def failing(*args, **kwargs):
        raise ValueError("this rank's share cannot be read")

    evaluate.score_share = failing

sys.exit(main(sys.argv[1:]))
