"""Loading weights: local files (safetensors, weights_only .pth), refusing pickles, failing fast offline."""

from __future__ import annotations

import os
import pickle
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
    assert loaded.source == f"file:{path}" and not loaded.is_random
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
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(weights.socket, "create_connection", lambda *a, **k: time.sleep(30))
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as e:
        weights.load_pretrained("resnet50.tv2_in1k")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "resnet50.tv2_in1k" in msg and ".safetensors" in msg


def test_tags_come_from_timm_without_network():
    tags = weights.list_tags("resnet50")
    assert "resnet50.tv2_in1k" in tags and "resnet50.a1_in1k" in tags
    assert weights.resolve_tag("resnet18")[1].tag == "tv_in1k"
    with pytest.raises(WeightsUnavailable):
        weights.resolve_tag("resnet50.no_such_tag")


def test_real_pretrained_weights_from_the_hub():
    """The one network test: real weights, real predictions. Skipped, with the reason, when the hub is out of reach."""
    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        ok, why = weights.hub_reachable()
        if not ok:
            pytest.skip(f"Hugging Face Hub unreachable: {why}")
        loaded = weights.load_pretrained("resnet18.tv_in1k")
    finally:
        os.environ["HF_HUB_OFFLINE"] = "1"
    ref = timm.create_model("resnet18")
    ref.load_state_dict(loaded.model.state_dict())
    assert _same_outputs(loaded.model, ref)
    assert loaded.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
