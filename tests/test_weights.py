"""Loading weights: local files (safetensors, weights_only .pth), refusing pickles, failing fast offline."""

from __future__ import annotations

import os
import pickle
import re
import socket
import threading
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from resnet_lab.models import akamaster, weights
from resnet_lab.models.weights import WeightsUnavailable


@pytest.fixture(scope="module")
def timm_r18():
    torch.manual_seed(0)
    m = timm.create_model("resnet18").eval()
    from resnet_lab.models.verify import randomize_bn

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
    from resnet_lab.serving.zoo import SHAPES_CHECKPOINT

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

        monkeypatch.setattr(socket, "create_connection", hang)
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


# ----------------------------------------------------------------------------- akamaster's CIFAR-10 checkpoints


def _akamaster_net(arch: str = "resnet20", seed: int = 3) -> torch.nn.Module:
    from resnet_lab.models.resnet import build
    from resnet_lab.models.verify import randomize_bn

    model = build(arch, seed=seed)
    with torch.no_grad():
        randomize_bn(model, seed=seed)  # running stats away from 0/1, so a BN left unloaded shows in the logits
    return model.eval()


def _their_keys(model: torch.nn.Module, compressible: bool = False, counters: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict under their names: DataParallel's `module.`, `linear` for `fc` (`compressible_` variant)."""
    out = {}
    for key, value in model.state_dict().items():
        if not counters and key.endswith("num_batches_tracked"):
            continue  # PyTorch before 0.4.1 did not save them
        name = "linear." + key[len("fc."):] if key.startswith("fc.") else key
        if compressible:
            name = re.sub(r"(^|\.)(conv\d|linear)\.", r"\1compressible_\2.", name)
        out["module." + name] = value.clone()
    return out


def _save_theirs(path, state: dict, best_prec1: float = 91.73):
    torch.save({"state_dict": state, "best_prec1": best_prec1}, path)  # as their trainer.py saves model.th
    return path


def _logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def test_akamaster_checkpoint_loads_exactly_with_arch_cfg_and_classes(tmp_path):
    source = _akamaster_net("resnet20")
    path = _save_theirs(tmp_path / "resnet20-12fca82f.th", _their_keys(source))
    assert "module.linear.weight" in torch.load(path, weights_only=True)["state_dict"]  # really their format
    for loaded in (weights.load_akamaster(path), weights.load_weights(str(path))):
        assert loaded.meta["arch"] == "resnet20" and loaded.source == "akamaster:resnet20-12fca82f.th"
        got = loaded.model.state_dict()
        assert got.keys() == source.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in source.state_dict().items())
        assert torch.equal(_logits(loaded.model), _logits(source))
        cfg = loaded.pretrained_cfg
        assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0 and cfg["num_classes"] == 10
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)  # their trainer.py's
        assert loaded.model.pretrained_cfg is cfg
        assert loaded.meta["classes"][:3] == ["airplane", "automobile", "bird"] and len(loaded.meta["classes"]) == 10
        assert loaded.meta["best_prec1"] == pytest.approx(91.73)


def test_akamaster_nets_see_in_the_app_what_their_evaluation_fed_them(tmp_path, photo):
    """The Classifier's transform on a 32x32 image == their val transform: ToTensor + ImageNet mean/std, no resize."""
    import torchvision.transforms.functional as TF

    from resnet_lab.serving.inference import Classifier

    path = _save_theirs(tmp_path / "resnet20-12fca82f.th", _their_keys(_akamaster_net("resnet20")))
    classifier = Classifier(weights.load_akamaster(path), device="cpu")
    assert list(classifier.labels) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                       "ship", "truck"]
    image = photo.crop((0, 0, 32, 32))
    theirs = TF.normalize(TF.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert torch.allclose(classifier.preprocess([image])[0], theirs, atol=1e-6)


def test_akamaster_arch_inferred_from_blocks_old_counters_and_compressible_names(tmp_path):
    source = _akamaster_net("resnet32", seed=5)
    path = _save_theirs(tmp_path / "r32.th", _their_keys(source, compressible=True, counters=False))
    loaded = weights.load_akamaster(path)
    assert loaded.meta["arch"] == "resnet32"
    assert torch.equal(_logits(loaded.model), _logits(source))
    assert int(loaded.model.bn1.num_batches_tracked) == 0


def test_akamaster_unexpected_keys_and_wrong_arch_give_clear_errors(tmp_path):
    state = _their_keys(_akamaster_net("resnet20"))
    state["module.layer2.0.shortcut.0.weight"] = torch.zeros(32, 16, 1, 1)  # an option-B projection: not theirs
    path = _save_theirs(tmp_path / "odd.th", state)
    with pytest.raises(WeightsUnavailable, match=r"unexpected keys module\.layer2\.0\.shortcut\.0\.weight"):
        weights.load_akamaster(path)
    del state["module.layer2.0.shortcut.0.weight"]
    _save_theirs(path, state)
    with pytest.raises(WeightsUnavailable, match="holds a resnet20 .3 blocks per stage., not a resnet56"):
        weights.load_akamaster(path, arch="resnet56")
    state["module.compressible_conv1.weight"] = state["module.conv1.weight"]  # two names for one weight
    _save_theirs(path, state)
    with pytest.raises(WeightsUnavailable, match="module.conv1.weight and module.compressible_conv1.weight"):
        weights.load_akamaster(path)
    foreign = tmp_path / "foreign.th"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(WeightsUnavailable, match="not a checkpoint of akamaster's CIFAR ResNets"):
        weights.load_akamaster(foreign)


def test_akamaster_resnet1202_is_refused_without_download():
    """No `resnet1202` here: refused by name before any network, and by its blocks when given as a file's keys."""
    with pytest.raises(WeightsUnavailable, match="resnet1202, which has no network here"):
        weights.load_akamaster("akamaster:resnet1202")
    raw = {f"module.layer1.{i}.conv1.weight": torch.zeros(1) for i in range(200)}
    with pytest.raises(WeightsUnavailable, match="resnet1202, which has no network here"):
        akamaster.akamaster_state_dict(raw, "resnet1202-f3b1deed.th")


def test_akamaster_pickle_with_code_is_refused_and_nothing_ran(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = _their_keys(_akamaster_net("resnet20"))
    path = tmp_path / "resnet20-evil.th"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": state, "best_prec1": Payload()}, f)
    with pytest.raises(WeightsUnavailable, match="refusing to load resnet20-evil.th"):
        weights.load_akamaster(path)
    assert not marker.exists()
    with open(tmp_path / "check.pkl", "wb") as f:  # the payload does run when unpickled plainly: the test has teeth
        pickle.dump(Payload(), f)
    with open(tmp_path / "check.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_akamaster_download_offline_fails_fast_with_the_file_and_the_alternative(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/pretrained_models/{{file}}"
    monkeypatch.setattr(akamaster, "AKAMASTER_URL", url)
    with pytest.raises(WeightsUnavailable) as e:
        weights.load_akamaster("resnet56", cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert "cannot download akamaster's resnet56-4bfd9763.th from 127.0.0.1" in message
    assert "unreachable" in message and "--weights path/resnet56-4bfd9763.th" in message
    assert "Traceback" not in message and not (tmp_path / "cache").exists()


def test_akamaster_download_and_cache_from_a_local_server(tmp_path, monkeypatch):
    """The real urllib download path against a server on 127.0.0.1; the second load is served from the cache."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served" / "pretrained_models"
    served.mkdir(parents=True)
    source = _akamaster_net("resnet20")
    _save_theirs(served / "resnet20-12fca82f.th", _their_keys(source))
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(akamaster, "AKAMASTER_URL", f"http://127.0.0.1:{server.server_port}/pretrained_models/{{file}}")
        loaded = weights.load_akamaster("akamaster:resnet20", cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert loaded.path == tmp_path / "cache" / "resnet20-12fca82f.th"
    assert list((tmp_path / "cache").iterdir()) == [loaded.path]  # no partial files left beside it
    assert torch.equal(_logits(loaded.model), _logits(source))
    again = weights.load_akamaster("resnet20-12fca82f.th", cache_dir=tmp_path / "cache")  # server gone: cache
    assert torch.equal(_logits(again.model), _logits(source))
