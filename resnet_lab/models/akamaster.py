"""The published CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 in our `resnet20` ... `resnet110`.

Their checkpoints are pickles of a DataParallel model; they are read with `torch.load(weights_only=True)` only
(`checkpoints.read_plain`), their keys mapped onto ours, and downloaded once into a cache (atomically, after a
bounded probe, so an offline machine gets one clear message within seconds).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .checkpoints import LoadedWeights, WeightsUnavailable, first_line, load_into, read_plain, shown_path
from .hub import tcp_reachable
from .resnet import REGISTRY, build

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
        raise WeightsUnavailable(f"{failed}: {first_line(e)}. {alternative}") from e
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
    obj = read_plain(path)
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
