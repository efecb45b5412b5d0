"""The models the app offers, loaded lazily, cached within a bound, always saying where the weights came from.

Weights are looked for, in order: a local file or folder (`RESNET_LAB_WEIGHTS`),
the Hugging Face Hub by timm tag (fails within seconds when out of reach), and
finally random weights, which are loudly flagged, never silent.

Checkpoints written by `train` (`weights.save_checkpoint`: a `.safetensors` with a JSON
beside it naming its arch and classes) in that folder become models of their own,
listed after the built-in ones under their file's name, with their own classes
(found and vetted by `user_models`; this module holds them in memory).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.images import imagenet_labels
from ..models.resnet import REGISTRY, build
from ..models.weights import (
    DEFAULT_TAGS,
    HF_HUB_PREFIX,
    LoadedWeights,
    WeightsUnavailable,
    hub_reachable,
    is_headless,
    list_tags,
    load_checkpoint,
    load_weights,
)
from ..paths import ASSETS
from ..runtime.devices import resolve_device
from ..runtime.memory import ALLOCATOR_MARGIN, ZOO_SHARE, available_memory
from ..runtime.resources import memory_limit
from .inference import Classifier
from .user_models import UserModel, discover_user_models, user_model

SHAPES_MODEL = "Shapes ResNet-20"
SHAPES_CHECKPOINT = ASSETS / "shapes_resnet20.safetensors"
IMAGENET_MODELS = {f"ResNet-{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)}
MODELS = [SHAPES_MODEL, *IMAGENET_MODELS]
USER_TAG = "local"  # the one weight tag of a user checkpoint: its file is its weights
MAX_PRIVATE = 256  # sessions' own nets remembered at once (names and paths only; weights load on demand)


def tags_for(model: str) -> list[str]:
    """Weight tags offered for a model, the cross-entropy-trained default first."""
    if model == SHAPES_MODEL:
        return ["shipped"]
    arch = IMAGENET_MODELS[model]
    default = DEFAULT_TAGS[arch]
    return [default, *(t for t in list_tags(arch) if t != default)]


def describe(model: str) -> tuple[list[str], list[str]]:
    """Stage names and class labels of a model, without loading its weights (for building the UI)."""
    arch = "resnet20" if model == SHAPES_MODEL else IMAGENET_MODELS[model]
    stages = list(REGISTRY[arch].stage_names)
    if model != SHAPES_MODEL:
        return stages, list(imagenet_labels())
    meta = SHAPES_CHECKPOINT.with_suffix(".json")
    return stages, json.loads(meta.read_text())["classes"] if meta.is_file() else []


RUNTIME_BYTES = 3 * 2**29  # 1.5 GiB for Python, torch, timm, Gradio and the app before any ImageNet model


def model_bytes(model: str) -> int:
    """What one cached entry of a built-in model costs (see `arch_bytes`)."""
    return arch_bytes("resnet20" if model == SHAPES_MODEL else IMAGENET_MODELS[model])


@functools.cache
def arch_bytes(arch: str, num_classes: int | None = None) -> int:
    """What one cached entry costs: fp32 weights twice (unfused for explanations, BN-folded for predictions).

    Counted from the arch's state dict built on the meta device (no memory, no RNG), with `ALLOCATOR_MARGIN`.
    """
    with torch.device("meta"):
        net = build(arch, seed=0) if num_classes is None else build(arch, num_classes=num_classes, seed=0)
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return int(2 * weights * ALLOCATOR_MARGIN)


def zoo_budget(device: str | torch.device = "cpu") -> int:
    """Bytes the cached models may hold on the device they live on: `ZOO_SHARE` of the GPU memory free now on
    CUDA (the card, not the container's RAM, is what runs out), else of the memory this process may use (the
    container's limit, not the host's RAM) after `RUNTIME_BYTES`."""
    if torch.device(device).type == "cuda":
        return int(ZOO_SHARE * available_memory(device))
    return int(ZOO_SHARE * (memory_limit() - RUNTIME_BYTES))


def _default_max_models(sizes: list[int] | None = None, device: str | torch.device = "cpu") -> int:
    """As many of the largest model as fit in `zoo_budget(device)`: on the CPU all six from ~8 GiB of container,
    two on a 4 GiB Space; at least one. They count the model being loaded: one fewer stay cached between loads, so
    a load needs no eviction before it succeeds. `sizes`: every offered model's `model_bytes` (default: the
    built-in ones)."""
    sizes = sizes or [model_bytes(m) for m in MODELS]
    return max(1, min(len(sizes), int(zoo_budget(device) // max(sizes))))


def _not_offered(model: str, tag: str, tags: list[str]) -> str:
    """Why `tag` is not offered for `model`, in words a user can act on."""
    if tag.startswith(f"{IMAGENET_MODELS.get(model)}.") and is_headless(tag):
        return (f"{model}: the weights {tag!r} have no classifier head (a feature extractor), so they cannot "
                f"classify; choose other weights, e.g. {tags[0]!r}")
    return (f"{model} has no weights {tag!r}; choose one of {', '.join(tags)} (or type hf-hub:USER/NAME for an "
            "export in timm's format)")


@dataclass
class Entry:
    """A loaded model: the classifier for predictions, the unfused weights for explanations."""

    model: str
    tag: str
    weights: LoadedWeights
    classifier: Classifier
    warning: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)  # captum hooks the shared model: one at a time


@dataclass
class _Pending:
    """A key being loaded: its lock (one load per key), how many requests wait for it (to forget it after) and
    the reason its load failed, which the requests that waited for it share instead of each loading in turn."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiters: int = 0
    error: Exception | None = None


class ModelZoo:
    """Lazily loaded, LRU-bounded cache of `Entry`s, safe to call from Gradio's worker threads.

    `max_models` bounds the models in memory at any moment, those being loaded included (at least one cached and
    one loading): concurrent first loads wait for room instead of piling up."""

    def __init__(self, weights_path: str | None = None, device: str | None = None, max_models: int | None = None):
        self.weights_path = weights_path if weights_path is not None else os.environ.get("RESNET_LAB_WEIGHTS")
        self.device = resolve_device(device)
        self.user_models = discover_user_models(self.weights_path)
        # Nets one session made (the Playground's): found by their names, which carry an unguessable token, and
        # never listed in `models`, so no other session is offered them.
        self.private_models: dict[str, UserModel] = {}
        self.max_models = max_models or _default_max_models([self.model_bytes(m) for m in self.models], self.device)
        self._cache: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _cache, _loading and _in_flight; never held while a model loads
        self._room = threading.Condition(self._lock)  # notified when a load ends: room for a waiting load
        self._loading: dict[tuple[str, str], _Pending] = {}  # the keys requested and not cached yet
        self._in_flight = 0  # loads running now: their models are in memory too

    @property
    def models(self) -> list[str]:
        """Every model offered: the built-in ones, then the user's checkpoints."""
        return [*MODELS, *self.user_models]

    def _user(self, model: str) -> UserModel | None:
        return self.user_models.get(model) or self.private_models.get(model)

    def add_private(self, path: Path) -> UserModel:
        """Offer the checkpoint at `path` (with its JSON) to the session that knows its name only; `path`'s stem
        must carry a token nobody can guess. At most `MAX_PRIVATE` are kept, the oldest forgotten first."""
        user = user_model(path)
        if user is None:
            raise ValueError(f"{path.name} has no JSON with its arch and classes")
        with self._lock:
            self.private_models[user.name] = user
            while len(self.private_models) > MAX_PRIVATE:
                self.private_models.pop(next(iter(self.private_models)))
        return user

    def tags_for(self, model: str) -> list[str]:
        """`tags_for`, also for the user's checkpoints (one tag, "local")."""
        return [USER_TAG] if self._user(model) else tags_for(model)

    def describe(self, model: str) -> tuple[list[str], list[str]]:
        """`describe`, also for the user's checkpoints: stages from their arch, classes from their JSON."""
        user = self._user(model)
        if user is None:
            return describe(model)
        return list(REGISTRY[user.arch].stage_names), list(user.classes)

    def model_bytes(self, model: str) -> int:
        """`model_bytes`, also for the user's checkpoints (their arch with their class count)."""
        user = self._user(model)
        return arch_bytes(user.arch, len(user.classes)) if user else model_bytes(model)

    def local_file(self, arch: str, tag: str) -> Path | None:
        """The local `.safetensors` for this arch/tag: an exact `<tag>.safetensors`, else one named for the arch.
        The user's own checkpoints (their own classes) are never taken for ImageNet weights."""
        if not self.weights_path:
            return None
        root = Path(self.weights_path)
        files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
        mine = {u.path for u in self.user_models.values()}
        files = [f for f in files if f not in mine]
        for f in files:
            if f.name == f"{tag}.safetensors":
                return f
        for f in files:
            if f.stem == arch or f.stem.startswith((f"{arch}.", f"{arch}_", f"{arch}-")):
                return f
        return None

    def _load(self, model: str, tag: str) -> tuple[LoadedWeights, str]:
        """Real weights if they can be had; else random ones and the reason, for the status line.
        A user checkpoint is its file or nothing: random weights for its classes would mean nothing."""
        if (user := self._user(model)) is not None:
            if not user.path.is_file():  # a session's net outlived its files (outputs are kept an hour)
                raise ValueError(f"{model}: its checkpoint is gone (a Playground run's nets are kept an hour); "
                                 "train it again")
            weights = load_checkpoint(user.path, user.arch)
            weights.source = f"file:{user.path.name}"  # its name only: the folder is the server's business
            return weights, ""
        if model == SHAPES_MODEL:
            source, arch = str(SHAPES_CHECKPOINT), "resnet20"
        elif tag.startswith(HF_HUB_PREFIX):  # an export of someone's (typed): its weights or its reason, never random
            try:
                return load_weights(tag, IMAGENET_MODELS[model]), ""
            except WeightsUnavailable as e:
                raise ValueError(str(e)) from e
        else:
            arch = IMAGENET_MODELS[model]
            local = self.local_file(arch, tag)
            source = str(local) if local else tag
        try:
            return load_weights(source, arch), ""
        except WeightsUnavailable as e:
            return load_weights(None, arch), str(e)

    def get(self, model: str, tag: str | None = None) -> Entry:
        """The entry for `model` with weights `tag` (default: the calibrated default), loading it if needed.

        A load that fails (a mistyped `hf-hub:` tag, a pruned Playground net) raises its reason as one sentence
        (ValueError or `WeightsUnavailable`, which the UI shows), to every request that waited for that load, and
        leaves the cache as it was: nothing is evicted before a load has succeeded."""
        if model not in self.models and model not in self.private_models:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(self.models)}")
        tags = self.tags_for(model)
        tag = tag or tags[0]
        if tag not in tags and not (tag.startswith(HF_HUB_PREFIX) and model in IMAGENET_MODELS):
            raise ValueError(_not_offered(model, tag, tags))
        key = (model, tag)
        with self._lock:
            if (entry := self._cached(key)) is not None:
                return entry
            pending = self._loading.setdefault(key, _Pending())
            pending.waiters += 1
        try:
            # A slow load (a hub download) holds only its own key: cached models and other keys are served
            # meanwhile, and concurrent first requests for this key wait for the one load instead of repeating it.
            with pending.lock:
                if pending.error is not None:  # the load this request waited for failed: its reason, once loaded
                    raise pending.error
                with self._room:
                    if (entry := self._cached(key)) is not None:
                        return entry
                    # Models in memory, loads included, stay within max_models: a load waits for room that
                    # another load's eviction makes, and evicts nothing itself before it has succeeded.
                    self._room.wait_for(lambda: len(self._cache) + self._in_flight < self._limit)
                    self._in_flight += 1
                try:
                    entry = self._build(model, tag)
                except BaseException as e:
                    with self._room:
                        self._in_flight -= 1
                        self._room.notify_all()
                    if isinstance(e, Exception):
                        pending.error = e
                    raise
                with self._room:
                    self._in_flight -= 1
                    self._cache[key] = entry
                    evicted = self._evict(self._keep)  # only now: the least recently used make room for the next
                    self._room.notify_all()
                self._release(evicted)
                return entry
        finally:
            with self._lock:
                pending.waiters -= 1
                if not pending.waiters:  # the last request for this key: a failed key is not remembered
                    self._loading.pop(key, None)
                    pending.error = None  # nor its error, whose traceback holds this frame (and a half-built model)

    @property
    def _limit(self) -> int:
        """Models in memory at once, loads in flight included: `max_models`, but at least one cached and one
        loading (a failed load must not cost the one cached model)."""
        return max(self.max_models, 2)

    @property
    def _keep(self) -> int:
        """Models kept cached after a load: room is left for the next load, which evicts only once it succeeds."""
        return self._limit - 1

    def _build(self, model: str, tag: str) -> Entry:
        """Load `model`'s weights and make its entry (no lock held). A file that vanishes or cannot be read while
        loading is said as one sentence, like the other reasons a load fails."""
        try:
            weights, warning = self._load(model, tag)
        except OSError as e:
            raise ValueError(f"{model}: its weights could not be read ({type(e).__name__}); try again or choose "
                             "another model") from e
        weights.model.to(self.device)
        classifier = Classifier(weights, self.device, fuse=True)
        classifier.use_cuda_graphs()  # on CUDA: captured and warmed up now, not on a user's first request
        return Entry(model, tag, weights, classifier, warning)

    def _cached(self, key: tuple[str, str]) -> Entry | None:
        """The cached entry, marked most recently used (call with `_lock` held)."""
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
        return entry

    def _evict(self, keep: int) -> int:
        """Drop least recently used entries down to `keep` (call with `_lock` held); how many were dropped.

        Nothing else holds an entry (its classifier and graphs form no reference cycle), so its memory is freed
        here, unless a request still running holds it, which then frees it when done."""
        dropped = 0
        while len(self._cache) > max(keep, 0):
            self._cache.popitem(last=False)
            dropped += 1
        return dropped

    def _release(self, evicted: int) -> None:
        """After an eviction on CUDA, hand the cached blocks (weights, graph pools) back to the driver, so the
        next model and other processes on the card can have them."""
        if evicted and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def imagenet_weights_available(self) -> bool:
        """Whether real ImageNet weights can be had now: a local file, or the hub answers."""
        if any(self.local_file(a, DEFAULT_TAGS[a]) for a in IMAGENET_MODELS.values()):
            return True
        return hub_reachable()[0]

    def default_model(self) -> str:
        """ResNet-50 when ImageNet weights can be had, else the shipped Shapes model (real, not random)."""
        return "ResNet-50" if self.imagenet_weights_available() else SHAPES_MODEL
