"""Batched inference: BN folding, and a `Classifier` that turns uploads into top-k (on `devices.resolve_device`'s
device)."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data.images import (
    ImageError,
    ImageInput,
    check_transformable,
    decode_image,
    eval_config,
    eval_transform,
    imagenet_labels,
    resize_side,
)
from ..models.blocks import set_inplace
from ..models.weights import LoadedWeights
from ..runtime.devices import resolve_device
from ..runtime.precision import dtype_name, serving_dtype
from . import graphs
from .device_decode import DeviceTransform, JpegUpload, decode_jpegs, orient, read_jpeg_header

log = logging.getLogger(__name__)


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


DECODE_CALL_PIXELS = 100_000_000  # per `decode_jpeg` call on the device: 300 MB of RGB, eight 12 MP photos


def _pixel_chunks(jpegs: dict[int, JpegUpload], limit: int | None = None) -> list[list[int]]:
    """The uploads' indices in order, grouped so each group decodes to at most `limit` pixels (one upload of up
    to `data.MAX_PIXELS` alone): a queue batch of large photos never holds more than that at full size."""
    limit = limit or DECODE_CALL_PIXELS
    chunks: list[list[int]] = []
    total = limit
    for i, head in jpegs.items():
        pixels = head.size[0] * head.size[1]
        if total + pixels > limit:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += pixels
    return chunks


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

    It autocasts to `precision.serving_dtype` (RESNET_LAB_PRECISION; auto: native
    bf16 on CUDA, else fp16; on the CPU bf16 only where it is native and measured to
    agree with fp32), channels_last with cudnn autotuning on CUDA (during its own forward only). `fuse=True` is the
    fast path: a copy with each BN folded into its conv (eval only; its logits
    equal the unfused model's within 1e-5 of their scale), in-place ReLU/add (no
    one hooks this copy) and channels_last on the CPU too, where oneDNN's NHWC
    kernels win (see benchmarks/bench_inference.py). It keeps no per-call state
    (the CUDA graphs' static buffers are behind a lock), so one instance serves
    many threads.

    On CUDA, JPEG uploads are decoded and transformed on the GPU (`device_decode`,
    see device_decode.py; `device_decode=True` forces the same code on the CPU), and
    `use_cuda_graphs` (called by the zoo at load) replays captured graphs for the
    queue's batch sizes (graphs.py). Explanations use `weights.model`, never these.
    """

    def __init__(self, weights: LoadedWeights, device: str | torch.device | None = None, fuse: bool = False,
                 device_decode: bool | None = None):
        self.weights = weights
        self.device = resolve_device(device)
        model = set_inplace(fuse_bn(weights.model), True) if fuse else weights.model.eval()
        self.channels_last = fuse or self.device.type == "cuda"
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else None)
        self.amp_dtype = serving_dtype(self.device)
        self.transform = eval_transform(weights.pretrained_cfg)
        self.resize_side = resize_side(weights.pretrained_cfg)
        if device_decode is None:
            device_decode = self.device.type == "cuda"
        supported = DeviceTransform.supports(weights.pretrained_cfg)
        self.device_transform = DeviceTransform(weights.pretrained_cfg, self.device) if device_decode and supported \
            else None
        self.graphed: graphs.BucketedGraphs | None = None
        self.fallbacks: dict[str, str] = {}  # what runs instead of the fast path, and why (`fallback`)
        self._fallback_lock = threading.Lock()
        classes = weights.meta.get("classes")
        n = weights.model.num_classes
        self.labels: Sequence[str] = classes or (imagenet_labels() if n == 1000 else [f"class {i}" for i in range(n)])

    @property
    def name(self) -> str:
        """The arch and where its weights came from, for log lines."""
        return f"{self.weights.pretrained_cfg.get('architecture', 'model')} ({self.weights.source})"

    def fallback(self, kind: str, reason: str) -> None:
        """Record that `kind` (e.g. "CUDA graphs off") runs instead of the fast path, and why: one WARNING per kind
        per model, and the status line (`runs`) says it from then on."""
        with self._fallback_lock:
            first = kind not in self.fallbacks
            self.fallbacks[kind] = reason
        if first:
            log.warning("%s: %s: %s", self.name, kind, reason)

    def runs(self) -> list[str]:
        """What actually runs, for the status line: autocast, GPU decode, CUDA graphs, and each fallback with its
        reason. Off CUDA the graphs' absence is no fallback (they need CUDA) and is not listed."""
        out = [f"{dtype_name(self.amp_dtype)} autocast"] if self.amp_dtype else []
        if self.device_decode:
            out.append("JPEG decode on the GPU" if self.device.type == "cuda" else "JPEG decode on the device path")
        out += ["CUDA graphs"] if self.graphed is not None else []
        with self._fallback_lock:
            out += [f"fallback, {kind}: {reason}" for kind, reason in self.fallbacks.items()]
        return out

    @property
    def device_decode(self) -> bool:
        """Whether JPEG uploads are decoded and transformed on `device` (`prepare_many`)."""
        return self.device_transform is not None

    def decode(self, image: ImageInput) -> Image.Image:
        """Decode no larger than the transform needs; `ImageError` for what cannot be used or resized."""
        img = decode_image(image, min_side=self.resize_side)
        check_transformable(img.size, self.weights.pretrained_cfg)
        return img

    def _prepare_cpu(self, image: ImageInput) -> torch.Tensor | Exception:
        """The PIL path for one upload: its network input, or the exception (`ImageError` for a bad upload)."""
        try:
            return self.transform(self.decode(image))
        except ImageError as e:
            return e
        except Exception as e:  # a bug or a failure nobody foresaw: this upload's own, logged with its traceback
            log.exception("preparing an upload failed unexpectedly")
            return e

    def prepare_many(self, images: Sequence[ImageInput]) -> list[torch.Tensor | Exception]:
        """Each upload's network input (C, H, W), or its exception: `ImageError` (its message is for the user)
        or, for a bug, any other (already logged). One bad upload never fails the others.

        With `device_decode`, the JPEGs among them are decoded in one `decode_jpeg` call on the device, after
        the header checks; the rest, and any JPEG the device decoder refuses, take the PIL path. Inputs are then
        on `device`, else on the CPU.
        """
        out: list[torch.Tensor | Exception | None] = [None] * len(images)
        jpegs: dict[int, JpegUpload] = {}
        for i, image in enumerate(images):
            if self.device_transform is not None:
                try:
                    head = read_jpeg_header(image)
                    if head is not None:
                        check_transformable(head.size, self.weights.pretrained_cfg)
                        jpegs[i] = head
                        continue
                except ImageError as e:
                    out[i] = e
                    continue
                except Exception as e:  # a bug or a file nobody foresaw: the PIL path judges this upload
                    self.fallback("JPEG header check failed, CPU decoder used", f"{type(e).__name__}: {e}")
            out[i] = self._prepare_cpu(image)
        for chunk in _pixel_chunks(jpegs):
            decoded = decode_jpegs([jpegs[i].data for i in chunk], self.device_transform.device)
            for k, i in enumerate(chunk):
                img, decoded[k] = decoded[k], None  # full-size images are large: each is dropped once used
                if not isinstance(img, Exception):
                    try:
                        out[i] = self.device_transform(orient(img, jpegs[i].orientation))
                        continue
                    except Exception as e:  # out of device memory, say: the CPU path still works
                        img = e
                out[i] = self._prepare_cpu(images[i])
                if isinstance(out[i], torch.Tensor):  # the CPU decoder took what the device refused: a fallback
                    where = "GPU" if self.device.type == "cuda" else "device"
                    self.fallback(f"JPEG decode on the CPU for uploads the {where} decoder refused",
                                  f"{type(img).__name__}: {' '.join(str(img).split())[:200]}")
        if self.device_transform is not None:
            out = [x.to(self.device) if isinstance(x, torch.Tensor) else x for x in out]
        return out  # type: ignore[return-value]  # every slot is filled

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decode (raising `ImageError` for what cannot be used) and transform into one batch."""
        inputs = self.prepare_many(images)
        for x in inputs:
            if isinstance(x, Exception):
                raise x
        return torch.stack(inputs)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The eager forward pass, under autocast (its cast cache off: CUDA-graph capture forbids it, and a
        single forward reuses no cast)."""
        bench = graphs.cudnn_benchmark() if self.device.type == "cuda" else contextlib.nullcontext()
        with bench, torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                                   cache_enabled=False):
            return self.model(batch)

    def use_cuda_graphs(self, capture: graphs.Capture | None = None, buckets: Sequence[int] | None = None) -> bool:
        """Capture the forward pass for each batch-size bucket (warm-up included); True when graphs are on.

        Off (False) where `graphs.graphs_off_reason` says so; a failed capture logs one line and stays eager.
        `capture` replaces `graphs.capture_cuda_graph` and stands for a GPU: tests run the bucketing, checks
        and fallback on the CPU with it (the environment switches still apply).
        """
        reason = graphs.graphs_off_reason("cuda" if capture is not None else self.device)
        if self.model is self.weights.model:
            reason = "the unfused model is the one explanations hook: it stays eager"
        if reason is not None:
            if self.device.type == "cuda":  # on CUDA this is what runs: say it (off CUDA graphs cannot run at all)
                self.fallback("CUDA graphs off", reason)
            return False
        sample = tuple(eval_config(self.weights.pretrained_cfg)["input_size"])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.graphed, failure = graphs.bucketed(self._forward, sample, self.device, fmt, buckets or graphs.BUCKETS,
                                                capture or graphs.capture_cuda_graph, name=self.name)
        if failure:
            with self._fallback_lock:  # `bucketed` logged it once already
                self.fallbacks["CUDA graphs off, running eagerly"] = failure
        return self.graphed is not None

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw class scores for a preprocessed batch, fp32 on the CPU."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = self.graphed(batch, self._forward) if self.graphed is not None else self._forward(batch)
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
