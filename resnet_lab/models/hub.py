"""timm's weights on the Hugging Face Hub, by tag (`resnet50.tv2_in1k`), with timm's `pretrained_cfg`.

When the hub cannot be reached, refuses, drops the connection or stalls, we say so within seconds (naming the tag
and the local-file alternative), instead of letting huggingface_hub retry for minutes: a bounded TCP probe
(`tcp_reachable`, DNS included) and a metadata request without retries come before any download.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .checkpoints import LoadedWeights, WeightsUnavailable, first_line, load_into, read_state_dict
from .resnet import REGISTRY, build

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
    return f"the connection failed or dropped ({first_line(e)})"


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


HF_HUB_PREFIX = "hf-hub:"  # timm's prefix for a Hub repo holding its format (what `export` writes)


def load_hf_hub(tag: str, arch: str | None = None) -> LoadedWeights:
    """Our model with the weights of a Hub repo in timm's format (`hf-hub:USER/NAME`: `config.json` naming the
    architecture, classes and preprocessing, `model.safetensors`), with the repo's own class names. Refused,
    with what to do, when the repo holds an arch we do not build or another arch than `arch`."""
    import json

    repo = tag.removeprefix(HF_HUB_PREFIX)
    try:
        config = json.loads(Path(hub_file(repo, "config.json", what=tag)).read_text())
    except ValueError as e:
        raise WeightsUnavailable(f"{tag}: its config.json is not JSON ({first_line(e)})") from e
    found, n = config.get("architecture"), config.get("num_classes")
    if found not in REGISTRY or not isinstance(n, int) or n < 1:
        raise WeightsUnavailable(f"{tag}: architecture {found!r} with {n!r} classes is not a net of ours")
    if arch is not None and found != arch:
        raise WeightsUnavailable(f"{tag} holds a {found}, not a {arch}: choose the {found} model for it")
    cfg = dict(config.get("pretrained_cfg") or {})
    labels = config.get("label_names") or cfg.get("label_names")
    path = hub_file(repo, "model.safetensors", what=tag)
    model = build(found, num_classes=n, seed=0)  # overwritten by the weights
    load_into(model, read_state_dict(path), f"hub weights {tag!r}")
    meta = {"arch": found, "classes": [str(c) for c in labels][:n] if labels else None}
    return LoadedWeights(model.eval(), f"hub:{repo}", cfg, meta=meta, path=Path(path))


def load_pretrained(tag: str) -> LoadedWeights:
    """Our model with timm's weights for `tag` and timm's `pretrained_cfg` (mean, std, crop, ...)."""
    arch, cfg = resolve_tag(tag)
    tag = f"{arch}.{cfg.tag}" if cfg.tag else arch
    path = hub_file(cfg.hf_hub_id, what=f"the weights {tag!r}")
    model = build(arch, num_classes=cfg.num_classes, seed=0)  # overwritten by the weights: no global draw
    load_into(model, read_state_dict(path), f"hub weights {tag!r}")
    return LoadedWeights(model.eval(), f"hub:{tag}", dict(cfg.to_dict()), path=Path(path))
