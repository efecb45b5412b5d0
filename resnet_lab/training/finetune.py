"""Fine-tuning: start a run from pretrained weights, with a new head, a frozen prefix and a slower backbone.

The training loop needs a few calls: `load_for` (the weights, checked to be the arch's) and `with_head` (a head for
the data's classes, the weights' data config kept), or both at once as `pretrained_model`; `data_config` (that
config at the run's image size, for the data before their classes are known); `freeze` (requires_grad off up to a
stage, and that prefix's BatchNorm kept in eval mode even under `model.train()`) and `param_groups` (head at `lr`,
backbone at `lr * backbone_lr_scale`, frozen parameters left out). Nothing here draws from
torch's global RNG: the new head comes from a `torch.Generator` seeded by the run's seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.resnet import REGISTRY, ResNet, init_module
from ..models.weights import AKAMASTER_PREFIX, LoadedWeights, WeightsUnavailable, load_weights, meta_path, resolve_tag

NOTHING = "nothing"
STEM = "stem"
STEM_MODULES = ("conv1", "bn1")  # act1 and maxpool hold no parameters
HEAD = "fc"
FILE_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".th")  # what `load_weights` reads as a file, not a tag


@dataclass
class Pretrained:
    """What `pretrained_model` gives the loop: the model (on CPU) and what to record about where it came from."""

    model: ResNet
    spec: str  # as passed: tag, file or akamaster:name
    source: str  # `LoadedWeights.source`: hub:resnet50.a1_in1k, file:assets/x.safetensors (never a server path)
    head: str  # "new" (drawn from the seed), "kept" or "kept, rows reordered"
    pretrained_num_classes: int  # the head the weights came with
    pretrained_classes: list[str] | None  # their class names, where the weights know them

    def record(self) -> dict[str, Any]:
        """For the checkpoint's JSON."""
        return {"spec": self.spec, "source": self.source, "head": self.head,
                "pretrained_num_classes": self.pretrained_num_classes, "pretrained_classes": self.pretrained_classes}


# ----------------------------------------------------------------------------- loading


def _is_file_spec(spec: str) -> bool:
    """As `load_weights` tells a file from a tag."""
    return os.path.sep in spec or Path(spec).suffix in FILE_SUFFIXES


def load_for(spec: str, arch: str) -> LoadedWeights:
    """The weights of `spec` (timm tag, local file, our checkpoint, `akamaster:NAME`), refused with a clear message
    when they are not `arch`'s: for a hub tag before any download is tried."""
    if arch not in REGISTRY:
        raise ValueError(f"unknown arch {arch!r}")
    if spec.startswith(AKAMASTER_PREFIX) or Path(spec).suffix == ".th":
        loaded = load_weights(spec)  # the arch follows from the file (blocks per stage)
    elif _is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"--pretrained {spec}: weights file not found")
        try:  # with our JSON beside it the file names its own arch; else it must fit `arch`
            loaded = load_weights(str(path), None if meta_path(path).is_file() else arch)
        except WeightsUnavailable as e:
            raise WeightsUnavailable(f"--pretrained {path.name} cannot start a {arch}: {e}") from e
    else:
        tag_arch, _ = resolve_tag(spec)  # no network: a mismatch is said before any download is tried
        if tag_arch != arch:
            raise WeightsUnavailable(f"the weights {spec!r} are a {tag_arch}, not a {arch}; pass --arch {tag_arch}")
        loaded = load_weights(spec)
    if loaded.model.config != REGISTRY[arch]:
        found = loaded.meta.get("arch") or next((n for n, c in REGISTRY.items() if c == loaded.model.config), "?")
        raise WeightsUnavailable(f"--pretrained {spec} holds a {found}, not a {arch}; pass --arch {found}")
    return loaded


def _new_head(model: ResNet, num_classes: int, seed: int) -> nn.Linear:
    """A fresh Linear drawn from `torch.Generator().manual_seed(seed)`: made on meta, so the global RNG is not used."""
    with torch.device("meta"):
        fc = nn.Linear(model.num_features, num_classes)
    fc.to_empty(device=model.fc.weight.device)
    init_module(fc, torch.Generator(device=model.fc.weight.device).manual_seed(seed))
    return fc


def pretrained_model(spec: str, arch: str, classes: Sequence[str], seed: int) -> Pretrained:
    """`arch` with the weights of `spec` (timm tag, local file, our checkpoint, `akamaster:NAME`) and a head for
    `classes`: `with_head(load_for(spec, arch), classes, seed, spec)`."""
    return with_head(load_for(spec, arch), classes, seed, spec)


def with_head(loaded: LoadedWeights, classes: Sequence[str], seed: int, spec: str = "") -> Pretrained:
    """The loaded net with a head for `classes` (it is changed in place and returned in train mode).

    The head is kept when the weights know their class names and they are `classes` (rows reordered when only the
    order differs, e.g. Shapes' order vs a folder's sorted one); otherwise it is a new `Linear` drawn from `seed`.
    `model.pretrained_cfg` stays the weights' (mean/std, input size, crop_pct, interpolation), so the data
    transforms match what the backbone was trained on. Errors are `WeightsUnavailable` with a message to show.
    """
    classes = list(classes)
    if not classes:
        raise ValueError("fine-tuning needs at least one class")
    model = loaded.model
    pretrained_num_classes = model.num_classes
    old = loaded.meta.get("classes")
    old = [str(c) for c in old] if isinstance(old, list) and len(old) == model.num_classes else None
    head = "new"
    if old is not None and sorted(old) == sorted(classes) and len(set(classes)) == len(classes):
        order = torch.tensor([old.index(c) for c in classes])
        head = "kept" if old == classes else "kept, rows reordered"
        with torch.no_grad():
            model.fc.weight.copy_(model.fc.weight[order].clone())
            model.fc.bias.copy_(model.fc.bias[order].clone())
    else:
        model.fc = _new_head(model, len(classes), seed)
    model.num_classes = len(classes)
    model.pretrained_cfg = {**loaded.pretrained_cfg, "num_classes": len(classes)}
    return Pretrained(model.train(), spec or loaded.source, loaded.source, head, pretrained_num_classes, old)


def data_config(pretrained_cfg: dict[str, Any], size: int | None) -> dict[str, Any]:
    """The weights' data config at the run's image side (`size`; None: the weights' own input size).

    timm's test-time size and crop (`test_input_size`, `test_crop_pct`) are dropped: validation must see what the
    checkpoint's JSON records (input_size, crop_pct), since that is what the app and `evaluate` will feed it.
    """
    cfg = {k: v for k, v in pretrained_cfg.items() if k not in ("test_input_size", "test_crop_pct")}
    side = size or int(cfg["input_size"][-1])
    cfg["input_size"] = (3, side, side)
    return cfg


# ----------------------------------------------------------------------------- freezing


def parts(model: ResNet) -> list[str]:
    """What `--freeze` accepts for this net, shallow to deep: nothing, stem, layer1, ... (CIFAR nets end at layer3)."""
    return [NOTHING, STEM, *model.stage_names]


def arch_parts(arch: str) -> list[str]:
    """`parts` of a registered arch without building it (for checking a config up front)."""
    return [NOTHING, STEM, *REGISTRY[arch].stage_names]


def _frozen_names(model: ResNet, upto: str) -> list[str]:
    """The top-level modules frozen by `--freeze upto`: conv1, bn1, layer1, ..."""
    choices = parts(model)
    if upto not in choices:
        raise ValueError(f"--freeze {upto!r} is not a part of this net; choose one of {', '.join(choices)}")
    names: list[str] = []
    for part in choices[1:choices.index(upto) + 1]:
        names += list(STEM_MODULES) if part == STEM else [part]
    return names


class KeepEval:
    """Forward pre-hook on the whole model: before every forward, each BatchNorm under the frozen modules is put in
    eval mode (normalizes with its running statistics, never updates them).

    On the root, not on each BatchNorm, and by name: DDP's SyncBatchNorm conversion (`distributed.wrap`) and
    `unwrap` swap the BatchNorm modules for new ones, which would drop hooks registered on them; the root and the
    names stay. A class rather than a closure, so the model still deep-copies and pickles.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def __call__(self, model: nn.Module, _args: Any) -> None:
        for name in self.names:
            for m in model.get_submodule(name).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.training = False


def freeze(model: ResNet, upto: str) -> list[str]:
    """Freeze the stem and stages up to and including `upto`; the names of the parameters frozen.

    Their parameters get `requires_grad=False` (call this before DDP wraps the model: DDP reads it once), and the
    model a `KeepEval` forward pre-hook that keeps their BatchNorm layers in eval mode. Why: a BatchNorm in train
    mode normalizes with the batch's statistics and moves its running mean/var towards them whether or not its
    weights get gradients, so a "frozen" stem would drift to the statistics of a few small fine-tuning batches and
    its outputs at eval time would change. A hook rather than a one-off `.eval()`: the loop's `model.train()` (each
    epoch, after each validation) would flip that back.
    """
    names = _frozen_names(model, upto)
    if not names:
        return []
    ids: set[int] = set()
    for name in names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(False)
            ids.add(id(p))
    hook = KeepEval(names)
    hook(model, ())
    model.register_forward_pre_hook(hook)
    return [n for n, p in model.named_parameters() if id(p) in ids]


# ----------------------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: the head (`fc`) at `lr`, the rest at `lr * backbone_lr_scale`; frozen parameters left out.

    As `models.optim.decay_groups`: no weight decay on BatchNorm weights and biases (ndim <= 1). Empty groups are
    dropped. Each group carries its own `lr`, so a scheduler must scale per group: CosineAnnealingLR does;
    OneCycleLR needs `max_lr=[g["lr"] for g in groups]` (a scalar would give every group the head's rate).
    """
    if not (math.isfinite(backbone_lr_scale) and backbone_lr_scale >= 0):
        raise ValueError(f"--backbone-lr-scale must be a finite number >= 0, not {backbone_lr_scale}")
    groups: list[dict[str, Any]] = []
    for part, rate in ((HEAD, lr), ("backbone", lr * backbone_lr_scale)):
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and (n.split(".")[0] == HEAD) == (part == HEAD)]
        for decay in (True, False):
            chosen = [p for _, p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": rate, "weight_decay": weight_decay if decay else 0.0,
                               "name": f"{part}{'' if decay else ' (no decay)'}"})
    if not groups:
        raise ValueError("nothing left to train: every parameter is frozen")
    return groups
