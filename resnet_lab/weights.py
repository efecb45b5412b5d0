"""Weights for our ResNets: timm tags on the Hugging Face Hub, local files, our own checkpoints, and the
published CIFAR-10 nets of akamaster/pytorch_resnet_cifar10 (`load_akamaster`).

Nothing here unpickles arbitrary objects: `.safetensors` is preferred, and
`.pth`/`.bin`/`.th` files go through `torch.load(weights_only=True)`. When the hub
cannot be reached, refuses, drops the connection or stalls, we say so within
seconds (naming the tag and the local-file alternative), instead of letting
huggingface_hub retry for minutes. Messages reach the UI, so they never show
an absolute path of the server (`shown_path`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .paths import PROJECT_ROOT
from .resnet import REGISTRY, ResNet, build

HUB_PROBE_TIMEOUT_S = 2.0  # TCP connect to the hub (DNS included)
HUB_METADATA_TIMEOUT_S = 5.0  # the hub's answer to the HEAD for a file; huggingface_hub alone would retry for minutes
DEFAULT_TAGS = {  # cross-entropy-trained weights, so the probabilities are calibrated
    "resnet18": "resnet18.tv_in1k",
    "resnet34": "resnet34.tv_in1k",
    "resnet50": "resnet50.tv2_in1k",
    "resnet101": "resnet101.tv2_in1k",
    "resnet152": "resnet152.tv2_in1k",
}
LOCAL_ALTERNATIVE = (
    "Use a local file instead: save the weights as .safetensors and pass the path "
    "(RESNET_LAB_WEIGHTS=path, --weights path, or load_checkpoint(path, arch=...))."
)


def shown_path(path: str | os.PathLike) -> str:
    """How a file is named to users: relative to the project if inside it, else its name; never a server path."""
    path = Path(path)
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except (ValueError, OSError):
        return path.name


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"`/:]+/)+[^\s'\"`/:,;)]+")


def scrub_paths(text: str) -> str:
    """Every absolute path in `text` (ours, or quoted in a library's error) replaced by `shown_path`; URLs kept."""
    return _ABSOLUTE_PATH.sub(lambda m: shown_path(m.group(0)), text)


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had (hub out of reach, missing file, wrong shapes).

    Its message is shown in the UI, so absolute paths in it are replaced by `shown_path` on the way in.
    """

    def __init__(self, message: str) -> None:
        super().__init__(scrub_paths(message))


@dataclass
class LoadedWeights:
    """A model with its weights and where they came from."""

    model: ResNet
    source: str  # "hub:resnet50.tv2_in1k", "file:assets/x.safetensors" (`shown_path`: safe to show), "random"
    pretrained_cfg: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file read, in full (for the library; the UI shows `source`)

    def __post_init__(self) -> None:
        self.model.pretrained_cfg = self.pretrained_cfg  # as timm models carry it: explain.py reads mean/std

    @property
    def is_random(self) -> bool:
        return self.source == "random"


# ----------------------------------------------------------------------------- local files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from `.pth`/`.bin` without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file must not escape as a crash
            raise WeightsUnavailable(f"{path.name} is not a readable .safetensors file ({_first_line(e)})") from e
    obj = _load_plain(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"{path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_plain(path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors, containers and numbers only; a pickle that carries code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, never execute
        raise WeightsUnavailable(
            f"refusing to load {path.name}: it is not a plain tensor checkpoint ({_first_line(e, 200)}). "
            "Convert it to .safetensors."
        ) from e


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with an error that names the file and the mismatch."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailable(f"{what} does not fit this model: {str(e)[:500]}") from e


def meta_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(model: ResNet, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write `<path>.safetensors` and a `<path>.json` beside it (arch, classes, mean/std, ...)."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600: a shipped checkpoint must be readable by other users
    meta_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> LoadedWeights:
    """Load a local weights file into our model.

    With a JSON beside it (as `save_checkpoint` writes), the arch, class count,
    class names and data config come from there; otherwise `arch` must be given
    and the ImageNet defaults apply.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    if meta_path(path).is_file():
        meta = json.loads(meta_path(path).read_text())
    arch = arch or meta.get("arch")
    if arch is None:
        raise WeightsUnavailable(f"{path.name}: no arch given and no {meta_path(path).name} beside it")
    state = read_state_dict(path)
    if "fc.weight" not in state:
        raise WeightsUnavailable(f"{path.name} has no classifier head (no fc.weight): it cannot classify")
    model = build(arch, num_classes=meta.get("num_classes") or state["fc.weight"].shape[0], seed=0)
    load_into(model, state, path.name)
    cfg = dict(model.pretrained_cfg)
    cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items() if k in cfg})
    return LoadedWeights(model.eval(), f"file:{shown_path(path)}", cfg, meta, path=path)


# ----------------------------------------------------------------------------- the hub


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can we open a TCP connection to the configured hub (`HF_ENDPOINT`) within `timeout` seconds, DNS included?"""
    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    return tcp_reachable(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80), timeout)


def tcp_reachable(host: str, port: int, timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can we open a TCP connection to `host:port` within `timeout` seconds, DNS included? (ok, reason)"""
    result: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append("ok")
        except OSError as e:
            result.append(f"{host}:{port} unreachable ({e.__class__.__name__}: {e})")

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores timeouts; bound it here
    t.start()
    t.join(timeout)
    if not result:
        return False, f"no answer from {host}:{port} within {timeout:.0f} s"
    return result[0] == "ok", result[0]


def resolve_tag(tag: str) -> tuple[str, Any]:
    """`resnet50.tv2_in1k` -> ("resnet50", timm's PretrainedCfg); a bare arch gets its default tag.

    Tags without a classifier head (`num_classes` 0, e.g. `resnet50.bamboo`: a feature extractor) are refused:
    this lab classifies, and such weights would load into a net whose outputs are not classes.
    """
    import timm

    tag = DEFAULT_TAGS.get(tag, tag)
    arch = tag.split(".")[0]
    if arch not in REGISTRY:
        raise WeightsUnavailable(f"{tag!r}: unknown arch {arch!r}")
    try:
        cfg = timm.models.get_pretrained_cfg(tag)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsUnavailable(f"timm has no hub weights called {tag!r}; see list_tags({arch!r})")
    if not cfg.num_classes:
        raise WeightsUnavailable(
            f"the weights {tag!r} have no classifier head (timm lists them with num_classes 0: a feature extractor), "
            f"so they cannot classify; choose others, e.g. {DEFAULT_TAGS.get(arch, arch)!r} (all: list_tags({arch!r}))"
        )
    return arch, cfg


def is_headless(tag: str) -> bool:
    """Whether timm's weights `tag` come without a classifier head (`num_classes` 0); False for unknown tags."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(tag)
    except RuntimeError:
        return False
    return cfg is not None and not cfg.num_classes


@functools.cache
def list_tags(arch: str) -> list[str]:
    """Every pretrained tag timm offers for `arch` that can classify (headless ones left out; no network needed)."""
    import timm

    return [t for t in timm.list_pretrained(f"{arch}.*") if t.split(".")[0] == arch and not is_headless(t)]


def _hub_failure(e: BaseException, filename: str) -> str:
    """What went wrong with the hub, in words: a refusal (with its HTTP status) or a broken connection."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 404):
            return f"the hub has no {filename} for it (HTTP {status})"
        return f"the hub refused (HTTP {status})"
    return f"the connection failed or dropped ({_first_line(e)})"


def hub_file(repo_id: str, filename: str = "model.safetensors", what: str = "") -> str:
    """Path of a hub file: from the local cache if there, else downloaded from the configured hub (`HF_ENDPOINT`).

    A TCP probe and a metadata request without retries come first, each bounded: huggingface_hub on its own
    retries a hub that accepts connections but does not answer for minutes. Every failure becomes one
    `WeightsUnavailable` naming `what` and the local-file alternative.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:
        return hf_hub_download(repo_id, filename, local_files_only=True)
    except Exception:
        pass
    what = what or repo_id
    host = urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT
    failed = f"cannot download {what} from the Hugging Face Hub ({host})"
    ok, why = hub_reachable()
    if not ok:
        raise WeightsUnavailable(f"{failed}: {why}. {LOCAL_ALTERNATIVE}")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=HUB_METADATA_TIMEOUT_S)
        return hf_hub_download(repo_id, filename, etag_timeout=HUB_METADATA_TIMEOUT_S)
    except Exception as e:
        raise WeightsUnavailable(f"{failed}: {_hub_failure(e, filename)}. {LOCAL_ALTERNATIVE}") from e


def load_pretrained(tag: str) -> LoadedWeights:
    """Our model with timm's weights for `tag` and timm's `pretrained_cfg` (mean, std, crop, ...)."""
    arch, cfg = resolve_tag(tag)
    tag = f"{arch}.{cfg.tag}" if cfg.tag else arch
    path = hub_file(cfg.hf_hub_id, what=f"the weights {tag!r}")
    model = build(arch, num_classes=cfg.num_classes, seed=0)  # overwritten by the weights: no global draw
    load_into(model, read_state_dict(path), f"hub weights {tag!r}")
    return LoadedWeights(model.eval(), f"hub:{tag}", dict(cfg.to_dict()), path=Path(path))


# ----------------------------------------------------------------------------- akamaster's CIFAR-10 nets

# The published checkpoints of akamaster/pytorch_resnet_cifar10 (its README: 91.73 % for ResNet-20, 93.39 % for
# ResNet-56 on CIFAR-10), the paper's option-A nets: the same layout as our `resnet20` ... `resnet110`.
AKAMASTER_PREFIX = "akamaster:"
AKAMASTER_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
    "resnet110": "resnet110-1d1ed7c2.th",
    "resnet1202": "resnet1202-f3b1deed.th",
}
AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{file}"
DOWNLOAD_PROBE_TIMEOUT_S = 2.0  # TCP connect to the download host (DNS included)
DOWNLOAD_TIMEOUT_S = 30.0  # per socket read once connected: a stalled transfer ends, not hangs
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# What their evaluation fed the nets (trainer.py, val_loader): ToTensor() on the 32x32 image, no resize or crop,
# then Normalize with the *ImageNet* mean/std, not CIFAR's own; other statistics would shift every logit.
AKAMASTER_DATA_CFG: dict[str, Any] = {
    "input_size": (3, 32, 32),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


def weights_cache_dir() -> Path:
    """Where downloaded weight files are kept: $XDG_CACHE_HOME/resnet_lab/weights, else ~/.cache/resnet_lab/weights."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet_lab" / "weights"


def download_file(url: str, what: str, alternative: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file at `url`, from the cache if there, else downloaded into it (atomically: no half files are cached).

    A bounded TCP probe comes first, so an offline machine gets one `WeightsUnavailable` within seconds that names
    `what` and `alternative`, instead of a long wait or a traceback.
    """
    target = Path(cache_dir or weights_cache_dir()) / Path(urlparse(url).path).name
    if target.is_file():
        return target
    parts = urlparse(url)
    host = parts.hostname or ""
    failed = f"cannot download {what} from {host}"
    ok, why = tcp_reachable(host, parts.port or (443 if parts.scheme == "https" else 80), DOWNLOAD_PROBE_TIMEOUT_S)
    if not ok:
        raise WeightsUnavailable(f"{failed}: {why}. {alternative}")
    import shutil
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part-{os.getpid()}-{threading.get_ident()}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(part, target)
    except Exception as e:  # HTTPError, URLError, timeouts, a full disk: one message, never a traceback
        part.unlink(missing_ok=True)
        raise WeightsUnavailable(f"{failed}: {_first_line(e)}. {alternative}") from e
    return target


def _registered_akamaster_arch(arch: str, what: str) -> str:
    if arch not in REGISTRY or REGISTRY[arch].family != "cifar":
        raise WeightsUnavailable(
            f"{what} holds akamaster's {arch}, which has no network here; "
            f"the CIFAR nets that take these weights are {', '.join(a for a in AKAMASTER_FILES if a in REGISTRY)}"
        )
    return arch


def akamaster_state_dict(
    raw: dict[str, torch.Tensor], what: str, arch: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Their keys -> ours, and the arch they fit: (arch, state dict for `build(arch)`).

    Their checkpoints hold a `torch.nn.DataParallel` model (`module.` prefix) whose classifier is `linear`
    (ours: `fc`); a later upstream revision of their resnet.py names `conv1`/`linear` `compressible_conv1`/
    `compressible_linear`. Option A has no shortcut parameters, so nothing else differs. The arch follows from the
    blocks per stage (n: ResNet-(6n+2)); BatchNorm counters that old PyTorch did not save start at 0.
    """
    state: dict[str, torch.Tensor] = {}
    theirs: dict[str, str] = {}  # ours -> theirs, for the message
    for key, value in raw.items():
        name = re.sub(r"(^|\.)compressible_", r"\1", key.removeprefix("module."))
        name = "fc." + name[len("linear."):] if name.startswith("linear.") else name
        if name in state:
            raise WeightsUnavailable(f"{what} holds {theirs[name]} and {key}, which are one weight in our net")
        state[name], theirs[name] = value, key
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))}
    if not blocks:
        raise WeightsUnavailable(
            f"{what} is not a checkpoint of akamaster's CIFAR ResNets (no layer1 blocks; keys: {_some(raw)})"
        )
    found = f"resnet{6 * len(blocks) + 2}"
    if arch is not None and arch != found:
        raise WeightsUnavailable(f"{what} holds a {found} ({len(blocks)} blocks per stage), not a {arch}")
    arch = _registered_akamaster_arch(found, what)
    num_classes = state["fc.weight"].shape[0] if isinstance(state.get("fc.weight"), torch.Tensor) else 10
    expected = build(arch, num_classes=num_classes, seed=0).state_dict()
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    unexpected = [theirs.get(k, k) for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if unexpected or missing:
        raise WeightsUnavailable(
            f"{what} does not fit akamaster's {arch}: unexpected keys {_some(unexpected)}; missing keys "
            f"{_some(missing)} (expected their names: module.conv1, module.bn1, module.layerN.i.conv1/bn1/conv2/bn2, "
            "module.linear)"
        )
    return arch, state


def _some(keys: Any, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit]) or "none"
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def akamaster_alternative(file: str) -> str:
    return (
        f"Use a local copy instead: fetch pretrained_models/{file} from github.com/akamaster/pytorch_resnet_cifar10 "
        f"where there is network, and pass its path (--weights path/{file} or load_akamaster(path))."
    )


def load_akamaster(
    spec: str | os.PathLike, arch: str | None = None, cache_dir: str | os.PathLike | None = None
) -> LoadedWeights:
    """One of akamaster's published CIFAR-10 ResNets in our `resnet20` ... `resnet110`.

    `spec`: a local `.th` file, a URL, or a name (`resnet56`, `akamaster:resnet56`, `resnet56-4bfd9763.th`)
    downloaded from their GitHub repo into `cache_dir` (default `weights_cache_dir()`). Read with
    `weights_only=True`; the arch is inferred from the blocks per stage when not given. The data config is what
    their evaluation used (`AKAMASTER_DATA_CFG`), the classes CIFAR-10's.
    """
    text = os.fspath(spec)
    name = text.removeprefix(AKAMASTER_PREFIX)
    by_file = {f: a for a, f in AKAMASTER_FILES.items()}
    if Path(text).is_file() or (os.path.sep in text and not urlparse(text).scheme):
        path = Path(text)
    elif name in AKAMASTER_FILES or name in by_file:
        file = AKAMASTER_FILES.get(name, name)
        listed = _registered_akamaster_arch(by_file[file], f"{AKAMASTER_PREFIX}{by_file[file]}")
        if arch is not None and arch != listed:
            raise WeightsUnavailable(f"{file} holds a {listed}, not a {arch}")
        url = AKAMASTER_URL.format(file=file)
        path = download_file(url, f"akamaster's {file}", akamaster_alternative(file), cache_dir)
    elif urlparse(text).scheme in ("http", "https"):
        file = Path(urlparse(text).path).name
        path = download_file(text, file, akamaster_alternative(file), cache_dir)
    else:
        raise WeightsUnavailable(
            f"{text!r} is neither a file nor one of akamaster's nets ({', '.join(AKAMASTER_FILES)})"
        )
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    obj = _load_plain(path)
    raw = obj["state_dict"] if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsUnavailable(f"{path.name} does not hold a state dict of tensors")
    arch, state = akamaster_state_dict(raw, path.name, arch)
    num_classes = state["fc.weight"].shape[0]
    model = build(arch, num_classes=num_classes, seed=0)  # overwritten by the weights: no global draw
    load_into(model, state, path.name)
    cfg = {**model.pretrained_cfg, **AKAMASTER_DATA_CFG}
    meta: dict[str, Any] = {"arch": arch, "num_classes": num_classes, "origin": "akamaster/pytorch_resnet_cifar10"}
    if num_classes == len(CIFAR10_CLASSES):
        meta["classes"] = list(CIFAR10_CLASSES)
    best = obj.get("best_prec1") if isinstance(obj, dict) else None
    if isinstance(best, (int, float)) or (isinstance(best, torch.Tensor) and best.numel() == 1):
        meta["best_prec1"] = float(best)  # their top-1 % on the CIFAR-10 test set, as saved
    return LoadedWeights(model.eval(), f"{AKAMASTER_PREFIX}{shown_path(path)}", cfg, meta, path=path)


def load_weights(spec: str | None, arch: str | None = None) -> LoadedWeights:
    """One entry point: a timm tag, a local file, akamaster's CIFAR-10 nets, or None for random weights (said loudly).

    `akamaster:resnet20` (or any `.th` file) goes to `load_akamaster`.
    """
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
