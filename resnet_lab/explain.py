"""Explanations from captum, on our ResNets: where did the network look?

Every method returns one map per image at the input's resolution, so the
overlay code and the faithfulness metrics treat them alike:

- `gradcam`: captum `LayerGradCam` on a stage or block output, ReLU'd as in
  Selvaraju et al. (2017) (or signed, pre-ReLU), bilinearly upsampled;
- `guided_gradcam`: captum `GuidedGradCam` (guided backprop x Grad-CAM), |.| summed over channels;
- `integrated_gradients`: captum `IntegratedGradients` from a black (all-zero pixel) baseline, |.| summed;
- `occlusion`: captum `Occlusion`, the drop in the target logit when a patch is greyed out.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import GuidedGradCam, IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn

METHODS: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
}


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """A stage (`layer4`, its last block's output) or a block (`layer4.2`) by state-dict name."""
    try:
        return model.get_submodule(layer)
    except AttributeError as e:
        stages = getattr(model, "stage_names", [])
        raise ValueError(f"no layer {layer!r} in this model; stages: {', '.join(stages)}") from e


def _targets(target: int | torch.Tensor, batch: int) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long)
    return t.expand(batch) if t.ndim == 0 else t


def gradcam(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor, layer: str,
            relu: bool = True) -> torch.Tensor:
    """Grad-CAM at the layer's own resolution, [B, h, w]."""
    cam = LayerGradCam(model, resolve_layer(model, layer))
    return cam.attribute(x, target=_targets(target, len(x)), relu_attributions=relu).detach()[:, 0]


def _background(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Normalized value of a black pixel, from the data config the model carries (else zero)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return torch.zeros_like(x)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((0.0 - m) / s).expand_as(x).contiguous()


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: int | torch.Tensor,
    method: str = "gradcam",
    layer: str = "layer4",
    signed: bool = False,
) -> torch.Tensor:
    """One map per image, [B, H, W] at the input's resolution (see the module docstring).

    `x` is the normalized batch; `layer` matters for the Grad-CAM family only;
    `signed=True` gives Grad-CAM without its ReLU.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    model.eval()
    target = _targets(target, len(x)).to(x.device)
    size = x.shape[-2:]
    x = x.detach().clone().requires_grad_(True)  # captum would set it anyway, with a warning
    if method == "gradcam":
        raw = gradcam(model, x, target, layer, relu=not signed)
        return LayerAttribution.interpolate(raw[:, None], size, interpolate_mode="bilinear")[:, 0]
    if method == "guided_gradcam":
        with warnings.catch_warnings():  # "Setting backward hooks on ReLU": expected, removed afterwards
            warnings.simplefilter("ignore", UserWarning)
            attr = GuidedGradCam(model, resolve_layer(model, layer)).attribute(x, target=target)
        return attr.detach().abs().sum(1)
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        attr = ig.attribute(x, baselines=_background(x, model), target=target, n_steps=32,
                            internal_batch_size=max(len(x), 16))
        return attr.detach().abs().sum(1)
    window = max(2, min(size) // 8)
    occ = Occlusion(model).attribute(
        x, target=target, sliding_window_shapes=(x.shape[1], window, window),
        strides=(x.shape[1], max(1, window // 2), max(1, window // 2)), baselines=_background(x, model),
        perturbations_per_eval=16,
    )
    return occ.detach().mean(1)
