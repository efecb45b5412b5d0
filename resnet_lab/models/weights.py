"""Weights for our ResNets, from one entry point (`load_weights`): timm tags on the Hugging Face Hub (`hub`), local
files and our own checkpoints (`checkpoints`), and akamaster/pytorch_resnet_cifar10's CIFAR-10 nets (`akamaster`).

The names callers import from here (`load_checkpoint`, `save_checkpoint`, `LoadedWeights`, `WeightsUnavailable`,
the hub's and akamaster's loaders) are re-exported, so `resnet_lab.models.weights` stays the one place to ask.
"""

from __future__ import annotations

import os
from pathlib import Path

from .akamaster import AKAMASTER_PREFIX, load_akamaster
from .checkpoints import (
    LoadedWeights,
    WeightsUnavailable,
    load_checkpoint,
    meta_path,
    read_state_dict,
    save_checkpoint,
    scrub_paths,
    shown_path,
)
from .hub import (
    DEFAULT_TAGS,
    HF_HUB_PREFIX,
    hub_file,
    hub_reachable,
    is_headless,
    list_tags,
    load_hf_hub,
    load_pretrained,
    resolve_tag,
    tcp_reachable,
)
from .resnet import build

__all__ = [
    "AKAMASTER_PREFIX", "DEFAULT_TAGS", "HF_HUB_PREFIX", "LoadedWeights", "WeightsUnavailable", "hub_file",
    "hub_reachable", "is_headless", "list_tags", "load_akamaster", "load_checkpoint", "load_hf_hub",
    "load_pretrained", "load_weights", "meta_path", "read_state_dict", "resolve_tag", "save_checkpoint",
    "scrub_paths", "shown_path", "tcp_reachable",
]


def load_weights(spec: str | None, arch: str | None = None) -> LoadedWeights:
    """One entry point: a timm tag, a local file, akamaster's CIFAR-10 nets, or None for random weights (said loudly).

    `akamaster:resnet20` (or any `.th` file) goes to `load_akamaster`.
    """
    if spec and spec.startswith(HF_HUB_PREFIX):
        return load_hf_hub(spec, arch)
    if spec and (spec.startswith(AKAMASTER_PREFIX) or Path(spec).suffix == ".th"):
        return load_akamaster(spec, arch)
    if spec and (os.path.sep in spec or Path(spec).suffix in (".safetensors", ".pth", ".bin", ".pt")):
        return load_checkpoint(spec, arch)
    if spec:
        return load_pretrained(spec)
    if arch is None:
        raise ValueError("load_weights(None) needs an arch")
    model = build(arch, seed=0).eval()  # random, but the same random weights every time
    return LoadedWeights(model, "random", dict(model.pretrained_cfg))
