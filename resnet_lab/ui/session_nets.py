"""A session's own nets: the pair a Playground run trained, offered to that session only.

When a run ends, both nets are saved as checkpoints (`.safetensors` + JSON) whose names carry a token nobody can
guess (`secrets.token_hex`) and registered with the zoo as private models (`ModelZoo.add_private`): the zoo loads
them by name like any user checkpoint, but never lists them. Only the session that trained them learns the token
(it rides in that session's `gr.State`), so only its dropdowns offer them: Classify and Grad-CAM by model name,
the Research sections by a value `playground:<token>` (a pair) or `playground:<token>:<arch>` (one net), which the
server maps onto the files here. The files live with the app's other outputs and are pruned after an hour, after
which the zoo says so.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from ..models.resnet import REGISTRY
from ..research.playground import net_label as label
from .common import zoo

PREFIX = "playground:"


def new_token() -> str:
    """A run's token: 12 hex digits (48 bits) from the OS's cryptographic source."""
    return secrets.token_hex(6)


def stem(token: str, arch: str) -> str:
    """A run's checkpoint file stem: the token makes the zoo's model name unguessable."""
    return f"playground-{token}-{arch}"


def files(token: str) -> dict[str, Path]:
    """arch -> checkpoint of the run `token`, residual first (as the Research pairs list them); empty when unknown."""
    mine = f"playground-{token}-"
    found = {u.arch: u.path for u in list(zoo().private_models.values()) if u.path.stem.startswith(mine)}
    return dict(sorted(found.items(), key=lambda kv: not REGISTRY[kv[0]].residual))


def model_names(tokens: list[str]) -> list[str]:
    """The zoo's names of the nets of these runs (for the model dropdown), newest run first."""
    names = []
    for token in reversed(tokens):
        names += [n for n, u in list(zoo().private_models.items()) if u.path.stem.startswith(f"playground-{token}-")]
    return names


def on_shapes(path: Path) -> bool:
    """Whether the checkpoint was trained on Shapes: the studies rebuild its held-out set from its JSON (an
    uploaded zip's images are not kept, so its nets go to Classify and Grad-CAM only)."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("data", {}).get("name") == "shapes"
    except (OSError, ValueError):
        return False


def pair_choices(tokens: list[str]) -> list[tuple[str, str]]:
    """(label, value) of each Shapes run's pair for a Research dropdown, newest first."""
    out = []
    for token in reversed(tokens):
        archs = [a for a, p in files(token).items() if on_shapes(p)]
        if archs:
            out.append((f"{' vs '.join(label(a) for a in archs)} (your Playground run {token[:4]})",
                        PREFIX + token))
    return out


def net_choices(tokens: list[str]) -> list[tuple[str, str]]:
    """(label, value) of each Shapes run's nets, one by one, newest run first."""
    return [(f"{label(a)} (your Playground run {token[:4]})", f"{PREFIX}{token}:{a}")
            for token in reversed(tokens) for a, p in files(token).items() if on_shapes(p)]


def resolve(choice: str) -> list[Path]:
    """The checkpoint files of a `playground:` value (ValueError, for the user, when they are gone or unknown)."""
    token, _, arch = choice.removeprefix(PREFIX).partition(":")
    found = files(token)
    if arch:
        found = {a: p for a, p in found.items() if a == arch}
    paths = [p for p in found.values() if p.is_file()]
    if not paths:
        raise ValueError("This Playground run's nets are gone (a run's nets are kept an hour, and only in the "
                         "session that trained them): train them again in the Playground.")
    return paths


def offer_runs(research_offer: Callable[[list[str]], list[dict]]) -> Callable[[list[str]], list[dict]]:
    """The event that offers a session's Playground nets: in the model picker (after the app's models) and in the
    Research pickers (`research_offer`)."""
    def offer(runs: list[str]) -> list[dict]:
        return [gr.update(choices=[*zoo().models, *model_names(runs or [])]), *research_offer(runs)]

    return offer
