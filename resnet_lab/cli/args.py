"""Option types for every command's parser: a bad value is refused by argparse itself, before any work starts,
in one line naming the option and the accepted range (`argument --tol: must be a finite number > 0 and < 1
(got -1)`).

Each factory returns an argparse `type=` callable; argparse puts "argument --OPTION: " in front of the message.
Checks that join two options (`--map-n` with `--map-grid`) are each command's `check_arguments(args)`, which
`__main__` runs right after parsing, also before the work.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..files import unwritable
from ..settings import declared

# One range for every seed: numpy refuses negative ones, and 32 signed bits leave room for the offsets the studies
# add (seed + 1 for a second start vector, seed + r per run, seed .. seed + N - 1 for N direction seeds).
SEED_MAX = 2**31 - 1


def shown_value(text: str) -> str:
    """The value as typed, on one line and short (a pasted paragraph must not become a second line)."""
    return text if text.isprintable() and len(text) <= 40 else repr(text[:40]) + ("..." if len(text) > 40 else "")


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """"from 0 to 1", "> 0 and < 1", ">= 2": the accepted range as the message says it."""
    if lo is not None and hi is not None and not (lo_open or hi_open):
        return f"from {_num(lo)} to {_num(hi)}"
    low = None if lo is None else f"{'>' if lo_open else '>='} {_num(lo)}"
    high = None if hi is None else f"{'<' if hi_open else '<='} {_num(hi)}"
    return " and ".join(b for b in (low, high) if b)


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer from `lo` to `hi` (inclusive; None: unbounded)."""
    what = "an integer" + ("" if lo is None and hi is None else " " + _range(lo, hi))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})")
        return value

    parse.__name__ = what  # argparse's own fallback message names the type by this
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """A finite number from `lo` to `hi` (an open end excludes its bound; None: unbounded). NaN and infinity are
    refused: a NaN passes every comparison's negation, and a run would silently compute on it."""
    what = "a finite number" + ("" if lo is None and hi is None else " " + _range(lo, hi, lo_open, hi_open))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})") from None
        ok = math.isfinite(value) and (lo is None or (value > lo if lo_open else value >= lo)) and (
            hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})")
        return value

    parse.__name__ = what
    return parse


positive_int = int_in(1)  # counts of images, steps, draws; batch sizes
seed = int_in(0, SEED_MAX)


def names(allowed: Iterable[str], noun: str = "names") -> Callable[[str], str]:
    """A non-empty comma-separated list whose every item is one of `allowed`; returned as typed (the commands
    split it)."""
    allowed = list(allowed)

    def parse(text: str) -> str:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            said = f"unknown {noun} {shown_value(', '.join(bad))}" if bad else f"no {noun} given"
            raise argparse.ArgumentTypeError(f"{said} (choose from {', '.join(allowed)})")
        return text

    parse.__name__ = noun
    return parse


def numbers(lo: float | None = None, *, lo_open: bool = False) -> Callable[[str], str]:
    """A non-empty comma-separated list of finite numbers (each > or >= `lo`); returned as typed."""
    one = number(lo, lo_open=lo_open)
    what = "comma-separated finite numbers" + ("" if lo is None else " " + _range(lo, None, lo_open))

    def parse(text: str) -> str:
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            for s in items:
                one(s)
        except argparse.ArgumentTypeError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})")
        return text

    parse.__name__ = "numbers"
    return parse


def ints(lo: int) -> Callable[[str], tuple[int, ...]]:
    """A non-empty comma-separated list of integers, each >= `lo`; returned sorted, without repeats."""
    one = int_in(lo)
    what = f"comma-separated integers >= {lo}"

    def parse(text: str) -> tuple[int, ...]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            values = tuple(sorted({one(s) for s in items}))
        except argparse.ArgumentTypeError:
            values = ()
        if not values:
            raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})")
        return values

    parse.__name__ = what
    return parse


def writable(what: str = "file", makes_folders: bool = True) -> Callable[[str], str]:
    """A path to write a `what` ("file" or "folder") at, tried now rather than after the work (`degradation --out
    /proc/x.csv` ran the study, then ended in a traceback): `files.unwritable` says why not. Returned as typed."""

    def parse(text: str) -> str:
        reason = unwritable(text, what, makes_folders)
        if reason:
            raise argparse.ArgumentTypeError(reason.replace(text, shown_value(text), 1) if text else reason)
        return text

    parse.__name__ = f"a writable {what} path"
    return parse


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal is one line, `prog: message`, exit code 2 (no usage block: the message
    names the option, and `--help` has the rest)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no unique-prefix matching: a typo such as `--epoch 3` is refused, not read as `--epochs 3` (nor will an
        # option added later silently change what an old command line meant)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {' '.join(message.split())}\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # `--n=--`: argparse drops the "--" and, for an option of one value, stores [] without calling its type
        # (Python 3.11), so no check saw it
        if action.option_strings and action.nargs is None and arg_strings in ([], ["--"]):
            self.error(f"argument {'/'.join(action.option_strings)}: expected one value (got {arg_strings[0]!r})"
                       if arg_strings else f"argument {'/'.join(action.option_strings)}: expected one value")
        return super()._get_values(action, arg_strings)


def add_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per setting `cls` declares (`settings.option`), at its default: a bool is a switch (`--no-NAME`
    when it defaults to True); a nested group's options are listed under its title."""
    groups: dict[tuple[str, str | None], Any] = {}
    for d in declared(cls):
        if d.group is not None and d.group not in groups:
            groups[d.group] = p.add_argument_group(*d.group)
        where = p if d.group is None else groups[d.group]
        o = d.option
        if isinstance(d.default, bool):
            where.add_argument(d.flag, dest=d.name, action="store_false" if d.default else "store_true", help=o.help)
            continue
        given = {"type": o.type, "nargs": o.nargs, "metavar": o.metavar, "choices": o.choice_list()}
        where.add_argument(d.flag, dest=d.name, default=d.default, help=o.help,
                           **{k: v for k, v in given.items() if v is not None})
