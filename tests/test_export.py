"""Models that travel: an export that timm itself loads from a hub (the local stand-in), with our logits and names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_lab.__main__ import main
from resnet_lab.models.checkpoints import load_checkpoint
from resnet_lab.training.train import TrainConfig, train

HERE = Path(__file__).resolve().parent
LOAD = """
import json, sys, timm, torch
m = timm.create_model(sys.argv[1], pretrained=True).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    y = m(x)
print(json.dumps({"logits": y.tolist(), "labels": m.pretrained_cfg.get("label_names"),
                  "mean": list(m.pretrained_cfg["mean"]), "input_size": list(m.pretrained_cfg["input_size"])}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r18") / "r18"
    return train(TrainConfig(arch="resnet18", size=32, epochs=1, n_train=64, n_val=32, n_test=32, batch_size=32,
                             quiet=True, device="cpu", out=str(out))).path


def test_timm_loads_the_export_from_a_hub_with_the_same_logits_and_class_names(trained, tmp_path, capsys):
    from hub_server import FakeHub

    assert main(["export", "--model", str(trained), "--out", str(tmp_path / "x")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "timm"
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    ours = load_checkpoint(trained)
    assert config["architecture"] == "resnet18" and config["num_classes"] == len(ours.meta["classes"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    with FakeHub() as hub:
        for f in ("config.json", "model.safetensors"):
            hub.add("someone/shapes-r18", f, (tmp_path / "x" / f).read_bytes())
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", LOAD, "hf-hub:someone/shapes-r18"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours.model.eval()(x)
    torch.testing.assert_close(torch.tensor(got["logits"]), want, rtol=0, atol=1e-5)
    assert got["labels"] == ours.meta["classes"] and got["mean"] == pytest.approx(list(ours.pretrained_cfg["mean"]))
    assert got["input_size"] == [3, 32, 32]


def test_an_arch_timm_lacks_is_exported_in_our_format_and_said_so(tmp_path, capsys):
    shipped = HERE.parent / "assets" / "twins" / "shapes_resnet20.safetensors"
    assert main(["export", "--model", str(shipped), "--out", str(tmp_path / "x")]) == 0
    out, err = capsys.readouterr()
    assert "timm has no resnet20" in err and json.loads(out)["format"] == "resnet-lab"
    again = load_checkpoint(tmp_path / "x" / "model.safetensors")
    assert again.meta["arch"] == "resnet20"
    assert main(["export", "--model", str(tmp_path / "nowhere.safetensors"), "--out", str(tmp_path / "y")]) == 2
    assert "export:" in capsys.readouterr().err


def test_a_push_that_cannot_reach_the_hub_fails_in_one_line_without_the_token(trained, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "hf_NotARealTokenButSecret123"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN=token, HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(HERE.parent), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "resnet_lab", "export", "--model", str(trained), "--out",
                           str(tmp_path / "x"), "--push", "someone/r18"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "--push someone/r18 failed" in proc.stderr
    assert token not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert (tmp_path / "x" / "model.safetensors").is_file()  # the export itself is kept


ZOO = """
import json, sys, torch
from resnet_lab.serving.zoo import ModelZoo
zoo = ModelZoo(device="cpu")
out = {}
entry = zoo.get("ResNet-18", sys.argv[1])
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out["logits"] = entry.weights.model.eval()(x).tolist()
out["labels"] = list(entry.classifier.labels)
out["source"] = entry.weights.source
for model, tag in (("ResNet-50", sys.argv[1]), ("ResNet-18", "hf-hub:someone/missing")):
    try:
        zoo.get(model, tag)
    except ValueError as e:
        out[model + " " + tag] = str(e)
print(json.dumps(out))
"""


def test_the_app_loads_an_export_by_its_hub_tag_with_its_own_class_names(trained, tmp_path):
    from hub_server import FakeHub

    assert main(["export", "--model", str(trained), "--out", str(tmp_path / "x")]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    with FakeHub() as hub:
        for f in ("config.json", "model.safetensors"):
            hub.add("someone/shapes-r18", f, (tmp_path / "x" / f).read_bytes())
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(HERE.parent), RESNET_LAB_WEIGHTS=str(tmp_path / "none"))
        proc = subprocess.run([sys.executable, "-c", ZOO, "hf-hub:someone/shapes-r18"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    ours = load_checkpoint(trained)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours.model.eval()(x)
    torch.testing.assert_close(torch.tensor(got["logits"]), want, rtol=0, atol=1e-5)
    assert got["labels"] == ours.meta["classes"] and got["source"] == "hub:someone/shapes-r18"
    assert "holds a resnet18, not a resnet50: choose the resnet18 model" in got["ResNet-50 hf-hub:someone/shapes-r18"]
    assert "HTTP 404" in got["ResNet-18 hf-hub:someone/missing"]


@pytest.fixture
def uploads(monkeypatch) -> dict[str, dict[str, bytes]]:
    """huggingface_hub.HfApi replaced by one that records, per repo, every file each upload sends (its path in the
    repo and its bytes), whichever upload method the push uses; nothing leaves the machine."""
    import fnmatch

    import huggingface_hub

    sent: dict[str, dict[str, bytes]] = {}

    def read(src) -> bytes:
        return Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)

    class RecordingApi:
        endpoint = "https://hub.invalid"

        def __init__(self, *args, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            sent.setdefault(repo_id, {})

        def create_commit(self, repo_id, operations, **kwargs):
            for op in operations:
                sent.setdefault(repo_id, {})[op.path_in_repo] = read(op.path_or_fileobj)

        def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            sent.setdefault(repo_id, {})[path_in_repo] = read(path_or_fileobj)

        def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None,
                          **kwargs):
            allow = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
            ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or []
            for f in Path(folder_path).rglob("*"):
                name = f.relative_to(folder_path).as_posix()
                if f.is_file() and (allow is None or any(fnmatch.fnmatch(name, p) for p in allow)) and not any(
                        fnmatch.fnmatch(name, p) for p in ignore):
                    sent.setdefault(repo_id, {})[f"{path_in_repo}/{name}" if path_in_repo else name] = f.read_bytes()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return sent


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_a_push_sends_exactly_the_files_written_and_no_path_of_the_trainers_disk(uploads, tmp_path, capsys):
    """Our own format: a stale config.json and notes.txt in --out stay home, and the published model.json keeps
    what describes the model, not the run's command, config or data paths (which name folders on this disk)."""
    shipped = HERE.parent / "assets" / "twins" / "shapes_resnet20.safetensors"
    home = tmp_path / "home" / "someone"
    ckpt = home / "runs" / "r20.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(shipped.read_bytes())
    meta = json.loads(shipped.with_suffix(".json").read_text())
    meta["command"] = f"python -m resnet_lab train --data folder:{home}/pets --out {home}/runs/r20"
    meta["command_full"] = meta["command"]
    meta["config"] = {**meta["config"], "out": str(home / "runs" / "r20"), "data_dir": str(home / "data")}
    meta["data"] = {**meta["data"], "root": str(home / "data"), "skipped": [{"path": str(home / "x.png"),
                                                                               "reason": "unreadable"}]}
    meta["pretrained"] = {"spec": str(home / "w.pth"), "source": "file:w.pth", "head": "new", "freeze": "nothing"}
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text('{"architecture": "resnet50", "stale": true}')
    (out / "notes.txt").write_text(f"my notes in {home}")

    assert main(["export", "--model", str(ckpt), "--out", str(out), "--push", "someone/r20"]) == 0
    assert "pushed to https://hub.invalid/someone/r20" in capsys.readouterr().out
    assert set(uploads["someone/r20"]) == {"model.safetensors", "model.json"}
    assert uploads["someone/r20"]["model.safetensors"] == shipped.read_bytes()
    published = json.loads(uploads["someone/r20"]["model.json"])
    for s in _strings(published):
        assert not s.startswith(("/", "~")) and str(tmp_path) not in s and str(Path.home()) not in s, s
    assert {"command", "command_full", "config"}.isdisjoint(published)
    assert published["data"]["test_seed"] == meta["data"]["test_seed"] and "root" not in published["data"]
    assert published["pretrained"] == {"head": "new", "freeze": "nothing"}
    again = load_checkpoint(out / "model.safetensors")  # what was published still loads as the same net
    assert again.meta["arch"] == "resnet20" and again.meta["classes"] == meta["classes"]


def test_a_timm_export_pushes_its_config_and_weights_only(trained, uploads, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    for stale in ("model.json", "notes.txt"):
        (out / stale).write_text("from an earlier export")
    assert main(["export", "--model", str(trained), "--out", str(out), "--push", "someone/r18"]) == 0
    assert set(uploads["someone/r18"]) == {"config.json", "model.safetensors"}
    assert uploads["someone/r18"]["config.json"] == (out / "config.json").read_bytes()
    assert str(tmp_path) not in uploads["someone/r18"]["config.json"].decode()
