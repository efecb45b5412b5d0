"""Training augmentation you choose, with timm's option names and meanings, and defaults that suit the data.

Per image (folders: built by timm's `create_transform`; CIFAR and Shapes tensors: the project's own on-device
pad-crop-flip and flips, whose flip probability `--hflip` sets):

- `--hflip P`: left-right flip probability (timm's `hflip`). Default 0.5; 0 for data a mirror changes
  (digits, text, arrows).
- `--scale MIN MAX`, `--ratio MIN MAX`: RandomResizedCrop's area and aspect ranges (timm's `scale`, `ratio`).
  For images of SMALL_SIDE px and below the default is not timm's ImageNet (0.08, 1), which keeps as little as
  8 % of a 32 px image, but the CIFAR recipe of He et al.: pad by an eighth of the side and crop back (`scale`
  given: RandomResizedCrop as asked).
- `--aa`: AutoAugment / RandAugment policy in timm's notation (`rand-m9-mstd0.5`, `augmix-m5-w3`,
  `original`, `v0`), `--reprob P`: random erasing (timm's `re_prob`). Folders only: they act on images, not on the
  normalized tensors CIFAR and Shapes train from.

Per batch, for every kind of data: `--mixup A`, `--cutmix A` (Beta(A, A) mixing; both: one of the two per batch,
as timm's `Mixup` with switch probability 0.5) and `--smoothing E` (label smoothing). The draws come from the run's
own generator (through a numpy Generator seeded from it), never from a global RNG, so a resumed run repeats them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..cli.args import number
from ..data.images import eval_config, eval_shape
from ..settings import option
from .recipe import SMALL_FOLDER, SMALL_SMOOTHING

SMALL_SIDE = 64  # images this small (or smaller) get the CIFAR recipe by default


_AREA = number(0, lo_open=True)  # --scale and --ratio: MIN MAX, each > 0


@dataclass(frozen=True)
class Augment:
    """The run's augmentation, each option declared once (`settings.option`; `TrainConfig` nests it, and its
    options stay flat on the command line and in the run's JSON); `record()` is what the checkpoint's JSON keeps."""

    hflip: float = option(0.5, "left-right flip probability (0 for data a mirror changes: digits, text)",
                          type=number(0, 1))
    scale: tuple[float, float] | None = option(
        None, "folders: RandomResizedCrop area range (default: timm's 0.08 1 above 64 px; at 64 px and below "
              "pad-and-crop, the CIFAR recipe)", type=_AREA, nargs=2, metavar=("MIN", "MAX"))
    ratio: tuple[float, float] | None = option(None, "folders: RandomResizedCrop aspect range (default 3/4 4/3)",
                                               type=_AREA, nargs=2, metavar=("MIN", "MAX"))
    aa: str | None = option(None, "folders: AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5")
    reprob: float = option(0.0, "folders: random erasing probability", type=number(0, 1))
    mixup: float = option(0.0, "Mixup alpha (0: off)", type=number(0))
    cutmix: float = option(0.0, "CutMix alpha (0: off)", type=number(0))
    # None: the recipe's choice (`recipe.resolve`), which is what the run's loss is given
    smoothing: float | None = option(None, f"label smoothing (default: {SMALL_SMOOTHING} {SMALL_FOLDER}, else 0)",
                                     type=number(0, 1))

    def __post_init__(self) -> None:
        for name in ("scale", "ratio"):  # a command line's list and a record's list: the pair as a tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        probs = {"--hflip": self.hflip, "--reprob": self.reprob, "--smoothing": self.label_smoothing}
        bad = [f"{k} {v}" for k, v in probs.items() if not 0.0 <= v <= 1.0]
        bad += [f"--{k} {v}" for k, v in (("mixup", self.mixup), ("cutmix", self.cutmix)) if v < 0]
        for name, pair in (("scale", self.scale), ("ratio", self.ratio)):
            if pair is not None and not (len(pair) == 2 and 0 < pair[0] <= pair[1]):
                bad.append(f"--{name} {' '.join(map(str, pair))}")
        if self.scale is not None and self.scale[1] > 1:
            bad.append(f"--scale {self.scale[0]} {self.scale[1]} (an area share: at most 1)")
        if bad:
            raise ValueError(f"augmentation out of range: {', '.join(bad)} (probabilities lie in 0..1, --mixup and "
                             "--cutmix are Beta parameters >= 0, --scale/--ratio take MIN MAX with 0 < MIN <= MAX)")

    @property
    def label_smoothing(self) -> float:
        """The smoothing the loss uses (None, left to the recipe and not yet resolved: none)."""
        return self.smoothing or 0.0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def image_options(self) -> list[str]:
        """The options that act on images (a folder's transform), as typed, where they are set."""
        return [f"--{k}" for k, v in (("scale", self.scale), ("ratio", self.ratio), ("aa", self.aa),
                                      ("reprob", self.reprob)) if v]

    def record(self, size: int, kind: str) -> dict[str, Any]:
        """The augmentation as run: options, and the per-image recipe they give for `kind` of data."""
        if kind == "folder":
            recipe = ("RandomResizedCrop" if self.scale is not None or size > SMALL_SIDE else
                      f"pad {pad_for(size)} and random crop (the CIFAR recipe: {size} px <= {SMALL_SIDE})")
        else:
            recipe = {"cifar": "pad 4 and random crop, on the device", "shapes": "flips on both axes",
                      "folder in memory": f"pad {pad_for(size)} and random crop, on the device (decoded once)"}[kind]
        return {**asdict(self), "recipe": recipe}


def pad_for(size: int) -> int:
    """The CIFAR recipe's padding, an eighth of the side (4 px at 32 px)."""
    return max(1, size // 8)


def train_transform(pretrained_cfg: dict[str, Any], aug: Augment = Augment()) -> Callable[[Any], torch.Tensor]:
    """A folder's per-image training transform from timm's factory at the model's input size, mean/std and
    interpolation (no colour jitter). Small images without `--scale`: resize and centre-crop, pad-and-crop, then
    timm's pipeline with its crop disabled (scale and ratio 1), so flips, AutoAugment and erasing are still timm's."""
    from timm.data import create_transform
    from torchvision import transforms as T

    cfg = eval_config(pretrained_cfg)
    size = int(cfg["input_size"][-1])
    small = aug.scale is None and size <= SMALL_SIDE
    tf = create_transform(
        input_size=cfg["input_size"], is_training=True, interpolation=cfg["interpolation"], mean=cfg["mean"],
        std=cfg["std"], color_jitter=None, hflip=aug.hflip, auto_augment=aug.aa, re_prob=aug.reprob,
        scale=(1.0, 1.0) if small else aug.scale, ratio=(1.0, 1.0) if small else aug.ratio,
    )
    if small:  # the eval transform's shape (shorter side, centre crop at crop_pct 1), then pad-and-crop
        tf.transforms[:0] = [*eval_shape(size, size, cfg["interpolation"]).transforms,
                             T.RandomCrop(size, padding=pad_for(size))]
    return tf


def batch_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator for one batch's mixing draws, seeded from the run's torch generator."""
    return np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, aug: Augment,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, soft targets) of a batch after Mixup or CutMix (timm's definitions: one lambda per batch, the
    batch mixed with itself reversed; CutMix's lambda corrected to the box's true area) and label smoothing."""
    rng = batch_rng(generator)
    use_cutmix = aug.cutmix > 0 and (aug.mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(aug.cutmix, aug.cutmix) if use_cutmix else rng.beta(aug.mixup, aug.mixup))
    flipped = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
        x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)
    else:
        x = x * lam + flipped * (1.0 - lam)
    return x, soft_targets(y, num_classes, aug.label_smoothing, lam)


def soft_targets(y: torch.Tensor, num_classes: int, smoothing: float, lam: float = 1.0) -> torch.Tensor:
    """timm's `mixup_target`: smoothed one-hot targets of y and of y reversed, mixed by lam."""
    off, on = smoothing / num_classes, 1.0 - smoothing + smoothing / num_classes
    one = F.one_hot(y, num_classes).float() * (on - off) + off
    return one * lam + one.flip(0) * (1.0 - lam)


def loss_fn(aug: Augment, num_classes: int, generator: torch.Generator
            ) -> Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    """`loss(forward, x, y) -> (loss, logits)` for a training step: plain cross-entropy (with label smoothing
    where asked), or on a mixed batch against its soft targets."""

    def loss(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        if aug.mixes:
            x, target = mix_batch(x, y, num_classes, aug, generator)
            logits = forward(x)
            return F.cross_entropy(logits.float(), target.to(logits.device)), logits
        logits = forward(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=aug.label_smoothing), logits

    return loss
