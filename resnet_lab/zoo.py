"""The models the app offers, loaded lazily, cached within a bound, always saying where the weights came from.

Weights are looked for, in order: a local file or folder (`RESNET_LAB_WEIGHTS`),
the Hugging Face Hub by timm tag (fails within seconds when out of reach), and
finally random weights, which are loudly flagged, never silent.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .inference import Classifier, resolve_device
from .resources import memory_limit
from .weights import DEFAULT_TAGS, LoadedWeights, WeightsUnavailable, is_headless, list_tags, load_weights

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHAPES_MODEL = "Shapes ResNet-20"
SHAPES_CHECKPOINT = ASSETS / "shapes_resnet20.safetensors"
IMAGENET_MODELS = {f"ResNet-{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)}
MODELS = [SHAPES_MODEL, *IMAGENET_MODELS]


def tags_for(model: str) -> list[str]:
    """Weight tags offered for a model, the cross-entropy-trained default first."""
    if model == SHAPES_MODEL:
        return ["shipped"]
    arch = IMAGENET_MODELS[model]
    default = DEFAULT_TAGS[arch]
    return [default, *(t for t in list_tags(arch) if t != default)]


def describe(model: str) -> tuple[list[str], list[str]]:
    """Stage names and class labels of a model, without loading its weights (for building the UI)."""
    from .data import imagenet_labels
    from .resnet import REGISTRY

    arch = "resnet20" if model == SHAPES_MODEL else IMAGENET_MODELS[model]
    stages = [f"layer{i + 1}" for i in range(len(REGISTRY[arch].layers))]
    if model != SHAPES_MODEL:
        return stages, list(imagenet_labels())
    meta = SHAPES_CHECKPOINT.with_suffix(".json")
    return stages, json.loads(meta.read_text())["classes"] if meta.is_file() else []


RUNTIME_BYTES = 3 * 2**29  # 1.5 GiB for Python, torch, timm, Gradio and the app before any ImageNet model
ZOO_SHARE = 0.5  # of the memory left: the other half is for requests' activations and Research jobs
ALLOCATOR_MARGIN = 1.2  # RSS grows ~17 % beyond the tensors' bytes (ResNet-152: +565 MB for 482 MB of tensors)


@functools.cache
def model_bytes(model: str) -> int:
    """What one cached entry costs: fp32 weights twice (unfused for explanations, BN-folded for predictions).

    Counted from the arch's state dict built on the meta device (no memory, no RNG), with `ALLOCATOR_MARGIN`.
    """
    import torch

    from .resnet import build

    arch = "resnet20" if model == SHAPES_MODEL else IMAGENET_MODELS[model]
    with torch.device("meta"):
        net = build(arch, seed=0)
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return int(2 * weights * ALLOCATOR_MARGIN)


def _default_max_models() -> int:
    """As many of the largest model as fit in `ZOO_SHARE` of the memory this process may use (the container's
    limit, not the host's RAM) after `RUNTIME_BYTES`: all six from ~8 GiB, two on a 4 GiB Space, at least one."""
    budget = ZOO_SHARE * (memory_limit() - RUNTIME_BYTES)
    worst = max(model_bytes(m) for m in MODELS)
    return max(1, min(len(MODELS), int(budget // worst)))


def _not_offered(model: str, tag: str, tags: list[str]) -> str:
    """Why `tag` is not offered for `model`, in words a user can act on."""
    if tag.startswith(f"{IMAGENET_MODELS.get(model)}.") and is_headless(tag):
        return (f"{model}: the weights {tag!r} have no classifier head (a feature extractor), so they cannot "
                f"classify; choose other weights, e.g. {tags[0]!r}")
    return f"{model} has no weights {tag!r}; choose one of {', '.join(tags)}"


@dataclass
class Entry:
    """A loaded model: the classifier for predictions, the unfused weights for explanations."""

    model: str
    tag: str
    weights: LoadedWeights
    classifier: Classifier
    warning: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)  # captum hooks the shared model: one at a time

    @property
    def status(self) -> str:
        src = self.weights.source
        where = {"hub": "Hugging Face Hub", "file": "local file"}.get(src.split(":")[0], "")
        text = f"**{self.model}** · weights: {where} `{src.split(':', 1)[-1]}` · device: `{self.classifier.device}`"
        if self.weights.is_random:
            text = (f"⚠️ **{self.model}: random weights, predictions and heatmaps are meaningless.** "
                    f"{self.warning} · device: `{self.classifier.device}`")
        return text


class ModelZoo:
    """Lazily loaded, LRU-bounded cache of `Entry`s, safe to call from Gradio's worker threads."""

    def __init__(self, weights_path: str | None = None, device: str | None = None, max_models: int | None = None):
        self.weights_path = weights_path if weights_path is not None else os.environ.get("RESNET_LAB_WEIGHTS")
        self.device = resolve_device(device)
        self.max_models = max_models or _default_max_models()
        self._cache: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _cache and _loading; never held while a model loads
        self._loading: dict[tuple[str, str], threading.Lock] = {}  # one per key being loaded

    def local_file(self, arch: str, tag: str) -> Path | None:
        """The local `.safetensors` for this arch/tag: an exact `<tag>.safetensors`, else one named for the arch."""
        if not self.weights_path:
            return None
        root = Path(self.weights_path)
        files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
        for f in files:
            if f.name == f"{tag}.safetensors":
                return f
        for f in files:
            if f.stem == arch or f.stem.startswith((f"{arch}.", f"{arch}_", f"{arch}-")):
                return f
        return None

    def _load(self, model: str, tag: str) -> tuple[LoadedWeights, str]:
        """Real weights if they can be had; else random ones and the reason, for the status line."""
        if model == SHAPES_MODEL:
            source, arch = str(SHAPES_CHECKPOINT), "resnet20"
        else:
            arch = IMAGENET_MODELS[model]
            local = self.local_file(arch, tag)
            source = str(local) if local else tag
        try:
            return load_weights(source, arch), ""
        except WeightsUnavailable as e:
            return load_weights(None, arch), str(e)

    def get(self, model: str, tag: str | None = None) -> Entry:
        """The entry for `model` with weights `tag` (default: the calibrated default), loading it if needed."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        tags = tags_for(model)
        tag = tag or tags[0]
        if tag not in tags:
            raise ValueError(_not_offered(model, tag, tags))
        key = (model, tag)
        with self._lock:
            if (entry := self._cached(key)) is not None:
                return entry
            key_lock = self._loading.setdefault(key, threading.Lock())
        # A slow load (a hub download) holds only its own key: cached models and other keys are served meanwhile,
        # and concurrent first requests for this key wait for the one load instead of repeating it.
        with key_lock:
            with self._lock:
                if (entry := self._cached(key)) is not None:
                    return entry
                self._evict(self.max_models - 1)  # make room first: peak memory stays at max_models
            weights, warning = self._load(model, tag)
            weights.model.to(self.device)
            entry = Entry(model, tag, weights, Classifier(weights, self.device, fuse=True), warning)
            with self._lock:
                self._cache[key] = entry
                self._loading.pop(key, None)
                self._evict(self.max_models)
            return entry

    def _cached(self, key: tuple[str, str]) -> Entry | None:
        """The cached entry, marked most recently used (call with `_lock` held)."""
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
        return entry

    def _evict(self, keep: int) -> None:
        """Drop least recently used entries down to `keep` (call with `_lock` held)."""
        while len(self._cache) > max(keep, 0):
            self._cache.popitem(last=False)

    def imagenet_weights_available(self) -> bool:
        """Whether real ImageNet weights can be had now: a local file, or the hub answers."""
        from .weights import hub_reachable

        if any(self.local_file(a, DEFAULT_TAGS[a]) for a in IMAGENET_MODELS.values()):
            return True
        return hub_reachable()[0]

    def default_model(self) -> str:
        """ResNet-50 when ImageNet weights can be had, else the shipped Shapes model (real, not random)."""
        return "ResNet-50" if self.imagenet_weights_available() else SHAPES_MODEL
