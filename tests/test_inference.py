"""The classifier: batched top-k, BN folding, labels, device choice."""

from __future__ import annotations

import pytest
import torch
from conftest import encode

from resnet_lab import build
from resnet_lab.data import ImageError
from resnet_lab.inference import Classifier, fuse_bn, resolve_device
from resnet_lab.verify import randomize_bn
from resnet_lab.weights import load_weights


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
def test_fused_model_equals_unfused(arch):
    torch.manual_seed(0)
    m = build(arch).eval()
    randomize_bn(m)
    fused = fuse_bn(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    size = m.config.input_size[-1] // 2
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        assert float((fused(x) - m(x)).abs().max()) <= 1e-4


def test_predict_is_batched_and_sorted(photo):
    torch.manual_seed(0)
    clf = Classifier(load_weights(None, "resnet18"), device="cpu")
    preds = clf.predict([photo, encode(photo.rotate(90, expand=True))], topk=5)
    assert len(preds) == 2
    for p in preds:
        probs = [v for _, v in p.topk]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
        assert all(isinstance(k, str) and k for k, _ in p.topk)
    # batching changes nothing: each image alone gives the same numbers
    alone = clf.predict([photo])[0]
    assert alone.topk[0][0] == preds[0].topk[0][0]
    assert alone.topk[0][1] == pytest.approx(preds[0].topk[0][1], abs=1e-5)


def test_predict_raises_image_error_for_bad_input():
    clf = Classifier(load_weights(None, "resnet18"), device="cpu")
    with pytest.raises(ImageError):
        clf.predict([b"not an image"])


def test_labels_come_from_checkpoint_meta(tmp_path):
    from resnet_lab.weights import save_checkpoint

    path = save_checkpoint(build("resnet20", num_classes=3), tmp_path / "m",
                           {"arch": "resnet20", "num_classes": 3, "classes": ["a", "b", "c"]})
    clf = Classifier(load_weights(str(path)), device="cpu")
    assert list(clf.labels) == ["a", "b", "c"]


def test_resolve_device(monkeypatch):
    monkeypatch.delenv("RESNET_LAB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    monkeypatch.setenv("RESNET_LAB_DEVICE", "cpu")
    assert resolve_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_fast_path_classifier_matches_the_unfused_one(photo):
    torch.manual_seed(0)
    w = load_weights(None, "resnet50")
    randomize_bn(w.model)
    fast, plain = Classifier(w, device="cpu", fuse=True), Classifier(w, device="cpu", fuse=False)
    assert fast.channels_last and not plain.channels_last
    batch = plain.preprocess([photo])
    assert float((fast.probabilities(batch) - plain.probabilities(batch)).abs().max()) <= 1e-4
