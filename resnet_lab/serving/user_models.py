"""Checkpoints written by `train` that the app offers as models of their own: found in the weights folder (or a
session's Playground run), checked without loading their tensors, described by what the UI needs.

Kept apart from the zoo's caching: finding and vetting files is one concern, holding models in memory another.
A checkpoint is `weights.save_checkpoint`'s `.safetensors` with a JSON beside it naming its arch and classes; one
that claims to be ours but cannot be used is skipped with the reason logged, never taken for ImageNet weights.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..models.resnet import REGISTRY, build
from ..models.weights import meta_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserModel:
    """A checkpoint made by `train`, found in the weights folder: what the UI needs without loading it."""

    name: str
    path: Path
    arch: str
    classes: tuple[str, ...]


def user_model(path: Path) -> UserModel | None:
    """The checkpoint at `path` as a model, None if it is not one (no JSON with classes and arch: an ImageNet
    weight file). Raises ValueError when it claims to be one but cannot be used, so discovery can say why."""
    meta_file = meta_path(path)
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file.name} is not readable JSON ({type(e).__name__})") from e
    if not isinstance(meta, dict) or "classes" not in meta or "arch" not in meta:
        return None
    arch, classes = meta["arch"], meta["classes"]
    if arch not in REGISTRY:
        raise ValueError(f"unknown arch {arch!r}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("'classes' is not a non-empty list of names")
    norm = meta.get("norm", "bn")
    if norm not in ("bn", "none"):
        raise ValueError(f"unknown norm {norm!r}")
    _check_tensors(path, arch, len(classes), norm)
    return UserModel(f"{path.stem} ({arch}, {len(classes)} classes)", path, arch, tuple(classes))


def _check_tensors(path: Path, arch: str, num_classes: int, norm: str = "bn") -> None:
    """The file's header (read without its tensors) names exactly the arch's tensors with their shapes."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
        raise ValueError(f"not a readable .safetensors file ({type(e).__name__})") from e
    with torch.device("meta"):
        net = build(arch, num_classes=num_classes, norm=norm, seed=0)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if shapes != expected:
        wrong = sorted(set(shapes) ^ set(expected)) or sorted(k for k in shapes if shapes[k] != expected[k])
        raise ValueError(f"its tensors do not fit {arch} with {num_classes} classes (e.g. {wrong[0]!r})")


def discover_user_models(weights_path: str | os.PathLike | None) -> dict[str, UserModel]:
    """Every usable `train` checkpoint in the weights folder (or the single file), by name, sorted by file.

    A broken one is skipped with a logged warning: one bad file must not take the app down.
    """
    if not weights_path:
        return {}
    root = Path(weights_path)
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root] if root.suffix == ".safetensors" else []
    found: dict[str, UserModel] = {}
    for f in files:
        try:
            user = user_model(f)
        except ValueError as e:
            log.warning("skipping checkpoint %s: %s", f.name, e)
            continue
        if user is not None:
            found[user.name] = user
    return found
