"""A checkpoint made by `train` (`save_checkpoint`: `.safetensors` + JSON) becomes a model of the app's own (issue 9):
listed under its file's name, described without loading, classified and explained with its own classes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launched_app
from PIL import Image
from safetensors.torch import save_file

from resnet_lab.models.resnet import build
from resnet_lab.models.weights import save_checkpoint
from resnet_lab.serving.zoo import MODELS, SHAPES_MODEL, ModelZoo, arch_bytes
from resnet_lab.ui import common

CLASSES = ["apple", "pear", "plum"]
COLOURS = {"apple": (200, 30, 30), "pear": (210, 200, 40), "plum": (90, 30, 120)}
NAME = "fruit_r20 (resnet20, 3 classes)"
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` noisy solid-colour 32 px images per fruit, in [0, 1], and their labels."""
    base = torch.tensor([COLOURS[c] for c in CLASSES], dtype=torch.float32) / 255
    y = torch.arange(len(CLASSES)).repeat(n)
    x = base[y][:, :, None, None] + 0.05 * torch.randn(len(y), 3, 32, 32, generator=gen)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def folder(tmp_path_factory, one_thread) -> Path:
    """A weights folder: a fruit checkpoint trained for a few steps, an ImageNet-named file, a broken checkpoint."""
    root = tmp_path_factory.mktemp("weights")
    gen = torch.Generator().manual_seed(0)
    net = build("resnet20", num_classes=len(CLASSES), seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    net.train()
    for _ in range(25):
        x, y = _images(8, gen)
        loss = torch.nn.functional.cross_entropy(net((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"arch": "resnet20", "num_classes": 3, "classes": CLASSES, "input_size": [3, 32, 32], "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": MEAN, "std": STD}
    save_checkpoint(net.eval(), root / "fruit_r20", meta)
    save_file({"fc.weight": torch.zeros(1000, 512)}, str(root / "resnet18.tv_in1k.safetensors"))  # no JSON: ImageNet
    (root / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    (root / "broken.json").write_text('{"arch": "resnet20", "classes": ["a", "b"]}')
    return root


@pytest.fixture
def zoo(folder):
    z = ModelZoo(weights_path=str(folder), device="cpu")
    common._ZOO = z
    yield z
    common._ZOO = ModelZoo(weights_path="", device="cpu")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """A plum-coloured 32 px image (noise-free, unlike the training images)."""
    path = tmp_path_factory.mktemp("img") / "plum.png"
    Image.new("RGB", (32, 32), COLOURS["plum"]).save(path)
    return str(path)


def _softmax(folder: Path, image: str) -> dict[str, float]:
    """The checkpoint's own probabilities, computed here without the app: its eval transform is just the
    normalisation (32 px in, crop_pct 1)."""
    from resnet_lab.models.weights import load_checkpoint

    net = load_checkpoint(folder / "fruit_r20.safetensors").model.eval()
    x = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        p = net(x[None]).softmax(-1)[0]
    return dict(zip(CLASSES, p.tolist()))


def test_listed_under_its_own_name_and_broken_ones_skipped_with_a_warning(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="resnet_lab.serving.user_models"):
        z = ModelZoo(weights_path=str(folder), device="cpu")
    assert z.models == [*MODELS, NAME]  # after the built-in ones; the ImageNet-named file is no model of its own
    assert z.tags_for(NAME) == ["local"]
    assert any("broken.safetensors" in r.getMessage() for r in caplog.records)
    assert z.local_file("resnet18", "resnet18.tv_in1k").name == "resnet18.tv_in1k.safetensors"  # still ImageNet's
    single = ModelZoo(weights_path=str(folder / "fruit_r20.safetensors"), device="cpu")  # one file, not a folder
    assert single.models == [*MODELS, NAME]


def test_a_user_checkpoint_is_never_taken_for_imagenet_weights(folder, tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(folder / f"fruit_r20{suffix}", tmp_path / f"resnet50_fruit{suffix}")
    z = ModelZoo(weights_path=str(tmp_path), device="cpu")
    assert "resnet50_fruit (resnet20, 3 classes)" in z.models
    assert z.local_file("resnet50", "resnet50.a1_in1k") is None  # it holds 3 fruit, not ImageNet's 1000 classes


def test_described_without_loading_and_counted(zoo):
    assert zoo.describe(NAME) == (["layer1", "layer2", "layer3"], CLASSES)
    assert not zoo._cache
    entry = zoo.get(NAME, "local")
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for net in (entry.weights.model, entry.classifier.model) for t in [*net.parameters(), *net.buffers()]}
    assert zoo.model_bytes(NAME) == arch_bytes("resnet20", 3)
    assert zoo.model_bytes(NAME) == pytest.approx(sum(storages.values()) * 1.2, rel=0.05)


def test_classify_gives_its_own_classes_and_no_server_path(zoo, folder, image):
    from resnet_lab.ui.classify import classify_batch

    labels, infos = classify_batch([image], [NAME], ["local"])
    expected = _softmax(folder, image)
    assert set(labels[0]) == set(CLASSES)
    assert max(labels[0], key=labels[0].get) == "plum"  # the colour it was trained on
    for c in CLASSES:
        assert labels[0][c] == pytest.approx(expected[c], abs=1e-4)
    assert "fruit_r20.safetensors" in infos[0]
    assert str(folder) not in infos[0] and "/tmp" not in infos[0]


def test_gradcam_on_a_target_class_given_by_name(zoo, image):
    import gradio as gr

    from resnet_lab.ui import gradcam

    ex = gradcam.explain_image(image, NAME, "local", "layer3", target="pear")
    assert "Target: **pear**" in ex.info and ex.heatmap.shape == (32, 32)
    assert "Target: **plum**" in gradcam.explain_image(image, NAME, "local", "layer2").info  # top-1
    with pytest.raises(gr.Error, match="banana"):
        gradcam.explain_image(image, NAME, "local", "layer3", target="banana")
    stages, targets = gradcam.on_model_change(NAME)
    assert stages["value"] == "layer3" and CLASSES[0] in targets["choices"]
    assert "Shapes" in gradcam.faithfulness_note(NAME) and gradcam.faithfulness_note(SHAPES_MODEL) == ""


@pytest.fixture
def served(zoo):
    """The app launched with the fruit checkpoint's folder; yields its URL."""
    with launched_app() as (_, url):
        yield url


def test_served_app_classifies_with_the_user_model(served, image):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    label, info = client.predict(handle_file(image), NAME, "local", api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == set(CLASSES)
    assert label["label"] == "plum"
    assert "fruit_r20.safetensors" in info
