"""One ResNet class, a registry of configs, and the plain twin of every net.

ImageNet nets (He et al. 2015, Table 1) have timm's (= torchvision's) state-dict
keys, so their weights load with `strict=True` and no renaming. CIFAR nets
(section 4.2) are 6n+2 layers deep with widths 16-32-64. `resnet18_cifar` and
kin are the ImageNet nets with a CIFAR stem (one 3x3 stride-1 conv, no max-pool)
and projection shortcuts, as kuangliu/pytorch-cifar's ResNet-18: the usual
"ResNet-18 on CIFAR-10" exercise.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, NormLayer, ReLU, ShortcutA, conv3x3, projection

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that tells one member of the family from another."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": one 3x3 conv
    shortcut: str = "B"  # "A": parameter-free identity/zero-pad; "B": 1x1 projection where shapes change
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    residual: bool = True
    family: str = "imagenet"  # what `list_archs(kind)` filters on: one of FAMILIES

    @property
    def depth(self) -> int:
        """Weighted layers: convs on the main path plus the classifier."""
        per_block = 3 if self.block is Bottleneck else 2
        return 1 + per_block * sum(self.layers) + 1

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' module names, input to output (`layer1`, ...): known without building the net."""
        return tuple(f"layer{i + 1}" for i in range(len(self.layers)))


def _imagenet(block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...]) -> ResNetConfig:
    return ResNetConfig(block=block, layers=layers)


def _cifar(n: int) -> ResNetConfig:
    return ResNetConfig(
        block=BasicBlock, layers=(n, n, n), widths=(16, 32, 64), stem="cifar", shortcut="A",
        num_classes=10, input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, family="cifar",
    )


def _cifar_stem(block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...]) -> ResNetConfig:
    """An ImageNet net (widths 64-512, its block counts, option-B projections) on 32 px CIFAR images."""
    return replace(_imagenet(block, layers), stem="cifar", num_classes=10, input_size=(3, 32, 32),
                   mean=CIFAR_MEAN, std=CIFAR_STD, family="cifar_stem")


# "imagenet": He et al. Table 1; "cifar": the paper's 6n+2 CIFAR nets (section 4.2);
# "cifar_stem": the ImageNet nets with a CIFAR stem (kuangliu/pytorch-cifar).
FAMILIES = ("imagenet", "cifar", "cifar_stem")


_RESIDUAL: dict[str, ResNetConfig] = {
    "resnet18": _imagenet(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _imagenet(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _imagenet(Bottleneck, (3, 4, 6, 3)),
    "resnet101": _imagenet(Bottleneck, (3, 4, 23, 3)),
    "resnet152": _imagenet(Bottleneck, (3, 8, 36, 3)),
    **{f"resnet{6 * n + 2}": _cifar(n) for n in (3, 5, 7, 9, 18)},
    "resnet18_cifar": _cifar_stem(BasicBlock, (2, 2, 2, 2)),
    "resnet34_cifar": _cifar_stem(BasicBlock, (3, 4, 6, 3)),
    "resnet50_cifar": _cifar_stem(Bottleneck, (3, 4, 6, 3)),
}
REGISTRY: dict[str, ResNetConfig] = {
    **_RESIDUAL,
    **{"plain" + name[len("resnet"):]: replace(cfg, residual=False) for name, cfg in _RESIDUAL.items()},
}


def list_archs(kind: str | None = None) -> list[str]:
    """Registered arch names; `kind` filters to one family (FAMILIES).

    By family, not by stem: "cifar" stays the paper's 6n+2 nets, so the lists built on it (the gradient
    study's CIFAR depths) do not silently grow a ResNet-50 when `resnet50_cifar` is registered.
    """
    if kind is not None and kind not in FAMILIES:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(FAMILIES)}")
    return [n for n, c in REGISTRY.items() if kind is None or c.family == kind]


def twin_name(arch: str) -> str:
    """`resnet56` <-> `plain56`, `resnet18_cifar` <-> `plain18_cifar`."""
    if arch.startswith("resnet"):
        return "plain" + arch[len("resnet"):]
    if arch.startswith("plain"):
        return "resnet" + arch[len("plain"):]
    return arch


def twin_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """(residual, plain) twins both among `models`, residual first, in the order the residual nets appear."""
    return [(m, twin_name(m)) for m in models if m in REGISTRY and REGISTRY[m].residual and twin_name(m) in models]


def default_pretrained_cfg(cfg: ResNetConfig, num_classes: int) -> dict:
    """timm-style data config (what the eval transform needs) for a net without pretrained weights."""
    return {
        "input_size": cfg.input_size,
        "interpolation": "bilinear",
        "crop_pct": 0.875 if cfg.stem == "imagenet" else 1.0,
        "crop_mode": "center",
        "mean": cfg.mean,
        "std": cfg.std,
        "num_classes": num_classes,
    }


def init_seed(seed: int) -> int:
    """The init seed `build()` used to draw from the global RNG right after `torch.manual_seed(seed)`.

    Computed on a private generator (the same Mersenne Twister draw), so every result made that way (the
    shipped checkpoint, the degradation curves, the gradient study) is rebuilt exactly, whatever other
    threads do with the global RNG meanwhile.
    """
    return int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(seed), device="cpu"))


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _draw(param: torch.Tensor, generator: torch.Generator, fill: Callable[[torch.Tensor], object]) -> None:
    """`fill` `param` from `generator`; drawn on the generator's device and copied where the two differ."""
    if _same_device(param.device, generator.device):
        fill(param)
    else:  # the same numbers as on the generator's device, wherever the weights live
        tmp = torch.empty_like(param, device=generator.device)
        fill(tmp)
        param.copy_(tmp)


@torch.no_grad()
def init_module(m: nn.Module, generator: torch.Generator | int) -> None:
    """Fresh weights for one module (its children untouched): He-normal convs (fan_out, as torchvision),
    BN reset to identity with fresh statistics, PyTorch's default Linear init; any other module with
    `reset_parameters` (a custom norm layer) gets its own reset.

    `generator` is a seed or a `torch.Generator`. A seed makes a generator on the device of the module's
    weights (a CUDA tensor refuses a CPU generator), so on CPU it gives exactly `torch.Generator().manual_seed(seed)`'s
    numbers. A generator on another device than the weights is drawn from on its own device and the numbers are
    copied over: one CPU generator gives the same weights on CPU and CUDA. Meta weights hold no values: left alone.
    """
    if not isinstance(m, (nn.Conv2d, nn.Linear)):
        if callable(getattr(m, "reset_parameters", None)):  # BN: identity, fresh statistics; no RNG
            m.reset_parameters()
        return
    if m.weight.device.type == "meta":
        return
    if not isinstance(generator, torch.Generator):
        generator = torch.Generator(device=m.weight.device).manual_seed(int(generator))
    g = generator
    if isinstance(m, nn.Conv2d):
        _draw(m.weight, g, lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g))
    else:
        bound = 1.0 / m.in_features**0.5
        _draw(m.weight, g, lambda t: nn.init.uniform_(t, -bound, bound, generator=g))
        _draw(m.bias, g, lambda t: nn.init.uniform_(t, -bound, bound, generator=g))


class ResNet(nn.Module):
    """A residual network (or its plain twin) built from a `ResNetConfig`.

    Weights are initialised per module from a generator seeded by `seed` and the
    module's name, so a net and its plain twin built with the same `seed` share
    every weight they have in common, even though the plain twin lacks the
    projection shortcuts. `seed=None` draws the seed from torch's global RNG:
    only for "any random net"; whatever must be reproducible passes a seed,
    since another thread may draw from the global RNG between a
    `torch.manual_seed` and the build.
    """

    def __init__(
        self,
        config: ResNetConfig,
        num_classes: int | None = None,
        in_chans: int = 3,
        zero_init_last: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        seed = int(torch.randint(0, 2**62, (), device="cpu")) if seed is None else seed
        device = torch.get_default_device()
        with torch.device("meta"):  # shapes only: no throwaway default init drawn from the global RNG
            self._build(config, num_classes, in_chans, norm_layer)
        self.to_empty(device=device)  # then init_weights fills every parameter and buffer
        self.init_weights(seed, zero_init_last)
        self.pretrained_cfg = default_pretrained_cfg(config, self.num_classes)

    def _build(self, config: ResNetConfig, num_classes: int | None, in_chans: int, norm_layer: NormLayer) -> None:
        """Create every layer (on whatever device is current; `__init__` makes it meta)."""
        self.config = config
        self.num_classes = num_classes if num_classes is not None else config.num_classes
        self.residual = config.residual
        self._norm_layer = norm_layer
        widths = config.widths
        if config.stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = norm_layer(widths[0])
        self.act1 = ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if config.stem == "imagenet" else nn.Identity()

        self.inplanes = widths[0]
        self.stage_names: list[str] = list(config.stage_names)
        for i, (name, planes, blocks) in enumerate(zip(self.stage_names, widths, config.layers)):
            self.add_module(name, self._make_layer(planes, blocks, stride=1 if i == 0 else 2))
        self.num_features = self.inplanes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, self.num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        block, cfg = self.config.block, self.config
        out = planes * block.expansion
        downsample = None
        if cfg.residual and (stride != 1 or self.inplanes != out):
            if cfg.shortcut == "A":
                downsample = ShortcutA(self.inplanes, out, stride)
            else:
                downsample = projection(self.inplanes, out, stride, self._norm_layer)
        layers = [block(self.inplanes, planes, stride, downsample, cfg.residual, self._norm_layer)]
        self.inplanes = out
        layers += [block(out, planes, 1, None, cfg.residual, self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def init_weights(self, seed: int, zero_init_last: bool = False) -> None:
        """He init for convs (fan_out, as torchvision), BN to identity, default Linear init."""
        for name, m in self.named_modules():
            init_module(m, seed ^ zlib.crc32(name.encode()))  # a generator on the weights' device
        if zero_init_last:
            for _, blk in self.blocks():
                if isinstance(blk.last_bn, nn.BatchNorm2d):
                    nn.init.zeros_(blk.last_bn.weight)

    def stages(self) -> list[tuple[str, nn.Sequential]]:
        """(`layer1`, module), ... in depth order."""
        return [(n, getattr(self, n)) for n in self.stage_names]

    def blocks(self) -> list[tuple[str, BasicBlock | Bottleneck]]:
        """Every block in depth order, named by its state-dict prefix (`layer2.0`)."""
        return [(f"{s}.{i}", b) for s, stage in self.stages() for i, b in enumerate(stage)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for _, stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.global_pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build(
    arch: str,
    *,
    residual: bool | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    zero_init_last: bool = False,
    norm: str = "bn",
    shortcut: str | None = None,
    seed: int | None = None,
) -> ResNet:
    """Build a registered arch (`resnet50`, `plain56`, ...).

    `residual` overrides the name (so `build("resnet56", residual=False)` is
    `plain56`), `norm="none"` drops BatchNorm (for the no-BN gradient study),
    `shortcut` picks option "A" or "B" for the shortcuts where shapes change.
    `seed` fixes the init without touching the global RNG (default: one draw from it).
    """
    if arch not in REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(list_archs())}")
    cfg = REGISTRY[arch]
    if residual is not None:
        cfg = replace(cfg, residual=residual)
    if shortcut is not None:
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', not {shortcut!r}")
        cfg = replace(cfg, shortcut=shortcut)
    if norm not in ("bn", "none"):
        raise ValueError(f"norm must be 'bn' or 'none', not {norm!r}")
    norm_layer: NormLayer = nn.BatchNorm2d if norm == "bn" else (lambda _c: nn.Identity())
    return ResNet(cfg, num_classes, in_chans, zero_init_last, norm_layer, seed)
