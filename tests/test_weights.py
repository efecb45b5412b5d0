"""Loading weights: local files (safetensors, weights_only .pth), refusing pickles, failing fast offline."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from resnet_lab import weights
from resnet_lab.weights import WeightsUnavailable


@pytest.fixture(scope="module")
def timm_r18():
    torch.manual_seed(0)
    m = timm.create_model("resnet18").eval()
    from resnet_lab.verify import randomize_bn

    randomize_bn(m)
    return m


def _same_outputs(ours: torch.nn.Module, ref: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return float((ours.eval()(x) - ref.eval()(x)).abs().max()) <= 1e-5


def test_safetensors_written_from_timm_loads_and_matches(tmp_path, timm_r18):
    path = tmp_path / "r18.safetensors"
    save_file(timm_r18.state_dict(), str(path))
    loaded = weights.load_weights(str(path), arch="resnet18")
    assert loaded.source == "file:r18.safetensors" and loaded.path == path and not loaded.is_random
    assert _same_outputs(loaded.model, timm_r18)


def test_pth_loads_with_weights_only(tmp_path, timm_r18):
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": timm_r18.state_dict()}, path)
    loaded = weights.load_checkpoint(path, arch="resnet18")
    assert _same_outputs(loaded.model, timm_r18)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/resnet_lab_pwned",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path, timm_r18):
    path = tmp_path / "evil.pth"
    sd = dict(timm_r18.state_dict())
    sd["payload"] = _Evil()
    with open(path, "wb") as f:
        pickle.dump(sd, f)
    if os.path.exists("/tmp/resnet_lab_pwned"):
        os.remove("/tmp/resnet_lab_pwned")
    with pytest.raises(WeightsUnavailable, match="refusing to load"):
        weights.load_checkpoint(path, arch="resnet18")
    assert not os.path.exists("/tmp/resnet_lab_pwned")


def test_wrong_arch_gives_a_clear_error(tmp_path, timm_r18):
    path = tmp_path / "r18.safetensors"
    save_file(timm_r18.state_dict(), str(path))
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        weights.load_checkpoint(path, arch="resnet34")
    with pytest.raises(WeightsUnavailable, match="not found"):
        weights.load_checkpoint(tmp_path / "missing.safetensors", arch="resnet18")


def test_messages_and_sources_never_show_a_server_path(tmp_path, timm_r18):
    """What reaches the UI (source, WeightsUnavailable) names files relative to the project, or by name only."""
    from resnet_lab.zoo import SHAPES_CHECKPOINT

    assert weights.load_checkpoint(SHAPES_CHECKPOINT).source == "file:assets/shapes_resnet20.safetensors"
    path = tmp_path / "r18.safetensors"
    save_file(timm_r18.state_dict(), str(path))
    errors = []
    for call in (lambda: weights.load_checkpoint(tmp_path / "missing.safetensors", arch="resnet18"),
                 lambda: weights.load_checkpoint(path, arch="resnet34")):
        with pytest.raises(WeightsUnavailable) as e:
            call()
        errors.append(str(e.value))
    assert "missing.safetensors" in errors[0] and "r18.safetensors" in errors[1]
    assert not any(str(tmp_path) in msg or "/tmp" in msg for msg in errors), errors
    # Paths quoted in a library's message are scrubbed too; URLs are left alone.
    msg = str(WeightsUnavailable(f"cannot read {tmp_path}/hf/blobs/abc: see http://127.0.0.1:8/timm/x/resolve/main/m"))
    assert msg == "cannot read abc: see http://127.0.0.1:8/timm/x/resolve/main/m"
    assert weights.scrub_paths(f"({SHAPES_CHECKPOINT})") == "(assets/shapes_resnet20.safetensors)"


def test_a_corrupt_or_headless_file_gives_a_clear_error(tmp_path, timm_r18):
    """A truncated .safetensors (SafetensorError) or one without `fc` is WeightsUnavailable, not a crash."""
    from safetensors.torch import save

    corrupt = tmp_path / "r18.safetensors"
    corrupt.write_bytes(save(timm_r18.state_dict())[:5000])
    with pytest.raises(WeightsUnavailable, match="not a readable .safetensors file"):
        weights.load_checkpoint(corrupt, arch="resnet18")
    headless = tmp_path / "features.safetensors"
    save_file({k: v for k, v in timm_r18.state_dict().items() if not k.startswith("fc.")}, str(headless))
    with pytest.raises(WeightsUnavailable, match="no classifier head"):
        weights.load_checkpoint(headless, arch="resnet18")


def test_headless_tags_are_not_offered_and_refused_clearly():
    """timm's tags with num_classes 0 (feature extractors, e.g. resnet50.bamboo) cannot classify."""
    import timm

    for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        every = [t for t in timm.list_pretrained(f"{arch}.*") if t.split(".")[0] == arch]
        headless = {t for t in every if timm.models.get_pretrained_cfg(t).num_classes == 0}
        assert weights.list_tags(arch) == [t for t in every if t not in headless]
        assert all(weights.is_headless(t) for t in headless)
    assert weights.is_headless("resnet50.bamboo") and "resnet50.bamboo" not in weights.list_tags("resnet50")
    assert not weights.is_headless("resnet50.tv2_in1k") and not weights.is_headless("resnet50.no_such_tag")
    with pytest.raises(WeightsUnavailable, match="no classifier head") as e:
        weights.load_pretrained("resnet50.bamboo")  # refused before any download
    assert "resnet50.bamboo" in str(e.value) and "resnet50.tv2_in1k" in str(e.value)


def test_checkpoint_round_trip_with_meta(tmp_path):
    from resnet_lab import build

    m = build("resnet20", num_classes=8)
    path = weights.save_checkpoint(m, tmp_path / "ck", {"arch": "resnet20", "num_classes": 8,
                                                        "classes": list("abcdefgh"), "mean": [0.5] * 3})
    loaded = weights.load_checkpoint(path)
    assert loaded.meta["classes"] == list("abcdefgh")
    assert loaded.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert loaded.model.pretrained_cfg is loaded.pretrained_cfg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), m.eval()(x))


@pytest.mark.parametrize("offline_env", [True, False])
def test_hub_unreachable_fails_fast_and_names_the_alternative(monkeypatch, offline_env):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no env hint, and a network that never answers (a hanging DNS lookup): the probe must give up
        from huggingface_hub import constants

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as read at import, when this suite set it

        def hang(*_args, **_kwargs):
            released.wait(30)
            raise OSError("gave up")

        monkeypatch.setattr(weights.socket, "create_connection", hang)
    released = threading.Event()
    t = time.perf_counter()
    try:
        with pytest.raises(WeightsUnavailable) as e:
            weights.load_pretrained("resnet50.tv2_in1k")
    finally:
        released.set()  # let the abandoned probe thread end now, not in some later test
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "resnet50.tv2_in1k" in msg and ".safetensors" in msg


def test_tags_come_from_timm_without_network():
    tags = weights.list_tags("resnet50")
    assert "resnet50.tv2_in1k" in tags and "resnet50.a1_in1k" in tags
    assert weights.resolve_tag("resnet18")[1].tag == "tv_in1k"
    with pytest.raises(WeightsUnavailable):
        weights.resolve_tag("resnet50.no_such_tag")


HUB_TAGS = {  # tag -> how the stand-in hub treats its repo (all real timm tags of resnet18/34)
    "resnet18.a1_in1k": "ok",  # tested at 288 px, crop 1.0, bicubic: far from the defaults, so its cfg shows
    "resnet18.a3_in1k": "missing",
    "resnet18.a2_in1k": "drop",
    "resnet18.gluon_in1k": "cut",
    "resnet34.a1_in1k": "stall",
}


def test_hub_download_against_a_local_hub(tmp_path, timm_r18):
    """huggingface_hub's real download path (HEAD, CDN redirect, GET, cache) against a stand-in hub on 127.0.0.1.

    The client runs in its own process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import, as a
    deployment does, and this suite imported it offline.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    import timm
    from hub_server import FakeHub
    from safetensors.torch import load_file, save

    served = {k: v.contiguous() for k, v in timm_r18.state_dict().items()}  # timm's key names, randomized BN
    data = save(served)
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    with FakeHub() as hub:
        for tag, behaviour in HUB_TAGS.items():
            hub.add(timm.models.get_pretrained_cfg(tag).hf_hub_id, "model.safetensors", data, behaviour)
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("hub_server.py")), "client",
                               str(tmp_path), *HUB_TAGS], env=env, capture_output=True, text=True, timeout=180)
        requests = list(hub.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    by_tag = {r["tag"]: r for r in rows if not r.get("again")}

    ok = by_tag["resnet18.a1_in1k"]
    assert "error" not in ok, ok
    assert ok["source"] == "hub:resnet18.a1_in1k" and ok["model_carries_cfg"]
    assert ok["pretrained_cfg"] == {"input_size": [3, 224, 224], "test_input_size": [3, 288, 288], "crop_pct": 0.95,
                                    "test_crop_pct": 1.0, "interpolation": "bicubic",
                                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ok["input_shape"] == [3, 288, 288]  # the eval transform follows the tag, not the 224 px default
    loaded = load_file(str(tmp_path / "resnet18.a1_in1k.safetensors"))
    assert loaded.keys() == served.keys() and all(torch.equal(loaded[k], served[k]) for k in served)
    # The second load comes from huggingface_hub's cache: one GET for the file in all.
    again = next(r for r in rows if r.get("again"))
    assert "error" not in again and again["source"] == "hub:resnet18.a1_in1k"
    assert sum(m == "GET" and "resnet18.a1_in1k" in p for m, p in requests) == 1

    dropped = "connection failed or dropped"
    reasons = {"resnet18.a3_in1k": "HTTP 404", "resnet18.a2_in1k": dropped, "resnet18.gluon_in1k": dropped,
               "resnet34.a1_in1k": dropped}
    for tag, reason in reasons.items():
        msg = by_tag[tag].get("error", "")
        assert tag in msg and reason in msg and "RESNET_LAB_WEIGHTS" in msg and ".safetensors" in msg, (tag, msg)
        assert "127.0.0.1" in msg and str(tmp_path) not in msg
        # Seconds, not minutes: huggingface_hub alone retries a stalled hub with 60 s timeouts.
        assert by_tag[tag]["seconds"] < 30, by_tag[tag]
    assert not any((tmp_path / f"{tag}.safetensors").exists() for tag in reasons)
    assert ("GET", "/cdn/timm/resnet18.gluon_in1k/model.safetensors") in requests  # the cut came mid-download


def test_hub_probe_goes_to_the_configured_endpoint(monkeypatch):
    """`hub_reachable` asks the host in HF_ENDPOINT (a mirror, or the test's stand-in), not huggingface.co."""
    import socket

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert weights.hub_reachable() == (True, "ok")
    ok, why = weights.hub_reachable()  # closed now
    assert not ok and f"127.0.0.1:{port}" in why
