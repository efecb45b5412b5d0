"""resnet-lab: ResNets from our own blocks, proven identical to timm's."""

import os

# Before torch loads (libgomp reads it once): spinning OpenMP threads starve a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .models.resnet import REGISTRY, ResNet, ResNetConfig, build, list_archs, twin_name

__all__ = ["REGISTRY", "ResNet", "ResNetConfig", "build", "list_archs", "twin_name"]
