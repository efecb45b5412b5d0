"""The classifier: batched top-k, BN folding, labels, device choice."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import encode
from PIL import Image
from torch import nn

from resnet_lab import build
from resnet_lab.data.images import ImageError, decode_image
from resnet_lab.models.verify import randomize_bn
from resnet_lab.models.weights import load_weights
from resnet_lab.runtime.devices import resolve_device
from resnet_lab.serving.inference import Classifier, fuse_bn
from resnet_lab.serving.zoo import SHAPES_CHECKPOINT


def _relative_gap(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest logit difference, relative to the logits' scale (their largest magnitude)."""
    with torch.no_grad():
        ref = a(x)
        return float((b(x) - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
def test_fused_model_equals_unfused(arch):
    """Folding is exact algebra: in float64 the logits agree to 1e-12 of their scale (measured ~1e-15), in
    float32 to 1e-5 (measured ~3e-7, rounding). Probabilities near 1e-3 would hide a 10 % error at 1e-4."""
    m = build(arch, seed=0).eval()
    randomize_bn(m)
    fused = fuse_bn(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in fused.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    size = m.config.input_size[-1] // 2
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert _relative_gap(m, fused, x) <= 1e-5
    m64 = copy.deepcopy(m).double()
    assert _relative_gap(m64, fuse_bn(m64), x.double()) <= 1e-12
    # the float64 bound catches a fold that gets one BN's eps slightly wrong (2e-5 for 1e-5: ~1.5e-6 measured)
    wrong = copy.deepcopy(m64)
    [bn for bn in wrong.modules() if isinstance(bn, nn.BatchNorm2d)][-1].eps = 2e-5
    assert _relative_gap(m64, fuse_bn(wrong), x.double()) > 1e-8


def test_predict_is_batched_and_sorted(photo):
    clf = Classifier(load_weights(None, "resnet18"), device="cpu")
    preds = clf.predict([photo, encode(photo.rotate(90, expand=True))], topk=5)
    assert len(preds) == 2 and all(p.batch_size == 2 and p.forward_ms > 0 for p in preds)
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


def test_a_banner_classifies_and_a_strip_is_refused():
    """The bound is on what the resize makes, not the aspect ratio (the old 25:1 limit refused the banner)."""
    clf = Classifier(load_weights(None, "resnet18"), device="cpu", fuse=True)
    banner = encode(Image.new("RGB", (2000, 40), (200, 30, 30)))
    assert len(clf.predict([banner])[0].topk) == 5
    with pytest.raises(ImageError, match=r"20000x1: .* would make it 5,120,000x256"):
        clf.predict([encode(Image.new("RGB", (20000, 1)))])


def test_labels_come_from_checkpoint_meta(tmp_path):
    from resnet_lab.models.weights import save_checkpoint

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
    w = load_weights(None, "resnet50")
    randomize_bn(w.model)
    fast, plain = Classifier(w, device="cpu", fuse=True), Classifier(w, device="cpu", fuse=False)
    assert fast.channels_last and not plain.channels_last
    batch = plain.preprocess([photo, photo.rotate(90, expand=True)])
    ref = plain.logits(batch)
    # folded + in-place + channels_last, float32: measured ~3e-7 of the logits' scale
    assert float((fast.logits(batch) - ref).abs().max() / ref.abs().max()) <= 1e-5


def test_fast_path_runs_in_place_only_in_its_own_copy(photo):
    """The fused copy may overwrite activations; the shared model that explanations hook must not."""
    w = load_weights(None, "resnet18")
    fast = Classifier(w, device="cpu", fuse=True)
    seen = []
    w.model.layer1[0].bn2.register_forward_hook(lambda m, i, o: seen.append(float(o.min())))
    with torch.no_grad():
        w.model(fast.preprocess([photo]))
    assert seen[0] < 0  # a BN output before its ReLU: an in-place ReLU would have clipped it to 0
    assert any(getattr(m, "inplace", False) for m in fast.model.modules())


def _phone_jpeg(photo: Image.Image, orientation: int) -> bytes:
    """A 2048x1536 photo-like JPEG (the session photo enlarged, plus sensor-like noise), quality 90."""
    big = np.asarray(photo.resize((2048, 1536), Image.Resampling.BICUBIC)).astype(np.int16)
    big += np.random.default_rng(1).integers(-10, 11, big.shape, dtype=np.int16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)), "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_classifies_like_the_full_one(photo, orientation):
    """Decoding a large JPEG at 1/4 (DCT draft) gives the same top-1 and nearly the same network input.

    Measured on this image, normalized inputs: ResNet-50 (decoded at 512x384) max |dx| 0.053, mean 0.008;
    Shapes ResNet-20 (43x32) max 0.45, mean 0.10 (at 32 px a sub-pixel shift of the crop shows on the noise).
    Where a side is not a multiple of the factor the reduced image is ~1 px off proportional: 2200x1650 at
    256 px gave max 0.45, mean 0.06, top-1 unchanged (benchmarks/bench_decode.py has 12 and 48 MP phone sizes).
    """
    raw = _phone_jpeg(photo, orientation)
    rn50 = Classifier(load_weights(None, "resnet50"), device="cpu", fuse=True)
    shapes = Classifier(load_weights(str(SHAPES_CHECKPOINT), "resnet20"), device="cpu", fuse=True)
    for clf, max_bound, mean_bound in ((rn50, 0.08, 0.012), (shapes, 0.6, 0.15)):
        full = clf.transform(decode_image(raw))
        reduced = clf.preprocess([raw])[0]
        assert max(clf.decode(raw).size) <= 2048 // 4  # really decoded smaller
        diff = (full - reduced).abs()
        assert float(diff.max()) <= max_bound and float(diff.mean()) <= mean_bound
        logits = clf.logits(torch.stack([full, reduced]))
        assert logits[0].argmax() == logits[1].argmax()


def test_prepare_many_gives_each_upload_its_own_result(photo, caplog):
    """A bad upload is its `ImageError`, a bug its (logged) exception; neither fails its neighbours, which equal
    their single `prepare`. This is what the queue-batched endpoint reads."""
    clf = Classifier(load_weights(str(SHAPES_CHECKPOINT), "resnet20"), device="cpu", fuse=True)
    boom = photo.resize((64, 48))
    real = clf.transform

    def transform(img):
        if img.size == boom.size:
            raise RuntimeError("a bug")
        return real(img)

    clf.transform = transform
    good = encode(photo)
    results = clf.prepare_many([good, b"", boom, encode(photo, "JPEG")])
    assert torch.equal(results[0], clf.preprocess([good])[0]) and isinstance(results[3], torch.Tensor)
    assert isinstance(results[1], ImageError) and "empty" in str(results[1])
    assert type(results[2]) is RuntimeError
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)
    with pytest.raises(ImageError, match="empty"):
        clf.preprocess([b""])[0]
