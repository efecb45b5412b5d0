"""Weights in files: what a loaded model is (`LoadedWeights`), how a file of weights is read safely, and our own
checkpoints (a `.safetensors` with a JSON beside it naming arch, classes and data config).

Nothing here unpickles arbitrary objects: `.safetensors` is preferred, and `.pth`/`.bin`/`.th` files go through
`torch.load(weights_only=True)`. Messages reach the UI, so they never show an absolute path of the server
(`shown_path`, `scrub_paths`). The hub (`hub`) and akamaster's CIFAR nets (`akamaster`) build on this module;
`weights.load_weights` is the one entry point over all three.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import replacing
from ..paths import PROJECT_ROOT
from .resnet import ResNet, build


def shown_path(path: str | os.PathLike) -> str:
    """How a file is named to users: relative to the project if inside it, else its name; never a server path."""
    path = Path(path)
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except (ValueError, OSError):
        return path.name


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"`/:]+/)+[^\s'\"`/:,;)]+")


def scrub_paths(text: str) -> str:
    """Every absolute path in `text` (ours, or quoted in a library's error) replaced by `shown_path`; URLs kept."""
    return _ABSOLUTE_PATH.sub(lambda m: shown_path(m.group(0)), text)


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had (hub out of reach, missing file, wrong shapes).

    Its message is shown in the UI, so absolute paths in it are replaced by `shown_path` on the way in.
    """

    def __init__(self, message: str) -> None:
        super().__init__(scrub_paths(message))


@dataclass
class LoadedWeights:
    """A model with its weights and where they came from."""

    model: ResNet
    source: str  # "hub:resnet50.tv2_in1k", "file:assets/x.safetensors" (`shown_path`: safe to show), "random"
    pretrained_cfg: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file read, in full (for the library; the UI shows `source`)

    def __post_init__(self) -> None:
        self.model.pretrained_cfg = self.pretrained_cfg  # as timm models carry it: explain.py reads mean/std

    @property
    def is_random(self) -> bool:
        return self.source == "random"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from `.pth`/`.bin` without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file must not escape as a crash
            raise WeightsUnavailable(f"{path.name} is not a readable .safetensors file ({first_line(e)})") from e
    obj = read_plain(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"{path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_plain(path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors, containers and numbers only; a pickle that carries code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, never execute
        raise WeightsUnavailable(
            f"refusing to load {path.name}: it is not a plain tensor checkpoint ({first_line(e, 200)}). "
            "Convert it to .safetensors."
        ) from e


def first_line(e: BaseException, limit: int = 300) -> str:
    """"ErrorType: the first line of its message" (cut at `limit`): a library's error, short enough for the UI."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with an error that names the file and the mismatch."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailable(f"{what} does not fit this model: {str(e)[:500]}") from e


def meta_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def checkpoint_path(out: str | os.PathLike) -> Path:
    """`<out>.safetensors`: the suffix added, not swapped (`--out runs/x.v2` is `runs/x.v2.safetensors`, beside
    its states `runs/x.v2.<run>...`, not `runs/x.safetensors`); an `out` already ending in it is kept."""
    out = Path(out)
    return out if out.suffix == ".safetensors" else Path(f"{out}.safetensors")


def save_checkpoint(model: ResNet, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write `<path>.safetensors` and a `<path>.json` beside it (arch, classes, mean/std, ...), each atomically
    (`files.replacing`): a run killed while saving leaves the previous checkpoint, not a truncated one."""
    from safetensors.torch import save_file

    path = checkpoint_path(path)
    with replacing(path, mode=0o644) as tmp:  # 0644: a shipped checkpoint must be readable by other users
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    with replacing(meta_path(path), mode=0o644) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> LoadedWeights:
    """Load a local weights file into our model.

    With a JSON beside it (as `save_checkpoint` writes), the arch, class count,
    class names and data config come from there; otherwise `arch` must be given
    and the ImageNet defaults apply.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    if meta_path(path).is_file():
        meta = json.loads(meta_path(path).read_text())
    arch = arch or meta.get("arch")
    if arch is None:
        raise WeightsUnavailable(f"{path.name}: no arch given and no {meta_path(path).name} beside it")
    state = read_state_dict(path)
    if "fc.weight" not in state:
        raise WeightsUnavailable(f"{path.name} has no classifier head (no fc.weight): it cannot classify")
    norm = meta.get("norm", "bn")  # a net trained without BatchNorm (the Playground's switch) has no BN tensors
    model = build(arch, num_classes=meta.get("num_classes") or state["fc.weight"].shape[0], norm=norm, seed=0)
    load_into(model, state, path.name)
    cfg = dict(model.pretrained_cfg)
    cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items() if k in cfg})
    return LoadedWeights(model.eval(), f"file:{shown_path(path)}", cfg, meta, path=path)
