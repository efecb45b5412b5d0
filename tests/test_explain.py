"""Grad-CAM against captum and an independent computation, the other methods against what defines them,
and overlays that line up with the upload."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

from resnet_lab import build
from resnet_lab.data.images import crop_box, eval_transform
from resnet_lab.data.shapes import ShapesDataset
from resnet_lab.explain.methods import METHODS, attribute, gradcam_stages, layer_cams, overlay, scale_map
from resnet_lab.models.verify import randomize_bn
from resnet_lab.models.weights import load_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "shapes_resnet20.safetensors"


@pytest.fixture(scope="module")
def shapes():
    """The shipped Shapes net and 8 held-out images (normalized as the app does), labels, masks."""
    loaded = load_checkpoint(SHIPPED)
    ds = ShapesDataset(8, seed=4243)
    to_input = eval_transform(loaded.pretrained_cfg)
    x = torch.stack([to_input(Image.fromarray(ds.images[i].permute(1, 2, 0).numpy())) for i in range(8)])
    return loaded.model.eval(), x, ds.labels, ds.masks


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


@pytest.mark.parametrize("arch,size", [("resnet18", 96), ("resnet50", 96), ("resnet20", 32)])
def test_all_stages_in_one_pass_equal_captum_layer_gradcam(arch, size):
    """Every stage (and a block) from one forward and one backward, against one captum `LayerGradCam` call each."""
    m = build(arch, seed=0).eval()
    randomize_bn(m)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 5])
    layers = [*m.stage_names, "layer2.0"]
    calls = []
    m.register_forward_pre_hook(lambda *_: calls.append("forward"))
    m.fc.register_full_backward_hook(lambda *_: calls.append("backward"))
    for relu in (True, False):
        calls.clear()
        ours = gradcam_stages(m, x, target, layers, relu=relu)
        assert calls == ["forward", "backward"]
        assert list(ours) == layers
        negative = False
        for layer in layers:
            ref = LayerGradCam(m, m.get_submodule(layer)).attribute(x.clone().requires_grad_(True), target=target,
                                                                    relu_attributions=relu).detach()
            ref = LayerAttribution.interpolate(ref, x.shape[-2:], interpolate_mode="bilinear")[:, 0]
            assert float(ref.abs().max()) > 0
            negative |= float(ref.min()) < 0
            assert torch.allclose(ours[layer], ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max())), (layer, relu)
        assert negative != relu  # the signed maps do carry negative evidence, the ReLU'd ones none
    assert not any(mod._forward_hooks for mod in m.modules() if mod is not m)  # our hooks are gone


def test_one_pass_under_no_grad_and_on_frozen_weights():
    """The app may call it inside `no_grad` (where blocks may work in place) and on frozen weights."""
    m = build("resnet20", seed=0).eval()
    randomize_bn(m)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = gradcam_stages(m, x, 2, m.stage_names, relu=False)
    m.requires_grad_(False)
    with torch.no_grad():
        got = layer_cams(m, x, 2, m.stage_names)
    for s in m.stage_names:
        assert torch.equal(F.interpolate(got[s][:, None], size=(32, 32), mode="bilinear")[:, 0], expected[s])


def test_integrated_gradients_completeness_from_a_black_image(shapes):
    """IG's axiom (Sundararajan et al. 2017): the signed map sums to f(x) - f(baseline), the baseline being a black
    image as the transform makes it; |.| before the sum breaks the equality."""
    m, x, labels, _ = shapes
    black = eval_transform(m.pretrained_cfg)(Image.new("RGB", (32, 32)))[None].expand_as(x)
    with torch.no_grad():
        gap = (m(x) - m(black)).gather(1, labels[:, None])[:, 0]
    assert float(gap.abs().min()) > 5.0  # the equality is about a real change of the logit
    total = attribute(m, x, labels, "integrated_gradients", signed=True).sum((1, 2))
    # 32 Gauss-Legendre steps across ReLU kinks: measured errors 0.1 % to 6 % per image, 1.7 % on average
    err = (total - gap).abs()
    assert torch.all(err < 0.08 * gap.abs()) and float(err.mean()) < 0.03 * float(gap.abs().mean()), (total, gap)
    unsigned = attribute(m, x, labels, "integrated_gradients").sum((1, 2))
    assert torch.all(unsigned > 3 * gap.abs())  # |.| per channel and pixel: far more than the change


def test_integrated_gradients_baseline_is_the_black_image(shapes):
    """From the baseline itself the path has length zero: a map of exact zeros for the black image, not for a grey
    one (the mean colour, 0 after normalization), which a wrong baseline would give zeros for instead."""
    m, x, labels, _ = shapes
    to_input = eval_transform(m.pretrained_cfg)
    black = to_input(Image.new("RGB", (32, 32)))[None].expand(2, -1, -1, -1)
    assert float(attribute(m, black, labels[:2], "integrated_gradients").abs().max()) == 0.0
    grey = to_input(Image.new("RGB", (32, 32), (127, 127, 127)))[None].expand(2, -1, -1, -1)
    assert float(attribute(m, grey, labels[:2], "integrated_gradients").abs().max()) > 0.0


def test_occlusion_is_positive_on_the_object(shapes):
    """Greying out the shape lowers its class logit, so the occlusion map is positive on the shape's pixels."""
    m, x, labels, masks = shapes
    occ = attribute(m, x, labels, "occlusion")
    inside = torch.stack([occ[i][masks[i]].mean() for i in range(8)])
    outside = torch.stack([occ[i][~masks[i]].mean() for i in range(8)])
    assert torch.all(inside > 0), inside
    assert torch.all(inside > outside), (inside, outside)


class _GuidedReLU(torch.autograd.Function):
    """Springenberg et al. (2015): backward passes a gradient only where both the input and the gradient are > 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


def _guided_backprop(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    net = copy.deepcopy(model)
    for mod in net.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.forward = _GuidedReLU.apply
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).gather(1, target[:, None]).sum(), x)
    return grad


def test_guided_gradcam_is_guided_backprop_times_gradcam(shapes):
    """Selvaraju et al. (2017): guided backprop (written here by hand) times the Grad-CAM map (nearest-upsampled,
    as captum does), |.| summed over channels."""
    m, x, labels, _ = shapes
    x, labels = x[:4], labels[:4]
    gbp = _guided_backprop(m, x, labels)
    for layer in ("layer2", "layer3"):
        cam = torch.relu(layer_cams(m, x, labels, [layer])[layer])
        cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="nearest")
        expected = (gbp * cam).abs().sum(1)
        got = attribute(m, x, labels, "guided_gradcam", layer)
        assert float(expected.max()) > 0
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.max())), layer


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
