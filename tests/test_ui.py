"""The tab functions, called directly with real (random-init or shipped) models, as the app calls them."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import encode
from PIL import Image

from resnet_lab.data.images import crop_box
from resnet_lab.explain.methods import colorbar_width
from resnet_lab.serving.zoo import SHAPES_CHECKPOINT, SHAPES_MODEL, ModelZoo
from resnet_lab.ui import classify, common, gradcam


@pytest.fixture(autouse=True, scope="module")
def offline_zoo():
    common._ZOO = ModelZoo(weights_path="", device="cpu")
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


def test_classify_returns_the_top5_of_the_softmax(tmp_path):
    """The Shapes net has 8 classes, so its top 5 sum to less than 1; each is the softmax of logits computed here
    with the unfused shipped model on the image's pixels (normalized by hand)."""
    from resnet_lab.data.shapes import MEAN, STD, ShapesDataset
    from resnet_lab.models.weights import load_checkpoint

    sample = ShapesDataset(1, seed=4242).sample(0)
    path = tmp_path / "shape.png"
    Image.fromarray((sample.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    labels, infos = classify.classify_batch([str(path)], [SHAPES_MODEL], ["shipped"])
    loaded = load_checkpoint(SHAPES_CHECKPOINT)
    pixels = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)
    x = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        probs = loaded.model.eval()(x[None])[0].double().softmax(0)
    top = probs.topk(5)
    expected = {loaded.meta["classes"][i]: float(p) for p, i in zip(top.values, top.indices)}
    assert list(labels[0]) == list(expected)  # the same classes, best first
    assert list(labels[0].values()) == pytest.approx(list(expected.values()), abs=1e-5)
    assert sum(labels[0].values()) == pytest.approx(float(top.values.sum()), abs=1e-5) and float(top.values.sum()) < 1
    assert "forward pass" in infos[0] and "ms" in infos[0]


def test_classify_says_when_weights_are_random(files):
    labels, infos = classify.classify_batch([files["photo"]], ["ResNet-18"], ["resnet18.tv_in1k"])
    assert len(labels[0]) == 5 and "random weights" in infos[0]  # offline: said loudly, never silent


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
    assert Image.open(png).size == Image.open(overlay).size == Image.open(second).size == (320 + 70, 240)
    assert len(stages) == 4


# (size, decoded at, displayed at): 4:3 decodes at 1/4 and shows as decoded; 16:9 decodes at 1/2 and is shrunk
PHONES = [((4032, 3024), (1008, 756), (1008, 756)), ((4000, 2250), (2000, 1125), (1024, 576))]


@pytest.fixture(scope="module", params=PHONES, ids=["12MP-4:3", "9MP-16:9"])
def phone_photo(request, tmp_path_factory):
    """A phone-sized JPEG, flat grey with a white square well inside the network's crop; and its sizes."""
    size, decoded, shown = request.param
    img = Image.new("RGB", size, (128, 128, 128))
    img.paste((255, 255, 255), (2600, 1000, 2800, 1200))
    path = tmp_path_factory.mktemp("phone") / "phone.jpg"
    img.save(path, quality=90)
    return str(path), size, decoded, shown


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def test_phone_photo_is_decoded_and_drawn_small_and_the_crop_lines_up(phone_photo):
    """Decoded small (JPEG draft mode: the shorter side stays >= 720), shown at most 1024 px; the network input is
    the crop box on the display: the marker the network sees lands where the marker is on the display."""
    path, size, decoded, shown = phone_photo
    entry = common.zoo().get("ResNet-18")
    v = gradcam.view(path, entry)
    assert v.image.size == decoded and v.display.size == shown
    full = crop_box(size, entry.weights.pretrained_cfg)  # on the original, scaled to the display
    assert v.box == pytest.approx([c * shown[0] / size[0] for c in full], abs=1.0)
    cfg = entry.weights.pretrained_cfg
    seen = (v.x[0].cpu() * torch.tensor(cfg["std"])[:, None, None] + torch.tensor(cfg["mean"])[:, None, None])
    mx, my = _centroid(seen.mean(0).numpy() > 0.75)  # in network input pixels
    left, top, right, bottom = v.box
    side = v.x.shape[-1]
    shown = _centroid(np.asarray(v.display).mean(-1) > 192)
    assert (left + mx * (right - left) / side, top + my * (bottom - top) / side) == pytest.approx(shown, abs=1.5)


def test_phone_photo_overlay_paints_exactly_the_crop_and_downloads_at_display_size(phone_photo):
    path, _, _, (w, h) = phone_photo
    v = gradcam.view(path, common.zoo().get("ResNet-18"))
    overlay, npy, stages, _, png, _ = gradcam.explain_event(
        path, "ResNet-18", None, "layer4", "top-1 prediction", "jet", 0.0, False, "none", None)
    overlay = Image.open(overlay)
    assert overlay.size == (w + colorbar_width(h), h) and Image.open(png).size == overlay.size
    assert np.load(npy).shape == (224, 224)  # the raw map stays at the network's resolution
    assert all(im.size == (512, round(512 * h / w)) for im, _ in stages)  # gallery tiles
    # opacity 0: the upload shows unchanged where the network looked, dimmed where it did not
    same = (np.abs(np.asarray(overlay, int)[:, :w] - np.asarray(v.display, int)) <= 2).all(-1)
    cols, rows = np.nonzero(same.mean(0) > 0.25)[0], np.nonzero(same.mean(1) > 0.25)[0]
    left, top, right, bottom = v.box
    assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == pytest.approx((left, top, right, bottom), abs=1.0)
    assert not same[5, 5] and not same[-5, -5]


def test_shapes_sample_draws_the_true_box_and_the_verdict():
    path, box, _ = gradcam.shapes_sample(3)
    ex = gradcam.explain_image(path, SHAPES_MODEL, None, "layer3", true_box=box)
    assert "Pointing game" in ex.info and ("hit" in ex.info or "miss" in ex.info)


def test_recompute_runs_on_a_copy_without_the_lock_and_says_how_long(monkeypatch):
    """Grad-CAM requests on the Shapes model must not wait behind a recompute: while it evaluates, the model's lock is
    free and the net it measures is not the shared one. The estimate is made before it starts and reported."""
    from resnet_lab.explain import faithfulness

    entry = common.zoo().get(SHAPES_MODEL)
    seen = []
    measure = faithfulness.measure_faithfulness

    def watched(net, *args, **kwargs):
        free = entry.lock.acquire(blocking=False)
        if free:
            entry.lock.release()
        seen.append((free, net is entry.weights.model))
        return measure(net, *args, **{**kwargs, "methods": ["gradcam"]})  # the others: seconds more, no news

    monkeypatch.setattr(gradcam, "measure_faithfulness", watched)
    fresh, note = gradcam.recompute_faithfulness(4)
    assert seen == [(True, False)]
    assert fresh["Method"].tolist() == ["Grad-CAM"] * 3 + [gradcam.CHANCE]  # shown as the panel shows it
    assert fresh["Stage"].tolist() == ["layer1", "layer2", "layer3", ""]
    assert fresh["Pointing game"].between(0, 1).all()
    assert "Recomputed on 4" in note and "estimated" in note


def test_the_faithfulness_table_is_shown_with_named_columns_and_each_measurement_once():
    """Methods that use no layer are measured once but written on every stage's row; the chance level is the same
    for every method: shown once each, under names a reader knows."""
    raw = pd.read_csv(gradcam.FAITHFULNESS_CSV)
    shown = gradcam.faithfulness_table()
    assert list(shown.columns) == ["Method", "Stage", *gradcam.SHOWN.values()]
    assert len(shown) == raw["uses_layer"].sum() + (~raw["uses_layer"]).sum() // 3 + 1
    assert not shown.duplicated(["Method", "Stage"]).any()
    ig = shown[shown["Method"] == "Integrated Gradients"]
    assert ig["Stage"].tolist() == [gradcam.ANY_STAGE] and ig["Pointing game"].iloc[0] == round(
        raw.loc[raw["method"] == "integrated_gradients", "pointing"].iloc[0], 3)
    assert shown.iloc[-1]["Pointing game"] == round(raw["pointing_random"].iloc[0], 3)


def test_recompute_refuses_more_images_than_it_is_bounded_to():
    with pytest.raises(gr.Error, match=f"1 to {gradcam.MAX_RECOMPUTE} images"):
        gradcam.recompute_faithfulness(gradcam.MAX_RECOMPUTE + 20)
    with pytest.raises(gr.Error, match="1 to"):
        gradcam.recompute_faithfulness(0)


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
    common._ZOO = z
    try:
        stage, target = gradcam.on_model_change("ResNet-152")
        assert stage["value"] == "layer4" and "tabby, tabby cat" in target["choices"]
        assert not z._cache
    finally:
        common._ZOO = ModelZoo(weights_path="", device="cpu")


def test_old_outputs_are_pruned(monkeypatch):
    import os
    import time

    old = common.tmp_file(".npy", "old_")
    old.write_bytes(b"x")
    stale = time.time() - common.KEEP_OUTPUTS_S - 10
    os.utime(old.parent, (stale, stale))
    monkeypatch.setattr(common, "_last_prune", time.time())  # pruned a moment ago: not scanned again yet
    kept = common.tmp_file(".npy", "new_")
    assert old.exists() and kept.parent.parent == common.OUTPUTS
    monkeypatch.setattr(common, "_last_prune", time.time() - common.PRUNE_EVERY_S - 1)
    fresh = common.tmp_file(".npy", "new_")
    assert not old.exists() and fresh.parent.is_dir() and fresh.parent.parent == common.OUTPUTS
