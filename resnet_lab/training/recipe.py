"""The choices a run leaves to the data: how long it trains, when it stops, label smoothing and the weights' EMA.

An option given on the command line is always used as given. Left out (None in `TrainConfig`), it is resolved
here once the training set's size is known, and the checkpoint's JSON records each value with the rule that chose
it (`Recipe.record`). The anchors are timm's and torchvision's reference recipes: a schedule measured in optimizer
steps, weight decay off BatchNorm and biases (`train.make_optimizer`, always), label smoothing 0.1 and an EMA of
the weights. On a small folder (under `SMALL_SET` training images: the user's own images, the case where an
epoch count means little) they are the default:

- `--batch-size`: the largest of 128, 64 and 32 that gives an epoch at least `SMALL_EPOCH_STEPS` steps. At batch
  128 a set of 1,131 images has 8 steps an epoch, each averaging 11 % of the set (CIFAR's: 0.3 %, 350 steps an
  epoch); halving it doubles the updates per epoch, and 32 is the floor under which BatchNorm's statistics suffer.
- `--steps`: a step budget, `SMALL_STEPS` at batch 128 and scaled by 128 / batch (the same images seen: 1,600 at
  batch 64); the epochs are ceil(steps / steps per epoch). A set of 1,000 images at batch 128 has 8 steps an epoch:
  the 15 epochs that suit CIFAR would be 120 updates. An explicit `--epochs` wins over any budget.
- `--patience`: off under a step budget (the one-cycle schedule anneals to its end; the best epoch is still kept),
  else `PATIENCE` epochs.
- `--smoothing`: `SMALL_SMOOTHING`.
- `--ema-decay`: `SMALL_EMA_DECAY`; each epoch the EMA is validated beside the raw weights and the better of the
  two is the epoch's candidate for the kept weights (`train`), so the EMA is used where it helps.
- `--calibrate auto`: a temperature fitted on the validation split and folded into the head (`calibration`): label
  smoothing leaves the net underconfident, and T gives back calibrated probabilities without changing a prediction.

Shapes, CIFAR and large folders keep the earlier defaults (15 epochs, patience 5, no smoothing, no EMA, no
temperature), so the shipped checkpoints' commands still mean what they did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .augment import Augment
    from .config import TrainConfig

SMALL_SET = 10_000  # training images below which a folder gets the small-data recipe
BATCH = 128  # a step's batch where --batch-size is not given (He et al.'s CIFAR recipe); a small folder's largest
SMALL_EPOCH_STEPS = 16  # a small folder's batch is halved until an epoch has at least this many steps...
SMALL_BATCH_MIN = 32  # ...but not below 32: BatchNorm's batch statistics grow noisy under ~32 images (Wu & He 2018)
SMALL_STEPS = 800  # a small folder's default step budget at batch 128 (README, "Small folders"), scaled by 128 / batch
SMALL_SMOOTHING = 0.1  # timm's and torchvision's label smoothing
SMALL_EMA_DECAY = 0.99  # per step: averages over ~100 steps, an eighth of the default budget
EPOCHS = 15  # Shapes, CIFAR and large folders
PATIENCE = 5  # epochs without a better validation accuracy, on an epoch count
SMALL_FOLDER = f"on a folder of fewer than {SMALL_SET:,} training images"  # as `--help` says it


@dataclass(frozen=True)
class Recipe:
    """A run's resolved schedule and regularization; `why` names the rule behind each value."""

    epochs: int
    steps_per_epoch: int
    patience: int | None  # None: no early stopping
    augment: Augment  # with the resolved label smoothing
    ema_decay: float  # 0: no EMA
    small: bool
    why: dict[str, str]
    calibrate: bool = False  # fit a temperature on the validation split once training ends (`calibration`)
    batch_size: int = BATCH  # a step's global batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def stops_early(self, stale: int) -> bool:
        return self.patience is not None and stale >= self.patience

    def record(self) -> dict[str, Any]:
        """What the checkpoint's JSON keeps under `recipe`."""
        return {
            "small_set": self.small,
            "small_set_below": SMALL_SET,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "patience": self.patience,
            "smoothing": self.augment.smoothing,
            "ema_decay": self.ema_decay,
            "calibrate": self.calibrate,
            "weight_decay_on": "conv and linear weights (not BatchNorm, not biases)",
            "why": self.why,
        }


def is_small(config: TrainConfig, n_train: int) -> bool:
    """Whether `config`'s data, with `n_train` training images, gets the small-folder recipe."""
    return config.data.startswith("folder:") and n_train < SMALL_SET


def batch_size(config: TrainConfig, n_train: int) -> int:
    """A step's global batch: `--batch-size` as given; on a small folder the largest of 128, 64 and 32 that gives
    an epoch at least `SMALL_EPOCH_STEPS` steps (1,131 images: 64, 17 steps); else 128."""
    if config.batch_size is not None:
        return config.batch_size
    batch = BATCH
    while is_small(config, n_train) and batch > SMALL_BATCH_MIN and n_train // batch < SMALL_EPOCH_STEPS:
        batch //= 2
    return batch


def resolve(config: TrainConfig, n_train: int, steps_per_epoch: int) -> Recipe:
    """The recipe of `config` for a training set of `n_train` images in `steps_per_epoch` steps an epoch."""
    small = is_small(config, n_train)
    kind = f"a folder of {n_train} training images (< {SMALL_SET})" if small else "the default"
    batch = batch_size(config, n_train)
    why = {"batch_size": "--batch-size" if config.batch_size is not None else
           f"{kind}: the largest of {BATCH}, {BATCH // 2}, {SMALL_BATCH_MIN} giving >= {SMALL_EPOCH_STEPS} steps an "
           "epoch" if small else kind}
    steps = config.steps if config.steps is not None else SMALL_STEPS * BATCH // batch if small else None
    if config.epochs is not None:
        epochs, why["epochs"] = config.epochs, "--epochs"
    elif steps is not None:
        epochs = max(1, math.ceil(steps / steps_per_epoch))
        why["epochs"] = f"ceil(steps {steps} / {steps_per_epoch} steps an epoch): " + (
            "--steps" if config.steps is not None else
            f"the step budget of {kind}: {SMALL_STEPS} at batch {BATCH}, x {BATCH}/{batch} (the same images seen)"
        )
    else:
        epochs, why["epochs"] = EPOCHS, kind
    budget = config.epochs is None and steps is not None
    if config.patience is not None:
        patience, why["patience"] = config.patience, "--patience"
    else:
        patience = None if budget else PATIENCE
        why["patience"] = "off under a step budget" if budget else kind
    given = config.augment.smoothing
    smoothing = given if given is not None else SMALL_SMOOTHING if small else 0.0
    why["smoothing"] = "--smoothing" if given is not None else kind
    ema = config.ema_decay if config.ema_decay is not None else SMALL_EMA_DECAY if small else 0.0
    why["ema_decay"] = "--ema-decay" if config.ema_decay is not None else kind
    calibrate = config.calibrate == "on" or (config.calibrate == "auto" and small)
    why["calibrate"] = f"--calibrate {config.calibrate}" + (f": {kind}" if config.calibrate == "auto" else "")
    return Recipe(epochs, steps_per_epoch, patience, replace(config.augment, smoothing=smoothing), ema, small, why,
                  calibrate, batch)
