"""The tab functions, called directly with real (random-init or shipped) models, as the app calls them."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from conftest import encode
from PIL import Image

from resnet_lab.ui import classify, common, gradcam
from resnet_lab.zoo import SHAPES_MODEL, ModelZoo


@pytest.fixture(autouse=True, scope="module")
def offline_zoo():
    common.set_zoo(ModelZoo(weights_path="", device="cpu"))
    yield


@pytest.fixture
def files(tmp_path, photo):
    gray8 = np.asarray(photo.convert("L"))
    paths = {
        "photo": tmp_path / "photo.jpg", "gray8": tmp_path / "gray8.png", "gray16": tmp_path / "gray16.png",
        "broken": tmp_path / "broken.jpg", "empty": tmp_path / "empty.png", "svg": tmp_path / "x.svg",
    }
    photo.save(paths["photo"], quality=92)
    Image.fromarray(gray8).save(paths["gray8"])
    Image.fromarray(gray8.astype(np.uint16) * 257).save(paths["gray16"])
    paths["broken"].write_bytes(encode(photo, "JPEG")[:2000])
    paths["empty"].write_bytes(b"")
    paths["svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    return {k: str(v) for k, v in paths.items()}


def test_classify_returns_top5_and_timing(files):
    labels, infos = classify.classify_batch([files["photo"]], ["ResNet-18"], ["resnet18.tv_in1k"])
    assert len(labels[0]) == 5 and abs(sum(labels[0].values()) - 1) < 1  # top-5 of a softmax
    assert "forward pass" in infos[0] and "ms" in infos[0]
    assert "random weights" in infos[0]  # offline: said loudly, never silent


def test_16bit_copy_classifies_exactly_like_the_8bit_original(files):
    labels, _ = classify.classify_batch([files["gray8"], files["gray16"]], ["ResNet-18"] * 2,
                                        ["resnet18.tv_in1k"] * 2)
    assert labels[0] == labels[1]


def test_bad_upload_alone_raises_a_clear_error(files):
    for kind, match in [("broken", "truncated or corrupt"), ("empty", "empty"), ("svg", "SVG")]:
        with pytest.raises(gr.Error, match=match):
            classify.classify_batch([files[kind]], ["ResNet-18"], ["resnet18.tv_in1k"])


def test_bad_upload_in_a_batch_does_not_fail_the_others(files):
    labels, infos = classify.classify_batch([files["broken"], files["photo"]], ["ResNet-18"] * 2,
                                            ["resnet18.tv_in1k"] * 2)
    assert labels[0] is None and "truncated or corrupt" in infos[0]
    assert len(labels[1]) == 5


def test_batch_groups_requests_by_model(files):
    labels, infos = classify.classify_batch([files["photo"], files["photo"]], ["ResNet-18", SHAPES_MODEL],
                                            ["resnet18.tv_in1k", "shipped"])
    assert len(labels[0]) == 5 and len(labels[1]) == 5
    assert labels[0] != labels[1]


def test_unknown_tag_is_refused(files):
    with pytest.raises(ValueError, match="no weights"):
        classify.classify_batch([files["photo"]], ["ResNet-18"], ["resnet50.tv2_in1k"])


def test_compare_depths_table_and_plot(files):
    df, fig = classify.compare_depths(files["photo"])
    assert list(df["model"]) == ["ResNet-18", "ResNet-34", "ResNet-50", "ResNet-101", "ResNet-152"]
    assert df["latency ms"].gt(0).all() and df["probability"].between(0, 1).all()
    assert fig is not None


def test_explain_image_overlays_on_the_original(files, photo):
    ex = gradcam.explain_image(files["photo"], "ResNet-18", None, "layer4", "top-2 prediction")
    assert ex.overlay.size == (photo.width + 70, photo.height)  # the upload, plus a colorbar
    assert ex.heatmap.shape == (224, 224) and ex.heatmap.min() >= 0
    assert [s for _, s in ex.stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert ex.second is not None and "Target" in ex.info


def test_explain_by_class_name_and_signed(files):
    ex = gradcam.explain_image(files["photo"], "ResNet-18", None, "layer3", "tabby, tabby cat", signed=True,
                               second="Integrated Gradients")
    assert "tabby" in ex.info and ex.heatmap.min() < 0


def test_explain_refuses_unknown_stage_and_class(files):
    with pytest.raises(gr.Error, match="no stage"):
        gradcam.explain_image(files["photo"], SHAPES_MODEL, None, "layer4")
    with pytest.raises(gr.Error, match="unknown target"):
        gradcam.explain_image(files["photo"], "ResNet-18", None, "layer4", "not a class")


def test_explain_event_writes_downloads(files):
    overlay, npy, stages, second, png, info = gradcam.explain_event(
        files["photo"], "ResNet-18", "resnet18.tv_in1k", "layer4", "top-1 prediction", "viridis", 0.6, False,
        "Guided Grad-CAM", None)
    assert np.load(npy).shape == (224, 224)
    assert Image.open(png).size == overlay.size
    assert len(stages) == 4


def test_shapes_sample_draws_the_true_box_and_the_verdict():
    path, box, _ = gradcam.shapes_sample(3)
    ex = gradcam.explain_image(path, SHAPES_MODEL, None, "layer3", true_box=box)
    assert "Pointing game" in ex.info and ("hit" in ex.info or "miss" in ex.info)


def test_faithfulness_panel_shipped_table_and_recompute():
    shipped = gradcam.faithfulness_table()
    row = shipped[(shipped["method"] == "gradcam") & (shipped["stage"] == "layer3")].iloc[0]
    assert row["pointing"] >= 0.9 > row["pointing_random"] + 0.3  # the claim the panel shows
    fresh = gradcam.recompute_faithfulness(4)
    assert set(fresh["method"]) == {"gradcam", "guided_gradcam", "integrated_gradients", "occlusion"}
    assert fresh["pointing"].between(0, 1).all() and len(fresh) == len(shipped)


def test_zero_gpu_wraps_gpu_work_only_on_zero_gpu(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn: ("on the GPU", fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    fn = classify.classify_batch
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert common.on_gpu(fn) is fn
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert common.on_gpu(fn) == ("on the GPU", fn)


def test_importing_the_app_loads_no_model():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = "import app, resnet_lab.ui.common as c; print(c._ZOO is None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_a_drawn_box_is_never_laid_over_another_image():
    path, box, _ = gradcam.shapes_sample(5)
    other = gradcam.ASSETS / "shapes_star.png"
    ex = gradcam.explain_image(str(other), SHAPES_MODEL, None, "layer3", true_box=box)
    assert "Pointing game" not in ex.info


def test_a_bad_tag_fails_only_its_own_requests_in_a_batch(files):
    labels, infos = classify.classify_batch([files["photo"], files["photo"]], ["ResNet-18", SHAPES_MODEL],
                                            ["resnet50.tv2_in1k", "shipped"])
    assert labels[0] is None and "no weights" in infos[0]
    assert len(labels[1]) == 5


def test_choosing_a_model_loads_no_weights():
    z = ModelZoo(weights_path="", device="cpu")
    common.set_zoo(z)
    try:
        stage, target = gradcam.on_model_change("ResNet-152")
        assert stage["value"] == "layer4" and "tabby, tabby cat" in target["choices"]
        assert not z._cache
    finally:
        common.set_zoo(ModelZoo(weights_path="", device="cpu"))


def test_old_outputs_are_pruned(monkeypatch):
    import os
    import time

    old = common.tmp_file(".npy", "old_")
    old.write_bytes(b"x")
    stale = time.time() - common.KEEP_OUTPUTS_S - 10
    os.utime(old.parent, (stale, stale))
    fresh = common.tmp_file(".npy", "new_")
    assert not old.exists() and fresh.parent.is_dir() and fresh.parent.parent == common.OUTPUTS
