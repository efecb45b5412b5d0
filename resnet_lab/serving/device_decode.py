"""JPEG uploads decoded and transformed on the model's device: nvjpeg on CUDA, the same code on the CPU.

A phone photo decoded by PIL on the CPU costs ~150 ms; the forward pass it feeds
costs a few. On CUDA, `torchvision.io.decode_jpeg(list, device="cuda")` decodes a
whole queue batch at full size with nvjpeg, and `DeviceTransform` resizes, crops
and normalizes it there exactly as timm's eval transform does on a PIL image.

Only what the CPU decoder would accept reaches the device: the header is read
first (`read_jpeg_header`, lazily: no pixel decoded) and the pixel-count bound,
the transform's size bound and EXIF orientation come from it. Everything else
(other formats, CMYK JPEGs, and whatever the device decoder refuses) goes back
to `data.decode_image`, whose checks and messages stay the one source of truth.
With `device="cpu"` the same functions run on libjpeg-turbo, so tests cover them
on machines without a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.images import EXIF_ORIENTATION, ImageInput, check_pixels, eval_config, open_image, resize_side, resized_size

log = logging.getLogger(__name__)

JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: phones' multi-picture JPEG; its first picture is what decodes
# Colour modes decoded on the device. CMYK/YCCK JPEGs (print files, a few in ImageNet) go to PIL: libjpeg-turbo
# converts them like PIL does, but nvjpeg's conversion is unverified here, and a wrong colour would be silent.
DEVICE_MODES = frozenset({"RGB", "L"})
INTERPOLATIONS = frozenset({"bilinear", "bicubic"})  # what `F.interpolate(antialias=True)` computes as PIL does


@dataclass(frozen=True)
class JpegUpload:
    """A JPEG upload that the device may decode: its bytes and what its header says."""

    data: torch.Tensor  # 1-D uint8 on the CPU: the file, as `decode_jpeg` takes it
    size: tuple[int, int]  # (w, h) as the user sees it, EXIF orientation applied
    orientation: int  # EXIF orientation, 1 when absent


def read_jpeg_header(src: ImageInput) -> JpegUpload | None:
    """The upload's JPEG header, checked as `decode_image` checks it, without decoding a pixel.

    None for what is not for the device decoder (a PIL image or array, another format, CMYK, an
    unreadable path or EXIF block, a file cut short before its end marker): `decode_image` handles it and says
    what is wrong. `ImageError`
    for what the CPU decoder would refuse from the header alone (empty, not an image, too many pixels).
    """
    if isinstance(src, bytes):
        data = src
    elif isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError:
            return None  # the CPU path reads it again and words the error
    else:
        return None
    img = open_image(data)  # lazy: the header only; ImageError as the CPU path raises it
    if img.format not in JPEG_FORMATS or img.mode not in DEVICE_MODES or not ends_with_eoi(data):
        return None
    check_pixels(*img.size)
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block: PIL's decoder decides what it means
        return None
    w, h = img.size
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return JpegUpload(torch.frombuffer(bytearray(data), dtype=torch.uint8), size, orientation)


def ends_with_eoi(data: bytes) -> bool:
    """Whether the file ends with JPEG's end-of-image marker (after trailing padding). A truncated upload does
    not; libjpeg-turbo refuses it, but whether nvjpeg does or fills the rest with grey is the card's library's
    business. Sent to the CPU path instead, it gets the CPU path's clear message on every device."""
    return data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def decode_jpegs(uploads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | Exception]:
    """Decode a batch of JPEG byte tensors to (3, H, W) uint8 RGB on `device` (nvjpeg on CUDA), one call for all.

    `decode_jpeg` fails the whole batch for one bad file; then each is decoded alone, so a corrupt upload
    costs only itself: its entry is the decoder's exception.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not uploads:
        return []
    try:
        return list(decode_jpeg(uploads, mode=ImageReadMode.RGB, device=device))
    except Exception as batch_error:
        if len(uploads) == 1:
            return [batch_error]
    out: list[torch.Tensor | Exception] = []
    for data in uploads:
        try:
            out.append(decode_jpeg([data], mode=ImageReadMode.RGB, device=device)[0])
        except Exception as e:
            out.append(e)
    return out


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation on a (C, H, W) tensor: the same pixels as PIL's `Image.transpose` for that tag."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return img.flip(-1)
    if orientation == 3:  # ROTATE_180
        return img.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return img.flip(-2)
    if orientation == 5:  # TRANSPOSE: across the main diagonal
        return img.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270: 90 degrees clockwise
        return img.rot90(-1, (-2, -1))
    if orientation == 7:  # TRANSVERSE: across the other diagonal
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90: 90 degrees counter-clockwise
        return img.rot90(1, (-2, -1))
    return img


class DeviceTransform:
    """timm's eval transform (Resize shorter side, CenterCrop, ToTensor, Normalize) on a uint8 (3, H, W) tensor.

    The resize runs in float32 with `antialias=True`, PIL's filter for downscaling, then is clamped and
    rounded to 8-bit levels as PIL's uint8 resize is, so the network input matches the PIL path's.
    """

    def __init__(self, pretrained_cfg: dict[str, Any], device: str | torch.device):
        if not self.supports(pretrained_cfg):
            raise ValueError("this eval transform has no device version (see DeviceTransform.supports)")
        cfg = eval_config(pretrained_cfg)
        self.side = resize_side(pretrained_cfg)
        self.crop_h, self.crop_w = cfg["input_size"][1:]
        self.mode = cfg["interpolation"]
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # nvjpeg's batch decoder wants the card named
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=self.device).view(3, 1, 1)

    @staticmethod
    def supports(pretrained_cfg: dict[str, Any]) -> bool:
        """Whether this device version computes the same as the CPU transform: center crop no larger than the
        resized image (no padding), an interpolation `F.interpolate` does like PIL, three-channel mean/std."""
        cfg = eval_config(pretrained_cfg)
        crop = cfg["input_size"][1:]
        return (cfg.get("crop_mode", "center") == "center" and cfg["interpolation"] in INTERPOLATIONS
                and resize_side(pretrained_cfg) >= max(crop) and len(cfg["mean"]) == len(cfg["std"]) == 3)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 on the device -> the normalized (3, crop_h, crop_w) float32 network input there."""
        h, w = img.shape[-2:]
        new_w, new_h = resized_size((w, h), self.side)
        top, left = int(round((new_h - self.crop_h) / 2.0)), int(round((new_w - self.crop_w) / 2.0))
        x = img.to(self.device, torch.float32)[None]
        # Width, then height, as PIL resamples. One 2-D pass would be the same sum, but CUDA's antialiased kernel
        # keeps both axes' taps in shared memory and refuses downscales past ~60x (a 12 MP photo for a 32 px
        # net); one axis at a time goes to ~180x. Rounded to 8 bits once, at the end: PIL's fixed-point passes
        # round twice, which puts it within one level of the exact sum, and so of this.
        if new_w != w:
            x = F.interpolate(x, size=(h, new_w), mode=self.mode, align_corners=False, antialias=True)
        if new_h != h:
            x = F.interpolate(x, size=(new_h, new_w), mode=self.mode, align_corners=False, antialias=True)
        if (new_h, new_w) != (h, w):
            x = x.clamp_(0, 255).round_()
        x = x[0, :, top:top + self.crop_h, left:left + self.crop_w]
        return ((x / 255.0) - self.mean) / self.std
