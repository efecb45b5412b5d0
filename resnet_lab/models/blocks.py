"""Residual blocks of He et al. (2015) and their plain twins.

`residual=False` builds the *plain twin* of a block: the same convs and BNs,
with no shortcut at all (no projection either). Every activation is its own
module and nothing runs in place unless `set_inplace` asks for it, so captum's
layer and guided methods, forward hooks and anyone who keeps an intermediate
output see what each layer produced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (a BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ReLU(nn.ReLU):
    """ReLU that may work in place only where it was allowed to (`set_inplace`) and no graph is recorded.

    Rewriting the BN output in place saves a full activation's memory traffic
    (timm does the same), but it also rewrites the tensor a forward hook on that
    BN was handed, and `no_grad()` does not mean "nobody looks": hooks run there
    too. So it is an opt-in for copies that nobody hooks (the fused inference
    copy); while gradients are recorded it stays out of place regardless.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.inplace and not torch.is_grad_enabled())


def add_shortcut(out: torch.Tensor, shortcut: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """`out + shortcut`; in place on the branch's fresh output only if allowed and no graph is recorded."""
    return out.add_(shortcut) if inplace and not torch.is_grad_enabled() else out + shortcut


def set_inplace(module: nn.Module, enabled: bool) -> nn.Module:
    """Allow (or forbid, the default) in-place ReLUs and shortcut adds in every block and `ReLU` of `module`.

    Even when allowed they only run in place where no autograd graph is
    recorded. Only for a model no one hooks or reads intermediate outputs from:
    a hook on a BN would see the values the next ReLU overwrote. Returns `module`.
    """
    for m in module.modules():
        if isinstance(m, (ReLU, BasicBlock, Bottleneck)):
            m.inplace = bool(enabled)
    return module


class ShortcutA(nn.Module):
    """The paper's parameter-free shortcut (option A, section 4.2).

    Identity, subsampled by `stride`, with the extra output channels zero-padded,
    so a CIFAR ResNet and its plain twin have exactly the same parameters. The
    zeros go equally before and after the identity channels, as in
    akamaster/pytorch_resnet_cifar10 (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`),
    so their checkpoints load with the same shortcut they were trained with.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


def projection(in_planes: int, out_planes: int, stride: int, norm_layer: NormLayer) -> nn.Sequential:
    """The 1x1 projection shortcut (option B); keys `downsample.0/1` as in timm."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.inplace = False  # see set_inplace
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.act1 = ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.act2 = ReLU()
        self.downsample = downsample if residual else None

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = add_shortcut(out, x if self.downsample is None else self.downsample(x), self.inplace)
        return self.act2(out)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 with expansion 4; stride on the 3x3 ("v1.5", as timm and torchvision)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = planes
        self.residual = residual
        self.inplace = False  # see set_inplace
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.act1 = ReLU()
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.act2 = ReLU()
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.act3 = ReLU()
        self.downsample = downsample if residual else None

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = add_shortcut(out, x if self.downsample is None else self.downsample(x), self.inplace)
        return self.act3(out)
