"""`python -m resnet_lab <command>`: the command line itself is `cli.main`'s (argparse lives in `cli/` only)."""

from .cli.main import COMMANDS, cli, main, parse

__all__ = ["COMMANDS", "cli", "main", "parse"]

if __name__ == "__main__":
    cli()
