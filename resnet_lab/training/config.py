"""What a training run is: `TrainConfig` (every choice, validated up front) and the `train` command's arguments.

Kept apart from the loop so the CLI, the tests and the benchmarks can build and check a config without importing
the trainer. `TrainConfig.cli()` turns a config back into the command that repeats it, every option spelled out
(the checkpoint's JSON records it).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import settings
from ..cli.args import int_in, number, positive_int, writable
from ..cli.args import seed as cli_seed
from ..models.resnet import REGISTRY, list_archs
from ..runtime.precision import PRECISIONS
from ..settings import group, option
from . import finetune
from .augment import Augment
from .recipe import BATCH, SMALL_EMA_DECAY, SMALL_EPOCH_STEPS, SMALL_FOLDER, SMALL_STEPS

DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05, "adam": 0.0}
DEFAULT_BACKBONE_LR_SCALE = 0.1  # fine-tuning: the pretrained part moves 10x slower than the new head
SCHEDULES = ("cosine", "onecycle")
CALIBRATE = ("auto", "on", "off")  # --calibrate: temperature scaling (auto: a small folder)
FOLDER_CACHE = ("auto", "on", "off")
# what --freeze accepts on some net, shallow to deep (each net's own: `finetune.arch_parts`)
FREEZE_PARTS = tuple(dict.fromkeys(part for arch in list_archs() for part in finetune.arch_parts(arch)))


@dataclass
class TrainConfig:
    """One training run, each option declared once (`settings.option`: default, help, accepted values, and
    `may_differ` for the few a resumed run may change): the `train` command's options, the run JSON's `config`
    (`options()`) and what a resumed state must match are all read off this declaration. `cli()` turns it back
    into the command that repeats it."""

    arch: str = option("resnet20", "any registered arch", choices=list_archs, metavar="ARCH")
    data: str = option("shapes", "shapes, cifar10, cifar100 or folder:PATH (PATH/<class>/<image>)")
    data_dir: str | None = option(None, "folder holding cifar-10-batches-py/ (default $RESNET_LAB_DATA)",
                                  may_differ="where the data set --data names is found (moved to another machine)")
    download: bool = option(False, "fetch the official CIFAR archive if missing",
                            may_differ="whether missing files may be fetched, not which")
    checksum: bool = option(True, "CIFAR-format files of your own",
                            may_differ="whether the files are verified, not which")
    val_fraction: float = option(0.1, "CIFAR/folder share held out as val",
                                 type=number(0, 1, lo_open=True, hi_open=True))
    precision: str = option("auto", "auto: on CUDA the faster of fp32 and bf16/fp16, timed on this model; fp32 on CPU",
                            choices=PRECISIONS)
    channels_last: bool = option(False, may_differ="a memory layout of the same model")
    compile: bool = option(False, "torch.compile the model (eager if that fails)",
                           may_differ="how the same model is run")
    workers: int = option(2, "DataLoader workers for image folders", type=int_in(0, 64),
                          may_differ="how many processes decode (a folder's augmentation draws follow the count: then "
                                     "close, not bit-identical)")
    pretrained: str | None = option(  # a timm tag, weights file, our checkpoint or akamaster:NAME
        None, "fine-tune from these weights: a timm tag (resnet50.a1_in1k), a .safetensors/.pth file, a checkpoint "
              "of ours or akamaster:NAME; the head is replaced for the data's classes", metavar="TAG|FILE")
    freeze: str | None = option(None, "with --pretrained: freeze the stem and stages up to this one (their BatchNorm "
                                      "stays in eval)", choices=FREEZE_PARTS)
    backbone_lr_scale: float | None = option(
        None, f"with --pretrained: backbone lr = lr * this (default {DEFAULT_BACKBONE_LR_SCALE}); head: lr",
        type=number(0))
    epochs: int | None = option(None, f"passes over the training set; wins over --steps (default: from the step "
                                      f"budget {SMALL_FOLDER}, else 15)", type=positive_int)
    steps: int | None = option(None, f"a step budget: epochs = ceil(steps / steps an epoch) (default: {SMALL_STEPS} "
                                     f"x {BATCH} / batch {SMALL_FOLDER}, else none)", type=positive_int)
    n_train: int = option(20_000, type=positive_int)
    n_val: int = option(2_000, type=positive_int)
    n_test: int = option(2_000, "held-out images for the reported accuracy", type=positive_int)
    batch_size: int | None = option(
        None, "images per optimizer step in all: under torchrun the GLOBAL batch, split evenly over the processes "
              "(B/N each), so --lr and the schedule mean the same on any number of GPUs (default "
              f"{BATCH}; {SMALL_FOLDER}: halved down to 32 until an epoch has {SMALL_EPOCH_STEPS} steps)",
        type=positive_int)
    sync_bn: bool = option(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), not "
                                  "each process's B/N share")
    lr: float = option(0.1, "peak learning rate", type=number(0, lo_open=True))
    opt: str = option("sgd", choices=tuple(DEFAULT_WD))
    sched: str = option("onecycle", choices=SCHEDULES)
    wd: float | None = option(None, "weight decay (default: 5e-4 SGD, 0.05 AdamW, 0 Adam)", type=number(0))
    patience: int | None = option(None, "epochs without a better val accuracy before stopping (default: 5; off under "
                                        "a step budget)", type=positive_int,
                                  may_differ="when to stop early; the state keeps the counter")
    seed: int = option(0, "init, order and training data; val data use seed+1", type=cli_seed)
    test_seed: int = option(999, type=cli_seed)
    size: int | None = option(None, "image side (default 32 for CIFAR nets, 64 for ImageNet)", type=int_in(8, 1024))
    clutter: bool = option(True)
    out: str | None = option(None, "where the run's files go: OUT.safetensors + OUT.json (the suffix added: "
                                   "runs/x.v2 gives runs/x.v2.safetensors) and its states OUT.<run>.step*.state.pt; "
                                   "under torchrun rank 0 writes them", type=writable("file"),
                             may_differ="where states and the checkpoint go: a run may be continued elsewhere")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: $RESNET_LAB_DEVICE, else cuda when present; "
                                      "under torchrun each process takes cuda:LOCAL_RANK)",
                                may_differ="where the same arithmetic runs (another device: close, not bit-identical)")
    quiet: bool = option(False, may_differ="what is printed")
    augment: Augment = group(Augment, "augmentation", "timm's names and meanings; defaults suit the data (see README)")
    ema_decay: float | None = option(
        None, "an EMA of the weights, updated every step, validated each epoch beside the raw weights: the better is "
              f"kept (0: none; default {SMALL_EMA_DECAY} {SMALL_FOLDER}, else 0)", type=number(0, 1, hi_open=True))
    calibrate: str = option(
        "auto", "temperature scaling: one T fitted on the validation split's NLL and folded into the head, so "
                f"probabilities are calibrated and no prediction changes (auto: on {SMALL_FOLDER[3:]}, else off)",
        choices=CALIBRATE, may_differ="applied to the kept weights after the last epoch")
    folder_cache: str = option("auto", "folders: decode every image once and train from memory on the device, as "
                                       "CIFAR (auto: images of 64 px or less with no image-only augmentation, when "
                                       "they fit a quarter of the free memory); off: stream through the DataLoader",
                               choices=FOLDER_CACHE)
    resume: str | None = option(
        None, "continue a run from a state it wrote (<out>.<run>.step*.state.pt: model, optimizer, schedule, data "
              "order, best so far; written after every epoch and on SIGTERM/SIGINT), or auto: the newest beside --out "
              "of a run with these settings. Options that change the run must be the same (all but --out, --device, "
              "--workers, --patience, --keep and a few more)", metavar="PATH|auto",
        may_differ="the state to continue from")
    keep: int = option(2, "training states kept beside --out (the newest)", type=int_in(1, 1000),
                       may_differ="how many of the run's states are kept beside out (the newest)")

    def __post_init__(self) -> None:
        if self.arch not in REGISTRY:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(list_archs())}")
        if self.data not in ("shapes", "cifar10", "cifar100") and not self.data.startswith("folder:"):
            raise ValueError(f"unknown data {self.data!r}; choose shapes, cifar10, cifar100 or folder:PATH")
        if self.opt not in DEFAULT_WD or self.sched not in SCHEDULES:
            raise ValueError(f"opt must be {'|'.join(DEFAULT_WD)} and sched {'|'.join(SCHEDULES)}, not {self.opt!r}, "
                             f"{self.sched!r}")
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
        if self.folder_cache not in FOLDER_CACHE:
            raise ValueError(f"--folder-cache takes {', '.join(FOLDER_CACHE[:-1])} or {FOLDER_CACHE[-1]}, not "
                             f"{self.folder_cache!r}")
        if self.calibrate not in CALIBRATE:
            raise ValueError(f"--calibrate takes auto, on or off, not {self.calibrate!r}")
        image_only = self.augment.image_options()
        if image_only and self.folder_cache == "on":
            raise ValueError(f"{' and '.join(image_only)} act on decoded images, which --folder-cache on does not "
                             "keep (it trains from memory with pad-and-crop): use --folder-cache auto or off")
        if image_only and not self.data.startswith("folder:"):
            raise ValueError(f"{' and '.join(image_only)} act on images, so only on folder:PATH data; {self.data} "
                             "trains from tensors (use --hflip, --mixup, --cutmix or --smoothing there)")
        if not (self.lr_scale >= 0 and math.isfinite(self.lr_scale)):
            raise ValueError(f"--backbone-lr-scale must be a finite number >= 0, not {self.backbone_lr_scale}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, /, **more: Any) -> TrainConfig:
        """A config from flat options, as the command line, the run JSON's `config` and a state's hold them (the
        augmentation's among the rest, as before it was nested); an option left out takes its default."""
        return settings.from_flat(cls, {**(options or {}), **more})

    def options(self) -> dict[str, Any]:
        """Every option, flat (`--hflip` is "hflip"): what the run JSON and the states keep under `config`."""
        return settings.flat(self)

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
        values = self.options()
        for d in settings.declared(type(self)):
            v = values[d.name]
            if isinstance(d.default, bool):  # a switch: given when it is not at its default (--no-clutter)
                args += [d.flag] if v != d.default else []
            elif isinstance(v, (tuple, list)):
                args += [d.flag, *map(str, v)]
            elif v is not None:
                args += [d.flag, str(v)]
        return shlex.join(args)


# what a state must share with the run that continues it, read off the declaration above (one place)
RESUME_MAY_DIFFER: dict[str, str] = settings.may_differ(TrainConfig)
RESUME_MUST_MATCH: tuple[str, ...] = settings.must_match(TrainConfig)
DEFAULTS: dict[str, Any] = settings.defaults(TrainConfig)
