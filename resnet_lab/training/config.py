"""What a training run is: `TrainConfig` (every choice, validated up front) and the `train` command's arguments.

Kept apart from the loop so the CLI, the tests and the benchmarks can build and check a config without importing
the trainer. `TrainConfig.cli()` turns a config back into the command that repeats it, every option spelled out
(the checkpoint's JSON records it).
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..cli_args import int_in, number, positive_int, seed, writable
from ..precision import PRECISIONS
from ..resnet import REGISTRY, list_archs
from . import finetune
from .augment import Augment
from .recipe import BATCH, SMALL_EMA_DECAY, SMALL_EPOCH_STEPS, SMALL_SET, SMALL_SMOOTHING, SMALL_STEPS

DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05, "adam": 0.0}
DEFAULT_BACKBONE_LR_SCALE = 0.1  # fine-tuning: the pretrained part moves 10x slower than the new head


def may_differ(default: Any, why: str) -> Any:
    """A field that a resumed run may change from the state's (`why`: why it is still the same run). Every other
    field must match (`RESUME_MUST_MATCH`), so an option added later is refused on a change until declared here."""
    return field(default=default, metadata={"resume": why})


@dataclass
class TrainConfig:
    """One training run; `cli()` turns it back into the command that repeats it."""

    arch: str = "resnet20"
    data: str = "shapes"
    epochs: int | None = None  # None: from --steps, the step budget of a small folder, else 15 (`recipe`)
    steps: int | None = None  # a step budget (epochs = ceil(steps / steps an epoch)); None: `recipe` decides
    n_train: int = 20_000
    n_val: int = 2_000
    n_test: int = 2_000
    batch_size: int | None = None  # None: 128, or on a small folder as `recipe.batch_size` chooses
    lr: float = 0.1
    opt: str = "sgd"
    sched: str = "onecycle"
    wd: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    patience: int | None = may_differ(None, "when to stop early; the state keeps the counter")  # None: `recipe`
    seed: int = 0
    test_seed: int = 999
    size: int | None = None  # None: 32 for the CIFAR nets, 64 for the ImageNet ones
    clutter: bool = True
    out: str | None = may_differ(None, "where states and the checkpoint go: a run may be continued elsewhere")
    device: str | None = may_differ(None, "where the same arithmetic runs (another device: close, not bit-identical)")
    quiet: bool = may_differ(False, "what is printed")
    data_dir: str | None = may_differ(None, "where the data set --data names is found (moved to another machine)")
    download: bool = may_differ(False, "whether missing files may be fetched, not which")
    checksum: bool = may_differ(True, "whether the files are verified, not which")
    val_fraction: float = 0.1
    precision: str = "auto"
    channels_last: bool = may_differ(False, "a memory layout of the same model")
    compile: bool = may_differ(False, "how the same model is run")
    workers: int = may_differ(2, "how many processes decode (a folder's augmentation draws follow the count: then "
                                 "close, not bit-identical)")
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each rank's share
    pretrained: str | None = None  # fine-tune from a timm tag, weights file, our checkpoint or akamaster:NAME
    freeze: str | None = None  # with pretrained: freeze stem and stages up to this one (None: nothing)
    backbone_lr_scale: float | None = None  # with pretrained: backbone lr = lr * this (None: 0.1); the head gets lr
    hflip: float = 0.5  # augmentation (see `augment`): timm's names and meanings
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    aa: str | None = None
    reprob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float | None = None  # None: 0.1 on a small folder, else 0 (`recipe`)
    ema_decay: float | None = None  # EMA of the weights, per step; 0: none; None: on a small folder (`recipe`)
    calibrate: str = may_differ("auto", "applied to the kept weights after the last epoch")  # auto: small folder
    folder_cache: str = "auto"  # folders: decode once into memory (auto: small images that fit), on, off
    # a state file a run wrote (<out>.<run>.step*.state.pt), or "auto": the newest of this run's settings beside out
    resume: str | None = may_differ(None, "the state to continue from")
    keep: int = may_differ(2, "how many of the run's states are kept beside out (the newest)")

    def __post_init__(self) -> None:
        if self.arch not in REGISTRY:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(list_archs())}")
        if self.data not in ("shapes", "cifar10", "cifar100") and not self.data.startswith("folder:"):
            raise ValueError(f"unknown data {self.data!r}; choose shapes, cifar10, cifar100 or folder:PATH")
        if self.opt not in DEFAULT_WD or self.sched not in ("cosine", "onecycle"):
            raise ValueError(f"opt must be sgd|adamw|adam and sched cosine|onecycle, not {self.opt!r}, {self.sched!r}")
        if self.data.startswith("cifar") and self.size not in (None, 32):
            raise ValueError(f"CIFAR images are 32 px; --size {self.size} does not apply to {self.data}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 0.0 < self.val_fraction < 1.0 or self.workers < 0:
            raise ValueError(f"val_fraction must lie in (0, 1) and workers be >= 0 (got {self.val_fraction}, "
                             f"{self.workers})")
        if self.test_seed in self.data_seeds()[:2]:
            raise ValueError(f"test seed {self.test_seed} collides with the training/validation seeds")
        if min(self.n_val, self.n_test, self.keep, *(v for v in (self.epochs, self.steps, self.patience) if v
                                                       is not None)) < 1:
            raise ValueError("epochs, steps, patience, n_val, n_test and keep must each be at least 1")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1) (0: no average of the weights), not {self.ema_decay}")
        if self.data == "shapes" and self.n_train < (self.batch_size or BATCH):
            raise ValueError(f"n_train ({self.n_train}) must be at least one batch ({self.batch_size or BATCH})")
        if self.pretrained is None and (self.freeze is not None or self.backbone_lr_scale is not None):
            raise ValueError("--freeze and --backbone-lr-scale are for fine-tuning: add --pretrained TAG|FILE")
        if self.freeze is not None and self.freeze not in finetune.arch_parts(self.arch):
            raise ValueError(f"--freeze {self.freeze} is not a part of {self.arch}; choose one of "
                             f"{', '.join(finetune.arch_parts(self.arch))}")
        if self.out is not None and not self.out.strip():  # `--out "$OUT"` with OUT unset: a run that saves nothing
            raise ValueError("--out is empty: give a path for the run's files (e.g. runs/mine), or leave it out")
        if self.folder_cache not in ("auto", "on", "off") or self.calibrate not in ("auto", "on", "off"):
            raise ValueError(f"--folder-cache and --calibrate take auto, on or off, not {self.folder_cache!r}, "
                             f"{self.calibrate!r}")
        image_only = self.augment.image_options()
        if image_only and self.folder_cache == "on":
            raise ValueError(f"{' and '.join(image_only)} act on decoded images, which --folder-cache on does not "
                             "keep (it trains from memory with pad-and-crop): use --folder-cache auto or off")
        if image_only and not self.data.startswith("folder:"):
            raise ValueError(f"{' and '.join(image_only)} act on images, so only on folder:PATH data; {self.data} "
                             "trains from tensors (use --hflip, --mixup, --cutmix or --smoothing there)")
        if not (self.lr_scale >= 0 and math.isfinite(self.lr_scale)):
            raise ValueError(f"--backbone-lr-scale must be a finite number >= 0, not {self.backbone_lr_scale}")

    @property
    def augment(self) -> Augment:
        """The run's augmentation (ValueError for values out of range)."""
        return Augment(self.hflip, tuple(self.scale) if self.scale else None,
                       tuple(self.ratio) if self.ratio else None, self.aa, self.reprob, self.mixup, self.cutmix,
                       self.smoothing or 0.0)  # None (the recipe's choice) is resolved in `recipe`

    @property
    def image_size(self) -> int:
        cifar = self.data.startswith("cifar") or REGISTRY[self.arch].stem == "cifar"
        return self.size or (32 if cifar else 64)

    @property
    def lr_scale(self) -> float:
        """The backbone's share of `lr` when fine-tuning."""
        return DEFAULT_BACKBONE_LR_SCALE if self.backbone_lr_scale is None else self.backbone_lr_scale

    @property
    def weight_decay(self) -> float:
        return DEFAULT_WD[self.opt] if self.wd is None else self.wd

    def data_seeds(self) -> tuple[int, int, int]:
        """(train, val, test) seeds of the Shapes sets."""
        return self.seed, self.seed + 1, self.test_seed

    def cli(self) -> str:
        """The full `python -m resnet_lab train ...` command for this config."""
        args = ["python", "-m", "resnet_lab", "train"]
        for k, v in asdict(self).items():
            flag = "--" + k.replace("_", "-")
            if k in ("clutter", "checksum"):
                args += [] if v else ["--no-" + k]
            elif isinstance(v, bool):
                args += [flag] if v else []
            elif isinstance(v, (tuple, list)):
                args += [flag, *map(str, v)]
            elif v is not None:
                args += [flag, str(v)]
        return shlex.join(args)


# what a state must share with the run that continues it, derived from the declaration above (one place)
RESUME_MAY_DIFFER: dict[str, str] = {f.name: f.metadata["resume"] for f in fields(TrainConfig)
                                     if "resume" in f.metadata}
RESUME_MUST_MATCH: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if "resume" not in f.metadata)
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `train` command's options: one per `TrainConfig` field, with the same defaults."""
    d = TrainConfig()
    small = f"on a folder of fewer than {SMALL_SET:,} training images"
    p.add_argument("--arch", default=d.arch, choices=list_archs(), metavar="ARCH", help="any registered arch")
    p.add_argument("--data", default=d.data, help="shapes, cifar10, cifar100 or folder:PATH (PATH/<class>/<image>)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (default $RESNET_LAB_DATA)")
    p.add_argument("--download", action="store_true", help="fetch the official CIFAR archive if missing")
    p.add_argument("--no-checksum", dest="checksum", action="store_false", help="CIFAR-format files of your own")
    p.add_argument("--val-fraction", type=number(0, 1, lo_open=True, hi_open=True), default=d.val_fraction,
                   help="CIFAR/folder share held out as val")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="auto: on CUDA the faster of fp32 and bf16/fp16, timed on this model; fp32 on CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager if that fails)")
    p.add_argument("--workers", type=int_in(0, 64), default=d.workers, help="DataLoader workers for image folders")
    p.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                   help="fine-tune from these weights: a timm tag (resnet50.a1_in1k), a .safetensors/.pth file, a "
                        "checkpoint of ours or akamaster:NAME; the head is replaced for the data's classes")
    p.add_argument("--freeze", default=None, choices=["nothing", "stem", "layer1", "layer2", "layer3", "layer4"],
                   help="with --pretrained: freeze the stem and stages up to this one (their BatchNorm stays in eval)")
    p.add_argument("--backbone-lr-scale", type=number(0), default=None,
                   help=f"with --pretrained: backbone lr = lr * this (default {DEFAULT_BACKBONE_LR_SCALE}); head: lr")
    p.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help=f"passes over the training set; wins over --steps (default: from the step budget {small}, "
                        "else 15)")
    p.add_argument("--steps", type=positive_int, default=d.steps,
                   help=f"a step budget: epochs = ceil(steps / steps an epoch) (default: {SMALL_STEPS} x "
                        f"{BATCH} / batch {small}, else none)")
    p.add_argument("--n-train", type=positive_int, default=d.n_train)
    p.add_argument("--n-val", type=positive_int, default=d.n_val)
    p.add_argument("--n-test", type=positive_int, default=d.n_test, help="held-out images for the reported accuracy")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="images per optimizer step in all: under torchrun the GLOBAL batch, split evenly over the "
                        f"processes (B/N each), so --lr and the schedule mean the same on any number of GPUs (default "
                        f"{BATCH}; {small}: halved down to 32 until an epoch has {SMALL_EPOCH_STEPS} steps)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), "
                        "not each process's B/N share")
    p.add_argument("--lr", type=number(0, lo_open=True), default=d.lr, help="peak learning rate")
    p.add_argument("--opt", default=d.opt, choices=list(DEFAULT_WD))
    p.add_argument("--sched", default=d.sched, choices=["cosine", "onecycle"])
    p.add_argument("--wd", type=number(0), default=None, help="weight decay (default: 5e-4 SGD, 0.05 AdamW, 0 Adam)")
    p.add_argument("--patience", type=positive_int, default=d.patience,
                   help="epochs without a better val accuracy before stopping (default: 5; off under a step budget)")
    p.add_argument("--seed", type=seed, default=d.seed, help="init, order and training data; val data use seed+1")
    p.add_argument("--test-seed", type=seed, default=d.test_seed)
    p.add_argument("--size", type=int_in(8, 1024), default=None,
                   help="image side (default 32 for CIFAR nets, 64 for ImageNet)")
    p.add_argument("--no-clutter", dest="clutter", action="store_false")
    p.add_argument("--out", type=writable("file"), default=None,
                   help="where the run's files go: OUT.safetensors + OUT.json (the suffix added: runs/x.v2 gives "
                        "runs/x.v2.safetensors) and its states OUT.<run>.step*.state.pt; under torchrun rank 0 "
                        "writes them")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: $RESNET_LAB_DEVICE, else cuda when present; under torchrun "
                        "each process takes cuda:LOCAL_RANK)")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("augmentation", "timm's names and meanings; defaults suit the data (see README)")
    g.add_argument("--hflip", type=number(0, 1), default=d.hflip,
                   help="left-right flip probability (0 for data a mirror changes: digits, text)")
    g.add_argument("--scale", type=number(0, lo_open=True), nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="folders: RandomResizedCrop area range (default: timm's 0.08 1 above 64 px; at 64 px and "
                        "below pad-and-crop, the CIFAR recipe)")
    g.add_argument("--ratio", type=number(0, lo_open=True), nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="folders: RandomResizedCrop aspect range (default 3/4 4/3)")
    g.add_argument("--aa", default=None, help="folders: AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5")
    g.add_argument("--reprob", type=number(0, 1), default=d.reprob, help="folders: random erasing probability")
    g.add_argument("--mixup", type=number(0), default=d.mixup, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=number(0), default=d.cutmix, help="CutMix alpha (0: off)")
    g.add_argument("--smoothing", type=number(0, 1), default=d.smoothing,
                   help=f"label smoothing (default: {SMALL_SMOOTHING} {small}, else 0)")
    p.add_argument("--ema-decay", type=number(0, 1, hi_open=True), default=d.ema_decay,
                   help="an EMA of the weights, updated every step, validated each epoch beside the raw weights: "
                        f"the better is kept (0: none; default {SMALL_EMA_DECAY} {small}, else 0)")
    p.add_argument("--calibrate", default=d.calibrate, choices=["auto", "on", "off"],
                   help="temperature scaling: one T fitted on the validation split's NLL and folded into the "
                        f"head, so probabilities are calibrated and no prediction changes (auto: on {small[3:]}, "
                        "else off)")
    p.add_argument("--folder-cache", default=d.folder_cache, choices=["auto", "on", "off"],
                   help="folders: decode every image once and train from memory on the device, as CIFAR (auto: "
                        "images of 64 px or less with no image-only augmentation, when they fit a quarter of the "
                        "free memory); off: stream through the DataLoader")
    p.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue a run from a state it wrote (<out>.<run>.step*.state.pt: model, optimizer, "
                        "schedule, data order, best so far; written after every epoch and on SIGTERM/SIGINT), or "
                        "auto: the newest beside --out of a run with these settings. Options that change the run "
                        "must be the same (all but --out, --device, --workers, --patience, --keep and a few more)")
    p.add_argument("--keep", type=int_in(1, 1000), default=d.keep,
                   help="training states kept beside --out (the newest)")
