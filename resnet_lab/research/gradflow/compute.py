"""The measurement: one batch, one forward and backward per net, every norm recorded in depth order.

A net and its plain twin are built from the same init seed (never from torch's global RNG, which another thread
may draw from at any time) and fed the same batch, so any difference comes from the shortcuts alone.

Results are tidy (one row per arch, variant, seed, layer and quantity; `COLUMNS`):

- ``grad_w``: ||dL/dW|| of a main-path conv; ``depth_index`` counts weighted layers from the input (1 = stem conv).
- ``grad_w_shortcut``: ||dL/dW|| of a 1x1 projection shortcut (ImageNet-style ResNets only), at the depth index
  of its block's first conv.
- ``grad_x``: ||dL/dx|| at a block's output, at its last conv's depth index.
- ``act_std``: std of a block's output. He et al. (2015, Fig. 7) plot the std of BN outputs after training; at
  init a train-mode BN output has std ~ gamma = 1, so the block output is where depth shows.
- ``loss``: the initial cross-entropy (depth index 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...data.shapes import ShapesDataset
from ...models.resnet import REGISTRY, build, init_seed, list_archs, twin_name
from ...progress import Progress

IMAGENET_ARCHS = tuple(a for a in list_archs("imagenet") if a.startswith("resnet"))
CIFAR_ARCHS = tuple(a for a in list_archs("cifar") if a.startswith("resnet"))
DEFAULT_INPUT_SIZE = {"imagenet": 64, "cifar": 32}  # 64 px keeps the default sweep well under 15 s on 2 CPU cores
BN_MODES = ("train", "eval", "none")
VARIANTS = ("plain", "residual")
COLUMNS = ["arch", "variant", "depth", "seed", "depth_index", "layer", "quantity", "value"]


@dataclass(frozen=True)
class GradFlowConfig:
    """One experiment; frozen so it can key a cache. `device` is normalized to its string ("cuda:1")."""

    archs: tuple[str, ...] = IMAGENET_ARCHS
    bn_mode: str = "train"  # "train" | "eval" (running stats: identity at init) | "none" (no BN layers)
    zero_init: bool = False  # zero each block's last BN gamma (Goyal et al. 2017)
    batch_size: int = 8
    input_size: int | None = None  # None: DEFAULT_INPUT_SIZE of each arch's stem
    seeds: int = 1
    num_classes: int = 10
    data: str = "noise"  # "noise" (standard Gaussian) | "shapes" (normalized Shapes images)
    device: str = "cpu"  # where the nets run; they are built (and seeded) on the CPU, so every device has the same init

    def __post_init__(self) -> None:
        for arch in self.archs:
            if arch not in REGISTRY or not REGISTRY[arch].residual:
                raise ValueError(f"{arch!r} is not a registered ResNet; its plain twin is built for it")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, not {self.bn_mode!r}")
        if self.data not in ("noise", "shapes"):
            raise ValueError(f"data must be 'noise' or 'shapes', not {self.data!r}")
        if self.batch_size < 2 and self.bn_mode == "train":
            raise ValueError("train-mode BatchNorm needs a batch of at least 2")
        if self.seeds < 1:
            raise ValueError("seeds must be >= 1")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, not {self.device!r}")
        object.__setattr__(self, "device", str(device))  # torch.device("cuda", 1) and "cuda:1" key one cache entry

    def size_for(self, arch: str) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[REGISTRY[arch].stem]


def make_batch(cfg: GradFlowConfig, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of one seed: inputs plus random labels (a net at init knows no labels anyway)."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same batch whatever the device
    if cfg.data == "noise":
        x = torch.randn(cfg.batch_size, 3, size, size, generator=g)
    else:
        x = ShapesDataset(cfg.batch_size, seed, size).normalized()
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g)
    return x.to(cfg.device), y.to(cfg.device)


def build_net(arch: str, variant: str, seed: int, cfg: GradFlowConfig) -> nn.Module:
    """The residual net or its plain twin; the same seed gives both the same shared weights.

    `init_seed(seed)` is the init seed that `torch.manual_seed(seed)` + `build()` used to give, drawn
    privately: the published numbers stay, and no other thread's use of the global RNG can split a twin pair.
    """
    net = build(arch if variant == "residual" else twin_name(arch), num_classes=cfg.num_classes,
                zero_init_last=cfg.zero_init, norm="none" if cfg.bn_mode == "none" else "bn", seed=init_seed(seed))
    return net.to(cfg.device).train(cfg.bn_mode == "train")


def conv_layers(net: nn.Module) -> list[tuple[str, int, bool, nn.Conv2d]]:
    """(name, depth index, is_shortcut, conv) for every conv, in depth order.

    Shortcut projections are off the main path: they share the depth index of their block's first conv instead
    of taking one of their own, so main-path profiles of a ResNet and its twin line up layer for layer.
    """
    out, depth, block_start = [], 0, 0
    for name, m in net.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if ".downsample." in name:
            out.append((name, block_start, True, m))
            continue
        depth += 1
        if name.endswith(".conv1"):
            block_start = depth
        out.append((name, depth, False, m))
    return out


def measure(arch: str, variant: str, seed: int, cfg: GradFlowConfig,
            batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[tuple]:
    """One forward and backward of one net; rows in `COLUMNS` order."""
    net = build_net(arch, variant, seed, cfg)
    x, y = batch if batch is not None else make_batch(cfg, cfg.size_for(arch), seed)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [blk.register_forward_hook(keep(name)) for name, blk in net.blocks()]
    try:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
    finally:
        for h in handles:
            h.remove()

    depth = REGISTRY[arch].depth
    rows = [(arch, variant, depth, seed, 0, "loss", "loss", loss.item())]
    last_conv_of: dict[str, int] = {}
    for name, index, shortcut, conv in conv_layers(net):
        grad = conv.weight.grad
        norm = float(grad.norm()) if grad is not None else 0.0  # an unused conv gets no gradient: its norm is 0
        rows.append((arch, variant, depth, seed, index, name, "grad_w_shortcut" if shortcut else "grad_w", norm))
        if not shortcut:
            last_conv_of[name.rsplit(".", 1)[0]] = index
    for name, out in outputs.items():
        index = last_conv_of[name]
        grad_norm = float(out.grad.norm()) if out.grad is not None else 0.0
        rows.append((arch, variant, depth, seed, index, name, "grad_x", grad_norm))
        rows.append((arch, variant, depth, seed, index, name, "act_std", float(out.detach().std())))
    return rows


def jobs(cfg: GradFlowConfig) -> list[tuple[str, str, int]]:
    """(arch, variant, seed) of every net a sweep measures, in the order it measures them."""
    return [(a, v, s) for a in cfg.archs for s in range(cfg.seeds) for v in VARIANTS]


def run_sweep(cfg: GradFlowConfig, progress: Progress | None = None) -> pd.DataFrame:
    """Measure every (arch, variant, seed) of `cfg`; `progress(fraction, desc)` is told after each net."""
    todo = jobs(cfg)
    rows: list[tuple] = []
    batches: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (arch, variant, seed) in enumerate(todo):
        if progress is not None:
            progress(i / len(todo), f"{variant} {arch}, seed {seed}")
        key = (cfg.size_for(arch), seed)
        if key not in batches:  # the twins see the very same batch
            batches[key] = make_batch(cfg, *key)
        rows += measure(arch, variant, seed, cfg, batches[key])
    if progress is not None:
        progress(1.0, "done")
    return pd.DataFrame(rows, columns=COLUMNS)
