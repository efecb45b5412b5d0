"""Batched inference: device choice, BN folding, and a `Classifier` that turns uploads into top-k."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import set_inplace
from .data import ImageInput, check_transformable, decode_image, eval_transform, imagenet_labels, resize_side
from .weights import LoadedWeights


def resolve_device(preference: str | None = None) -> torch.device:
    """`RESNET_LAB_DEVICE` or the argument ("cpu", "cuda", "cuda:1"); else cuda when present."""
    preference = preference or os.environ.get("RESNET_LAB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} asked for, but CUDA is not available here")
    return device


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-only copy with every BatchNorm folded into the conv before it (`convN`/`bnN`, `downsample.0/1`)."""
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        children = dict(parent.named_children())
        for name, conv in children.items():
            bn_name = "bn" + name[4:] if name.startswith("conv") else str(int(name) + 1) if name.isdigit() else None
            bn = children.get(bn_name) if bn_name else None
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return model


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """What `Classifier` autocasts to: None (fp32) on the CPU; on CUDA bf16 only where the GPU has it natively
    (Ampere and later), else fp16. `is_bf16_supported()` alone counts emulation: a T4 says True and then runs
    bf16 far slower than fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if device.index is not None:
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


@dataclass
class Prediction:
    """Top-k of one image: (label, probability) pairs, best first; the batched forward pass it was part of."""

    topk: list[tuple[str, float]]
    forward_ms: float = 0.0
    batch_size: int = 1

    def as_dict(self) -> dict[str, float]:
        return dict(self.topk)


class Classifier:
    """Our ResNet with its weights, transform and labels, ready for uploads.

    On CUDA it runs channels_last under autocast (`autocast_dtype`: native
    bf16, else fp16) with cudnn autotuning; on the CPU, fp32. `fuse=True` is the
    fast path: a copy with each BN folded into its conv (eval only; its logits
    equal the unfused model's within 1e-5 of their scale), in-place ReLU/add (no
    one hooks this copy) and channels_last on the CPU too, where oneDNN's NHWC
    kernels win (see benchmarks/bench_inference.py). It keeps no per-call state,
    so one instance serves many threads.
    """

    def __init__(self, weights: LoadedWeights, device: str | torch.device | None = None, fuse: bool = False):
        self.weights = weights
        self.device = torch.device(device) if device is not None else resolve_device()
        model = set_inplace(fuse_bn(weights.model), True) if fuse else weights.model.eval()
        self.channels_last = fuse or self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else None)
        self.amp_dtype = autocast_dtype(self.device)
        self.transform = eval_transform(weights.pretrained_cfg)
        self.resize_side = resize_side(weights.pretrained_cfg)
        classes = weights.meta.get("classes")
        n = weights.model.num_classes
        self.labels: Sequence[str] = classes or (imagenet_labels() if n == 1000 else [f"class {i}" for i in range(n)])

    def decode(self, image: ImageInput) -> Image.Image:
        """Decode no larger than the transform needs; `ImageError` for what cannot be used or resized."""
        img = decode_image(image, min_side=self.resize_side)
        check_transformable(img.size, self.weights.pretrained_cfg)
        return img

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """One upload -> its network input (C, H, W); `ImageError` for what cannot be used."""
        return self.transform(self.decode(image))

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decode (raising `ImageError` for what cannot be used) and transform into one batch."""
        return torch.stack([self.prepare(im) for im in images])

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw class scores for a preprocessed batch, fp32 on the CPU."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(batch)
        return logits.float().cpu()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over classes for a preprocessed batch, fp32 on the CPU."""
        return self.logits(batch).softmax(-1)

    def predict_batch(self, batch: torch.Tensor, topk: int = 5) -> list[Prediction]:
        """Top-k for each row of a preprocessed batch, with the forward pass's time (to the result on the CPU)."""
        t = time.perf_counter()
        probs = self.probabilities(batch)
        ms = (time.perf_counter() - t) * 1e3
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [
            Prediction([(self.labels[i], float(p)) for p, i in zip(v.tolist(), ix.tolist())], ms, len(probs))
            for v, ix in zip(values, indices)
        ]

    def predict(self, images: Sequence[ImageInput], topk: int = 5) -> list[Prediction]:
        """Top-k (label, probability) for each image, in one batched forward pass."""
        return self.predict_batch(self.preprocess(images), topk)
