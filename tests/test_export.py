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
from resnet_lab.checkpoints import load_checkpoint
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
