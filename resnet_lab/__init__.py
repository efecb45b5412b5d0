"""resnet-lab: ResNets from our own blocks, proven identical to timm's."""

from .resnet import REGISTRY, ResNet, ResNetConfig, build, list_archs, twin_name

__all__ = ["REGISTRY", "ResNet", "ResNetConfig", "build", "list_archs", "twin_name"]
