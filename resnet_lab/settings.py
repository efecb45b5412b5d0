"""Settings declared once: a dataclass field carries its default, help, accepted values and whether a resumed run
may change it (`option`), so a command's options, its record and its resume check are all read off the one
declaration instead of being typed again beside it.

A field may nest a dataclass of options (`group`, e.g. a run's augmentation): its options stay flat on the
command line and in the record (`--hflip`, `"hflip"`), which is also how records written before the nesting
read back (`from_flat`). The Playground's settings carry `control` instead: the widget the page draws for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
OPTION, GROUP, CONTROL = "option", "group", "control"  # metadata keys


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line (argparse's keywords; `choices` may be a callable, read when the
    parser is built) and whether a resumed run may change it (`may_differ`: why it is still the same run)."""

    help: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    nargs: int | None = None
    metavar: str | tuple[str, ...] | None = None
    may_differ: str | None = None

    def choice_list(self) -> list[Any] | None:
        return None if self.choices is None else list(self.choices() if callable(self.choices) else self.choices)


def option(default: Any, help: str | None = None, *, type: Callable[[str], Any] | None = None,
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None, nargs: int | None = None,
           metavar: str | tuple[str, ...] | None = None, may_differ: str | None = None) -> Any:
    """A dataclass field that is a command-line option: `--name` (a bool defaulting to True: `--no-name`)."""
    return field(default=default, metadata={OPTION: Option(help, type, choices, nargs, metavar, may_differ)})


def group(cls: type, title: str, description: str | None = None) -> Any:
    """A dataclass field holding `cls`'s options, shown under `title` in `--help`, flat everywhere else."""
    return field(default_factory=cls, metadata={GROUP: (cls, title, description)})


@dataclass(frozen=True)
class Declared:
    """One option as declared: its flat name (the argparse dest and the record's key), default, and `Option`;
    `group` is the (title, description) of the nested part it belongs to, None at the top."""

    name: str
    default: Any
    option: Option
    group: tuple[str, str | None] | None = None

    @property
    def flag(self) -> str:
        return ("--no-" if self.default is True else "--") + self.name.replace("_", "-")


def declared(cls: type) -> Iterator[Declared]:
    """Every option of the dataclass `cls`, nested groups flattened in place, in declaration order."""
    for f in dataclasses.fields(cls):
        if GROUP in f.metadata:
            inner, title, description = f.metadata[GROUP]
            yield from (dataclasses.replace(d, group=(title, description)) for d in declared(inner))
        elif OPTION in f.metadata:
            yield Declared(f.name, f.default, f.metadata[OPTION])


def flat(obj: Any) -> dict[str, Any]:
    """The options of a dataclass instance, nested groups flattened: what a record keeps."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out.update(flat(value) if GROUP in f.metadata else {f.name: value})
    return out


def from_flat(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of `cls` from flat options (a record, parsed arguments), nested groups built from theirs; an
    option left out takes its default, a name that is not an option is a TypeError (as a misspelt keyword is)."""
    values = dict(values)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if GROUP in f.metadata:
            inner = f.metadata[GROUP][0]
            names = {d.name for d in declared(inner)}
            kwargs[f.name] = from_flat(inner, {k: values.pop(k) for k in list(values) if k in names})
        elif f.name in values:
            kwargs[f.name] = values.pop(f.name)
    if values:
        raise TypeError(f"{cls.__name__} has no option {', '.join(map(repr, values))}")
    return cls(**kwargs)


def defaults(cls: type) -> dict[str, Any]:
    return {d.name: d.default for d in declared(cls)}


def must_match(cls: type) -> tuple[str, ...]:
    """The options a resumed run must share with its state: every one not declared `may_differ`."""
    return tuple(d.name for d in declared(cls) if d.option.may_differ is None)


def may_differ(cls: type) -> dict[str, str]:
    """The options a resumed run may change, with why it is still the same run."""
    return {d.name: d.option.may_differ for d in declared(cls) if d.option.may_differ is not None}


# ----------------------------------------------------------------------------- the Playground's controls


@dataclass(frozen=True)
class Control:
    """The widget a setting gets on a page: `kind` "choice" (`choices`, a radio or dropdown), "check", "number" or
    "slider" (`minimum` .. `maximum` by `step`; `precision` 0: whole numbers only), with its `label`."""

    kind: str
    label: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    precision: int | None = None
    dropdown: bool = False  # a choice as a dropdown rather than radio buttons


def control(default: Any, label: str, **how: Any) -> Any:
    """A dataclass field the page offers as a widget (`Control`'s keywords; kind "choice" when `choices` are given,
    "check" for a bool, else "number" or, with a `step`, "slider")."""
    kind = how.pop("kind", None) or ("choice" if "choices" in how else "check" if isinstance(default, bool)
                                     else "slider" if "step" in how else "number")
    if "choices" in how:
        how["choices"] = tuple(how["choices"])
    return field(default=default, metadata={CONTROL: Control(kind, label, **how)})


def controls(cls: type) -> list[tuple[str, Any, Control]]:
    """(name, default, control) of each field of `cls` the page offers, in declaration order."""
    return [(f.name, f.default, f.metadata[CONTROL]) for f in dataclasses.fields(cls) if CONTROL in f.metadata]
