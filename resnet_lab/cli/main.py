"""`python -m resnet_lab <command>`: each command is a module of `cli/`.

A command module exposes `add_arguments(parser)` and `run(args) -> int`, and may
expose `check_arguments(args) -> str | None` for checks that join options; only
the module of the command being run is imported. Every value is checked while
parsing (`cli.args`), so a bad one is one line and exit code 2 before any work.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from .args import Parser

COMMANDS = {
    "verify": ("resnet_lab.cli.verify", "prove our ResNets equal timm's and torchvision's"),
    "train": ("resnet_lab.cli.train", "train any registered arch on Shapes, CIFAR-10/100 or an image folder"),
    "faithfulness": ("resnet_lab.cli.faithfulness", "measure how faithful each explanation is"),
    "gradnorms": ("resnet_lab.cli.gradnorms", "gradient norms across depth, plain vs residual"),
    "degradation": ("resnet_lab.cli.degradation", "train plain/residual twins and record the curves"),
    "evaluate": ("resnet_lab.cli.evaluate", "top-1/top-5, per-class accuracy, confusion, calibration"),
    "landscape": ("resnet_lab.cli.landscape", "loss landscapes of trained twins (filter-normalized)"),
    "lesion": ("resnet_lab.cli.lesion", "delete residual blocks of a trained net, one and many at a time"),
    "export": ("resnet_lab.cli.export", "a checkpoint in timm's Hugging Face Hub format (and --push it)"),
    "curvature": ("resnet_lab.cli.curvature", "full-Hessian curvature of trained twins, against the images it uses"),
    "figures": ("resnet_lab.cli.figures", "redraw the shipped Research figures from the shipped CSVs"),
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command's options, every value and every joint constraint checked; a bad one is SystemExit(2) after
    one line on stderr naming the option and what it accepts (nothing has been loaded or computed yet)."""
    parser = Parser(prog="python -m resnet_lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands = {}
    for name, (module, help_) in COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_, description=help_)
        if name in argv[:1]:
            importlib.import_module(module).add_arguments(commands[name])
    args = parser.parse_args(argv)
    check = getattr(importlib.import_module(COMMANDS[args.command][0]), "check_arguments", None)
    problem = check(args) if check else None
    if problem:
        commands[args.command].error(problem)
    args.command_line = shlex.join(["python", "-m", "resnet_lab", *argv])  # recorded in results as how to redo them
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except SystemExit as e:  # a refused option (2) or --help (0): the exit code, as for any other refusal
        return e.code if isinstance(e.code, int) else 2
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


def cli() -> None:
    """The `resnet-lab` command an installed package puts on PATH: the same as `python -m resnet_lab`."""
    sys.exit(main())
