"""Explanations from captum, on our ResNets: where did the network look?

Every method returns one map per image at the input's resolution, so the
overlay code and the faithfulness metrics treat them alike:

- `gradcam`: Grad-CAM (Selvaraju et al. 2017) on a stage or block output, ReLU'd
  (or signed, pre-ReLU), bilinearly upsampled. `gradcam_stages` computes it for
  many layers from one forward and one backward pass, with exactly captum
  `LayerGradCam`'s arithmetic (the tests hold it to captum);
- `guided_gradcam`: captum `GuidedGradCam` (guided backprop x Grad-CAM), |.| summed over channels;
- `integrated_gradients`: captum `IntegratedGradients` from a black (all-zero pixel) baseline, |.| summed
  over channels (signed: summed as is, so the map adds up to f(x) - f(black));
- `occlusion`: captum `Occlusion`, the drop in the target logit when a patch is greyed out.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import GuidedGradCam, IntegratedGradients, LayerAttribution, Occlusion
from PIL import Image, ImageDraw, ImageFont
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


def layer_cams(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor,
               layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Signed Grad-CAM of every layer at its own resolution, {layer: [B, h, w]}, from one forward and one backward.

    captum's `LayerGradCam` runs a forward and a backward pass per layer; the
    gradients of the target logits with respect to all the layers' outputs come
    out of one `torch.autograd.grad`. The arithmetic is captum's: channel weights
    are the spatial mean of the gradient, the map their weighted sum over channels.
    The hooks record only this thread's forward, so another thread's forward on
    the same model cannot swap its activations in.
    """
    modules = {name: resolve_layer(model, name) for name in dict.fromkeys(layers)}
    acts: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def keep(name: str):
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                acts[name] = out
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
    try:
        with torch.enable_grad():  # blocks go in place only without a graph: these outputs stay as produced
            x = x.detach().requires_grad_(True)  # a graph even when the weights are frozen
            logits = model(x)
            score = logits.gather(1, _targets(target, len(x)).to(logits.device)[:, None]).sum()
            grads = torch.autograd.grad(score, [acts[name] for name in modules])
    finally:
        for h in handles:
            h.remove()
    return {name: (g.mean(dim=(2, 3), keepdim=True) * acts[name]).sum(1).detach()
            for name, g in zip(modules, grads)}


def upsample_cam(cam: torch.Tensor, size: Sequence[int], relu: bool = True) -> torch.Tensor:
    """A layer-resolution map [B, h, w] to the input's [B, H, W]: ReLU first (as captum), then bilinear."""
    cam = torch.relu(cam) if relu else cam
    return LayerAttribution.interpolate(cam[:, None], tuple(size), interpolate_mode="bilinear")[:, 0]


def gradcam_stages(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor, stages: Sequence[str],
                   relu: bool = True) -> dict[str, torch.Tensor]:
    """Grad-CAM of every stage (or block) at the input's resolution, {stage: [B, H, W]}, in one pass."""
    return {name: upsample_cam(cam, x.shape[-2:], relu) for name, cam in layer_cams(model, x, target, stages).items()}


def _black_baseline(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
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
    `signed=True` keeps the sign where a method has one: Grad-CAM without its
    ReLU, integrated gradients summed over channels without |.| (the map then
    adds up to the logit's change from the black baseline). Guided Grad-CAM is
    always |.|, occlusion always signed (the drop of the target logit).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    model.eval()
    target = _targets(target, len(x)).to(x.device)
    size = x.shape[-2:]
    x = x.detach().clone().requires_grad_(True)  # captum would set it anyway, with a warning
    if method == "gradcam":
        return gradcam_stages(model, x, target, [layer], relu=not signed)[layer]
    if method == "guided_gradcam":
        with warnings.catch_warnings():  # "Setting backward hooks on ReLU": expected, removed afterwards
            warnings.simplefilter("ignore", UserWarning)
            attr = GuidedGradCam(model, resolve_layer(model, layer)).attribute(x, target=target)
        return attr.detach().abs().sum(1)
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        attr = ig.attribute(x, baselines=_black_baseline(x, model), target=target, n_steps=32,
                            internal_batch_size=max(len(x), 16))
        return attr.detach().sum(1) if signed else attr.detach().abs().sum(1)
    window = max(2, min(size) // 8)
    occ = Occlusion(model).attribute(
        x, target=target, sliding_window_shapes=(x.shape[1], window, window),
        strides=(x.shape[1], max(1, window // 2), max(1, window // 2)), baselines=_black_baseline(x, model),
        perturbations_per_eval=max(1, 64 // len(x)),  # forward batches of about 64 images: 3x faster than 16 x 50
    )
    return occ.detach().mean(1)


# ----------------------------------------------------------------------------- overlays


def scale_map(heat: np.ndarray, signed: bool = False) -> tuple[np.ndarray, float]:
    """To [0, 1] (or [-1, 1] when signed, zero kept at zero) and the value that maps to 1."""
    top = float(np.abs(heat).max()) if signed else float(heat.max())
    if top <= 0:
        return np.zeros_like(heat, dtype=np.float32), 0.0
    return (np.clip(heat / top, -1 if signed else 0, 1)).astype(np.float32), top


def colorize(scaled: np.ndarray, cmap: str = "jet", signed: bool = False, as_bytes: bool = False) -> np.ndarray:
    """A scaled map to RGB floats in [0, 1] (or uint8); signed maps use a diverging colormap centred on zero."""
    from matplotlib import colormaps

    values = (scaled + 1) / 2 if signed else scaled
    return colormaps[cmap if not signed else "RdBu_r"](values, bytes=as_bytes)[..., :3]


def colorbar_width(height: int) -> int:
    """Width of the colour bar beside an overlay `height` px tall: it grows with the overlay, so its labels stay
    legible when the app shows a photo-sized overlay shrunk to the page."""
    return max(70, height // 5)


def _colorbar(height: int, cmap: str, signed: bool) -> Image.Image:
    """The colour scale with its ticks, as shares of the map's largest value (1, 0.5, 0; signed: 1, 0, -1).

    The top of the bar starts below the corner where the app's image toolbar sits (it hid the top label), and
    each label is centred on its tick."""
    width = colorbar_width(height)
    font_px = max(10, height // 22)
    font = ImageFont.load_default(size=font_px)
    top, bottom = round(0.14 * height), height - font_px // 2 - 2
    bar, tick = max(12, width // 5), max(4, font_px // 4)
    grad = np.linspace(1, -1 if signed else 0, bottom - top)[:, None].repeat(bar, 1)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray((colorize(grad, cmap, signed) * 255).astype(np.uint8)), (4, top))
    draw = ImageDraw.Draw(canvas)
    ticks = ("1", "0", "-1") if signed else ("1", "0.5", "0")
    for label, y in zip(ticks, (top, (top + bottom) // 2, bottom - 1)):
        draw.line((4 + bar, y, 4 + bar + tick, y), fill="black", width=max(1, font_px // 10))
        draw.text((6 + bar + 2 * tick, y), label, fill="black", font=font, anchor="lm")
    return canvas


def overlay(
    image: Image.Image,
    heat: np.ndarray,
    box: tuple[float, float, float, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    signed: bool = False,
    colorbar: bool = True,
) -> Image.Image:
    """The heatmap laid over the *original* image.

    `heat` covers the network input, which is the region `box` (left, top,
    right, bottom, from `data.crop_box`) of the original; outside it the network
    saw nothing, so that part is dimmed rather than painted. Blended in 8 bits by
    PIL: a 1024 px overlay costs milliseconds, not a float copy of the image per step.
    """
    image = image.convert("RGB")
    w, h = image.size
    left, top, right, bottom = box or (0, 0, w, h)
    size = (max(1, round(right - left)), max(1, round(bottom - top)))
    resized = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR))
    scaled, _ = scale_map(resized, signed)
    half_grey = image.convert("L", (1 / 6, 1 / 6, 1 / 6, 0))  # half the mean of the channels
    result = Image.blend(image, Image.merge("RGB", [half_grey] * 3), 0.65)  # outside the crop: dimmed, desaturated
    x0, y0 = round(left), round(top)
    patch = Image.fromarray(np.ascontiguousarray(colorize(scaled, cmap, signed, as_bytes=True)))
    result.paste(Image.blend(image.crop((x0, y0, x0 + size[0], y0 + size[1])), patch, alpha), (x0, y0))
    if not colorbar:
        return result
    canvas = Image.new("RGB", (w + colorbar_width(h), h), "white")
    canvas.paste(result, (0, 0))
    canvas.paste(_colorbar(h, cmap, signed), (w, 0))
    return canvas


def draw_box(image: Image.Image, box: tuple[float, float, float, float], hit: bool | None = None,
             peak: tuple[float, float] | None = None) -> Image.Image:
    """The true object box (green for a pointing-game hit, red for a miss) and the map's peak."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    color = "white" if hit is None else ("#00c853" if hit else "#ff1744")
    width = max(2, image.width // 100)
    draw.rectangle(box, outline=color, width=width)
    if peak is not None:
        r = max(3, image.width // 60)
        draw.ellipse((peak[0] - r, peak[1] - r, peak[0] + r, peak[1] + r), outline="white", width=width)
    return image
