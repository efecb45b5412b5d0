"""Grad-CAM against an independent computation, and overlays that line up with the upload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet_lab import build
from resnet_lab.data import crop_box
from resnet_lab.explain import METHODS, attribute, overlay, scale_map
from resnet_lab.verify import randomize_bn


def gradcam_by_hand(model: torch.nn.Module, x: torch.Tensor, target: int, layer: torch.nn.Module,
                    relu: bool = True) -> torch.Tensor:
    """Selvaraju et al. (2017), eq. 1-2, with plain hooks: ReLU(sum_k alpha_k A^k), alpha_k = mean dy/dA^k."""
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    try:
        logits = model(x)
        (grad,) = torch.autograd.grad(logits[:, target].sum(), store["A"])
    finally:
        h.remove()
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    cam = (alpha * store["A"]).sum(1, keepdim=True)
    cam = F.relu(cam) if relu else cam
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


@pytest.mark.parametrize("arch,size,layer", [("resnet18", 160, "layer4"), ("resnet50", 128, "layer3"),
                                             ("resnet20", 32, "layer3"), ("resnet18", 160, "layer2.1")])
def test_gradcam_matches_independent_computation(arch, size, layer):
    torch.manual_seed(0)
    m = build(arch).eval()
    randomize_bn(m)
    x = torch.randn(2, 3, size, size)
    for signed in (True, False):  # the signed map is never all zero, so its correlation is always defined
        ours = attribute(m, x, 3, "gradcam", layer, signed=signed)
        ref = gradcam_by_hand(m, x, 3, m.get_submodule(layer), relu=not signed)
        for a, b in zip(ours, ref):
            if signed:
                assert float(b.std()) > 0
                assert float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]) >= 0.99
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()) + 1e-12)


def test_signed_map_keeps_negative_evidence():
    torch.manual_seed(0)
    m = build("resnet20").eval()
    randomize_bn(m)
    x = torch.randn(1, 3, 32, 32)
    signed = attribute(m, x, 1, "gradcam", "layer3", signed=True)
    relu = attribute(m, x, 1, "gradcam", "layer3")
    assert float(signed.min()) < 0 <= float(relu.min())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_one_map_per_image(method):
    torch.manual_seed(0)
    m = build("resnet20").eval()
    x = torch.randn(3, 3, 32, 32)
    maps = attribute(m, x, torch.tensor([0, 1, 2]), method, "layer3")
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and float(maps.abs().sum()) > 0


def test_unknown_method_or_layer():
    m = build("resnet20")
    with pytest.raises(ValueError, match="unknown method"):
        attribute(m, torch.randn(1, 3, 32, 32), 0, "lime")
    with pytest.raises(ValueError, match="no layer"):
        attribute(m, torch.randn(1, 3, 32, 32), 0, "gradcam", "layer4")


def test_overlay_lines_up_with_the_original_upload():
    """A map that is hot in one corner of the network input lands on that corner of the crop in the upload."""
    cfg = build("resnet18").pretrained_cfg
    img = Image.new("RGB", (400, 300), (128, 128, 128))
    box = crop_box(img.size, cfg)
    heat = np.zeros((224, 224), np.float32)
    heat[:28, -28:] = 1.0  # top-right corner of the input
    out = np.asarray(overlay(img, heat, box, cmap="gray", alpha=1.0, colorbar=False), dtype=float)
    left, top, right, bottom = box
    inside_hot = out[int(top) + 5, int(right) - 5]
    inside_cold = out[int(bottom) - 5, int(left) + 5]
    assert inside_hot.mean() > 200 and inside_cold.mean() < 30
    assert out[150, 5].mean() < 128  # outside the crop (the network never saw it): dimmed, not painted
    assert overlay(img, heat, box).size == (400 + 70, 300)  # with its colorbar


def test_scale_map():
    s, top = scale_map(np.array([[0.0, 2.0], [1.0, 0.5]]))
    assert top == 2.0 and s.max() == 1.0
    s, top = scale_map(np.array([[-4.0, 2.0]]), signed=True)
    assert top == 4.0 and s.min() == -1.0 and s.max() == 0.5
