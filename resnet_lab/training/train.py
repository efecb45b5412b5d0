"""Train any registered arch on Shapes (the models whose explanations we can check), CIFAR-10/100 or an image folder.

The data come from three disjoint seeds: `seed` for training, `seed + 1` for
validation (early stopping and the choice of the best epoch) and `test_seed`
for the accuracy reported in the checkpoint, which nothing was tuned on.
CIFAR's validation set is a seeded stratified `val_fraction` of its training batches (test_batch stays the
test set); a folder's is its val/ (or a stratified split), with a test set only where PATH/test exists.
Batches come from `loaders`; this module only runs the loop. The checkpoint's JSON carries everything
`weights.load_checkpoint` and the app need (arch, classes, mean/std, input size) plus the command that made it.
Under `torchrun --nproc-per-node N` the same loop runs in N processes (DDP, see `distributed`): `batch_size` stays
the global batch of a step, each rank trains on its share, accuracies are summed over ranks, rank 0 logs and writes.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from ..precision import DTYPES, PRECISIONS, choose_train_precision, cuda_half_dtype, dtype_name
from ..progress import Progress
from ..resnet import REGISTRY, build, init_seed, list_archs
from ..shapes import CLASSES, MEAN, STD, ShapesDataset, normalize
from ..weights import WeightsUnavailable, save_checkpoint
from . import finetune
from .distributed import (
    Dist,
    all_reduce_sum,
    cleanup,
    device_for,
    env_rank,
    env_world_size,
    gather_objects,
    setup,
    unwrap,
    wrap,
)
from .loaders import Batches, LoaderBatches, ShapesBatches, TensorBatches, per_rank_batch, stratified_indices

DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05, "adam": 0.0}
DEFAULT_BACKBONE_LR_SCALE = 0.1  # fine-tuning: the pretrained part moves 10x slower than the new head
EVAL_BATCH = 256


@dataclass
class TrainConfig:
    """One training run; `cli()` turns it back into the command that repeats it."""

    arch: str = "resnet20"
    data: str = "shapes"
    epochs: int = 15
    n_train: int = 20_000
    n_val: int = 2_000
    n_test: int = 2_000
    batch_size: int = 128
    lr: float = 0.1
    opt: str = "sgd"
    sched: str = "onecycle"
    wd: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    patience: int = 5
    seed: int = 0
    test_seed: int = 999
    size: int | None = None  # None: 32 for the CIFAR nets, 64 for the ImageNet ones
    clutter: bool = True
    out: str | None = None
    device: str | None = None
    quiet: bool = False
    data_dir: str | None = None
    download: bool = False
    checksum: bool = True
    val_fraction: float = 0.1
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    workers: int = 2
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each rank's share
    pretrained: str | None = None  # fine-tune from a timm tag, weights file, our checkpoint or akamaster:NAME
    freeze: str | None = None  # with pretrained: freeze stem and stages up to this one (None: nothing)
    backbone_lr_scale: float | None = None  # with pretrained: backbone lr = lr * this (None: 0.1); the head gets lr

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
        if min(self.epochs, self.n_val, self.n_test) < 1:
            raise ValueError("epochs, n_val and n_test must each be at least 1")
        if self.data == "shapes" and self.n_train < self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be at least one batch ({self.batch_size})")
        if self.pretrained is None and (self.freeze is not None or self.backbone_lr_scale is not None):
            raise ValueError("--freeze and --backbone-lr-scale are for fine-tuning: add --pretrained TAG|FILE")
        if self.freeze is not None and self.freeze not in finetune.arch_parts(self.arch):
            raise ValueError(f"--freeze {self.freeze} is not a part of {self.arch}; choose one of "
                             f"{', '.join(finetune.arch_parts(self.arch))}")
        if not (self.lr_scale >= 0 and math.isfinite(self.lr_scale)):
            raise ValueError(f"--backbone-lr-scale must be a finite number >= 0, not {self.backbone_lr_scale}")

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
            elif v is not None:
                args += [flag, str(v)]
        return shlex.join(args)


@dataclass
class TrainResult:
    """What a run produced: per-epoch history, the best (restored) model and its scores."""

    history: list[dict[str, float]]
    best_acc: float  # validation accuracy of the kept weights
    test_acc: float
    model: nn.Module
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pieces


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict(model: nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """(predicted class, label) for every item of a dataset of unnormalized images, in eval mode."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    preds, labels = [], []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        x = normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
        preds.append(model(x).argmax(1).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def accuracy(model: nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on a dataset of unnormalized images (it normalizes them)."""
    preds, labels = predict(model, dataset, batch_size)
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov), AdamW or Adam (coupled L2, default 0); no weight decay on BN and biases.
    Fine-tuning: the head at `lr`, the backbone at `lr * lr_scale`, frozen parameters left out."""
    if config.pretrained:
        groups = finetune.param_groups(model, config.lr, config.lr_scale, config.weight_decay)
    else:
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return (torch.optim.Adam if config.opt == "adam" else torch.optim.AdamW)(groups, lr=config.lr)


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler:
    """Stepped once per batch: cosine to zero, or one-cycle (30% warm-up). Each group peaks at its own lr (a
    scalar max_lr would give a fine-tuned backbone the head's rate)."""
    if config.sched == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=0.3)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def initial_model(config: TrainConfig) -> nn.Module:
    """The untrained net of a run: a function of `config.seed` alone, drawn without torch's global RNG.

    `init_seed` gives the seed that `torch.manual_seed(seed)` + `build()` used to draw, so the shipped
    checkpoint's command still starts from the same weights, and another thread using the global RNG
    meanwhile (another tab's event) changes nothing.
    """
    return build(config.arch, num_classes=len(CLASSES), seed=init_seed(config.seed))


def shapes_data_config(size: int) -> dict[str, Any]:
    """What the checkpoint JSON tells `load_checkpoint` (and timm's eval transform) about the input."""
    return {"input_size": [3, size, size], "mean": list(MEAN), "std": list(STD), "crop_pct": 1.0,
            "interpolation": "bilinear"}


# ----------------------------------------------------------------------------- the loop


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). auto: fp32 on CPU; on CUDA bf16 where the GPU does it natively, else fp16
    (with a GradScaler). fp16 on CPU is refused: CPU autocast to fp16 is slower than fp32 and has no scaler."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (it uses a GradScaler); on CPU use fp32 or bf16")
    if precision == "auto":
        return cuda_half_dtype(device)  # bf16 where native, else fp16; `_train` may then measure fp32 against it
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _precision(config: TrainConfig, model: nn.Module, size: int, dtype: torch.dtype | None, channels_last: bool,
               dist: Dist, log: Callable[[str], None]) -> tuple[torch.dtype | None, dict[str, Any]]:
    """`--precision auto` on CUDA times fp32 against the GPU's half dtype on this model and keeps the faster (a
    ResNet-20 at 32 px trains faster in fp32/TF32, a ResNet-50 at 224 px in bf16); every rank takes rank 0's choice."""
    if config.precision != "auto" or dist.device.type != "cuda":
        return dtype, {"policy": config.precision, "choice": dtype_name(dtype), "measured": False}
    dtype, record = choose_train_precision(model, (3, size, size), per_rank_batch(config.batch_size, dist),
                                           dist.device, log=log, channels_last=channels_last)
    choice = gather_objects(record["choice"], dist)[0]
    return DTYPES[choice], {**record, "choice": choice}


def maybe_compile(model: nn.Module, enabled: bool, log: Callable[[str], None]) -> nn.Module:
    """`torch.compile(model)` when asked, the eager model (and one log line) where compiling fails."""
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # no compiler toolchain, unsupported platform...: train eagerly rather than not at all
        log(f"torch.compile failed ({type(e).__name__}: {e}); training in eager mode")
        return model


class _Forward:
    """Calls the compiled model; if its first (compiling) call fails, falls back to eager once, with one log line."""

    def __init__(self, compiled: nn.Module, eager: nn.Module, log: Callable[[str], None]) -> None:
        self.fn, self.eager, self.log, self.checked = compiled, eager, log, compiled is eager

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.checked:
            return self.fn(x)
        try:
            out = self.fn(x)
        except Exception as e:  # compilation errors surface at the first call
            self.log(f"torch.compile failed at the first batch ({type(e).__name__}); training in eager mode")
            self.fn, out = self.eager, self.eager(x)
        self.checked = True
        return out


@torch.inference_mode()
def batches_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, batches: Batches,
                     dtype: torch.dtype | None = None, dist: Dist = Dist()) -> float:
    """Top-1 accuracy over `batches` in eval mode (autocast to `dtype` when given); with `dist`, over every
    rank's share (correct and seen summed: exactly the single-process number)."""
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            correct += int((forward(x).argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    correct, seen = all_reduce_sum(torch.tensor([correct, seen]), dist).tolist()
    return correct / seen if seen else float("nan")


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One backward and update; through the GradScaler when fp16 needs one (bf16 and fp32 do not)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def _epoch(forward, model, batches, opt, sched, scaler, dtype, bar_desc, quiet, report, dist) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy) over it (over all ranks' shares)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    seen = 0
    bar = tqdm(batches, desc=bar_desc, disable=quiet, leave=False, mininterval=1.0, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer_step(loss, opt, scaler)
        sched.step()
        loss_sum += loss.detach().double() * len(y)  # kept on the device: no sync per step on a GPU
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if not quiet:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.3g}")
        report(step + 1, len(batches))
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(seen)]), dist)
    loss_sum, correct, seen = totals.tolist()
    return loss_sum / seen, correct / seen


@dataclass
class RunData:
    """What `make_data` gives the loop: batches for each split, the class names and what to record about them."""

    train: Batches
    val: Batches
    test: Batches | None
    classes: list[str]
    record: dict[str, Any]


def make_data(config: TrainConfig, pretrained_cfg: dict[str, Any], device: torch.device,
              generator: torch.Generator, log: Callable[[str], None], dist: Dist = Dist()) -> RunData:
    """The run's batches from `config.data`; `pretrained_cfg` gives mean/std and input size (CIFAR, folders);
    under torchrun each split is this rank's share (see `loaders`)."""
    t0 = time.perf_counter()
    bs, d = config.batch_size, dist
    if config.data == "shapes":
        size = config.image_size
        train_seed, val_seed, test_seed = config.data_seeds()
        sets = [ShapesDataset(n, s, size, config.clutter)
                for n, s in ((config.n_train, train_seed), (config.n_val, val_seed), (config.n_test, test_seed))]
        log(f"rendered {len(sets[0])} + {len(sets[1])} images of {size} px in {time.perf_counter() - t0:.1f} s")
        return RunData(
            ShapesBatches(sets[0], bs, device, generator, train=True, dist=d),
            ShapesBatches(sets[1], EVAL_BATCH, device, dist=d), ShapesBatches(sets[2], EVAL_BATCH, device, dist=d),
            list(CLASSES),
            {"name": "shapes", "clutter": config.clutter, "train_seed": train_seed, "val_seed": val_seed,
             "test_seed": test_seed, "n_train": config.n_train, "n_val": config.n_val, "n_test": config.n_test})
    mean, std, cl = pretrained_cfg["mean"], pretrained_cfg["std"], config.channels_last
    if config.data in ("cifar10", "cifar100"):
        from .datasets import cifar_root, load_cifar

        kw = dict(root=config.data_dir, checksum=config.checksum, download=config.download)
        images, labels, classes = load_cifar(config.data, train=True, **kw)
        test_images, test_labels, _ = load_cifar(config.data, train=False, **kw)
        tr, va = stratified_indices(labels, len(classes), config.val_fraction, config.seed)
        log(f"read {config.data}: {len(tr)} train, {len(va)} val, {len(test_labels)} test in "
            f"{time.perf_counter() - t0:.1f} s")

        def counts(lab: torch.Tensor) -> dict[str, int]:
            return dict(zip(classes, torch.bincount(lab, minlength=len(classes)).tolist()))

        return RunData(
            TensorBatches(images[tr], labels[tr], mean, std, bs, device, generator, True, cl, d),
            TensorBatches(images[va], labels[va], mean, std, EVAL_BATCH, device, channels_last=cl, dist=d),
            TensorBatches(test_images, test_labels, mean, std, EVAL_BATCH, device, channels_last=cl, dist=d), classes,
            {"name": config.data, "root": str(cifar_root(config.data_dir)), "checksum": config.checksum,
             "val_fraction": config.val_fraction, "val_seed": config.seed,
             "counts": {"train": counts(labels[tr]), "val": counts(labels[va]), "test": counts(test_labels)},
             "skipped": []})
    from ..data import eval_transform, resize_side
    from .datasets import folder_files, image_folder, train_transform

    path = config.data.removeprefix("folder:")
    side = resize_side(pretrained_cfg)
    split = image_folder(path, config.val_fraction, config.seed, train_transform(pretrained_cfg),
                         eval_transform(pretrained_cfg), side)
    test_set, test_skipped = None, []
    if (split.root / "test").is_dir():
        test_set, test_skipped = folder_files(split.root / "test", split.classes, eval_transform(pretrained_cfg), side)
    w = config.workers
    counts = {**split.counts, **({"test": test_set.counts} if test_set is not None else {})}
    log(f"scanned {path}: {counts}; skipped {len(split.skipped) + len(test_skipped)} unreadable file(s)")
    return RunData(
        LoaderBatches(split.train, bs, device, w, generator, train=True, channels_last=cl, dist=d),
        LoaderBatches(split.val, EVAL_BATCH, device, w, channels_last=cl, dist=d),
        LoaderBatches(test_set, EVAL_BATCH, device, w, channels_last=cl, dist=d) if test_set is not None else None,
        list(split.classes),
        {"name": "folder", "root": str(split.root), "layout": split.layout, "val_fraction": config.val_fraction,
         "counts": counts, "test_split": "test/" if test_set is not None else "none: test_acc is the val accuracy",
         "skipped": [{"path": p, "reason": r} for p, r in split.skipped + test_skipped]})


def train(config: TrainConfig, progress: Progress | None = None, *, command: str | None = None) -> TrainResult:
    """Train `config.arch` on `config.data` with early stopping; keep (and save, if `config.out`) the best weights.

    `progress(fraction, desc)` is called after every step, for a UI progress bar;
    the terminal gets tqdm bars unless `config.quiet`. `command` is the command
    line as typed, for the record (`config.cli()`, with every option spelled out, is stored too).
    Under torchrun it joins the process group for the run and leaves it at the end, error or not.
    """
    dist = setup(config.device)
    try:
        return _train(config, dist, progress, command)
    finally:
        cleanup(dist)


def _train(config: TrainConfig, dist: Dist, progress: Progress | None, command: str | None) -> TrainResult:
    device = dist.device
    dtype = resolve_precision(config.precision, device)
    quiet = config.quiet or not dist.is_main  # one process speaks
    log = (lambda s: None) if quiet else tqdm.write
    shapes = config.data == "shapes"
    loaded = finetune.load_for(config.pretrained, config.arch) if config.pretrained else None
    size = config.image_size
    if loaded is not None and config.size is None and config.data.startswith("folder:"):
        size = finetune.data_config(loaded.pretrained_cfg, None)["input_size"][-1]  # the weights' own input size
    generator = torch.Generator().manual_seed(config.seed)
    start: finetune.Pretrained | None = None
    if shapes:
        if loaded is not None:  # Shapes batches are normalized with Shapes' mean/std, whatever the weights saw
            start = finetune.with_head(loaded, CLASSES, config.seed, config.pretrained)
            model = start.model
        else:
            model = initial_model(config)
        model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v
                                     for k, v in shapes_data_config(size).items()})
        data = make_data(config, model.pretrained_cfg, device, generator, log, dist)
    else:
        if loaded is not None:  # the weights' mean/std, crop and interpolation, at the run's size
            cfg = finetune.data_config(loaded.pretrained_cfg, size)
        else:
            probe = build(config.arch, seed=0)  # only its pretrained_cfg: mean/std and input size of the arch
            cfg = {**probe.pretrained_cfg, "input_size": (3, size, size)}
        data = make_data(config, cfg, device, generator, log, dist)
        if loaded is not None:
            start = finetune.with_head(loaded, data.classes, config.seed, config.pretrained)
            model = start.model
            model.pretrained_cfg = {**cfg, "num_classes": len(data.classes)}
        else:
            model = build(config.arch, num_classes=len(data.classes), seed=init_seed(config.seed))
            model.pretrained_cfg.update({k: cfg[k] for k in ("input_size", "mean", "std")})
    # before wrap: DDP reads requires_grad once; the eval hook sits on the model, so SyncBatchNorm swaps keep it
    frozen = finetune.freeze(model, config.freeze or finetune.NOTHING) if start is not None else []
    if start is not None:
        log(f"fine-tuning from {start.source}: head {start.head}, {len(frozen)} parameter tensors frozen "
            f"(up to {config.freeze or 'nothing'}), backbone lr x{config.lr_scale:g}")
    channels_last = shapes or config.channels_last
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dtype, precision_record = _precision(config, model, size, dtype, channels_last, dist, log)
    trained = wrap(model, dist, config.sync_bn)  # DDP under torchrun, else the model itself
    forward = _Forward(maybe_compile(trained, config.compile, log), trained, log)
    # evaluation runs on the bare model: ranks' shares may differ in batch count, and DDP's forward would sync
    evaluate = forward if trained is model else _Forward(maybe_compile(model, config.compile, log), model, log)
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, config.epochs * len(data.train))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    history: list[dict[str, float]] = []
    best_acc, best_state, best_epoch, stale = -1.0, None, 0, 0
    t_train = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()

        def report(step: int, steps: int, epoch: int = epoch) -> None:
            if progress is not None:
                progress(((epoch - 1) * steps + step) / (config.epochs * steps), f"epoch {epoch}/{config.epochs}")

        loss, acc = _epoch(forward, trained, data.train, opt, sched, scaler, dtype, f"epoch {epoch}/{config.epochs}",
                           quiet, report, dist)
        val_acc = batches_accuracy(evaluate, model, data.val, dtype, dist)  # the same on every rank: so are stops
        history.append({"epoch": epoch, "train_loss": loss, "train_acc": acc, "val_acc": val_acc,
                        "lr": sched.get_last_lr()[0], "time_s": time.perf_counter() - t_epoch})
        log(f"epoch {epoch:3d}  loss {loss:.4f}  train acc {acc:.4f}  val acc {val_acc:.4f}  "
            f"{history[-1]['time_s']:.1f} s")
        stale = 0 if val_acc > best_acc else stale + 1
        if val_acc >= best_acc:  # on a tie, the later (further annealed) weights
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stale >= config.patience:
            log(f"early stop: no better val accuracy for {config.patience} epochs")
            break
    train_time = time.perf_counter() - t_train
    model.load_state_dict(best_state)
    test_acc = batches_accuracy(evaluate, model, data.test, dtype, dist) if data.test is not None else best_acc
    log(f"best val acc {best_acc:.4f} (epoch {best_epoch}), test acc {test_acc:.4f}, {train_time:.0f} s")

    data_cfg = shapes_data_config(size) if shapes else {
        "input_size": [3, size, size], "mean": list(model.pretrained_cfg["mean"]),
        "std": list(model.pretrained_cfg["std"]), "crop_pct": model.pretrained_cfg.get("crop_pct", 1.0),
        "interpolation": model.pretrained_cfg.get("interpolation", "bilinear")}
    meta = {
        "arch": config.arch, "num_classes": len(data.classes), "classes": data.classes, **data_cfg,
        "seed": config.seed, "data": data.record,
        "val_acc": best_acc, "test_acc": test_acc, "test_acc_is_val": data.test is None,
        "best_epoch": best_epoch, "epochs_run": len(history),
        "train_time_s": round(train_time, 1),
        "epoch_time_s": round(sum(h["time_s"] for h in history) / len(history), 1),
        "device": str(device), "world_size": dist.world_size, "global_batch": config.batch_size,
        "per_rank_batch": config.batch_size // dist.world_size,
        "precision": dtype_name(dtype), "precision_choice": precision_record,
        "num_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "command": command or config.cli(), "command_full": config.cli(), "config": asdict(config),
        **({"pretrained": {**start.record(), "freeze": config.freeze or finetune.NOTHING,
                           "frozen_params": len(frozen), "backbone_lr_scale": config.lr_scale}} if start else {}),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
    model = unwrap(model).to(memory_format=torch.contiguous_format).eval()  # plain BatchNorm2d again
    path = save_checkpoint(model, config.out, meta) if config.out and dist.is_main else None
    if path:
        log(f"wrote {path} and {path.with_suffix('.json').name}")
    return TrainResult(history, best_acc, test_acc, model, path, meta)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--arch", default=d.arch, choices=list_archs(), metavar="ARCH", help="any registered arch")
    p.add_argument("--data", default=d.data, help="shapes, cifar10, cifar100 or folder:PATH (PATH/<class>/<image>)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (default $RESNET_LAB_DATA)")
    p.add_argument("--download", action="store_true", help="fetch the official CIFAR archive if missing")
    p.add_argument("--no-checksum", dest="checksum", action="store_false", help="CIFAR-format files of your own")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="CIFAR/folder share held out as val")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="auto: on CUDA the faster of fp32 and bf16/fp16, timed on this model; fp32 on CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager if that fails)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers for image folders")
    p.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                   help="fine-tune from these weights: a timm tag (resnet50.a1_in1k), a .safetensors/.pth file, a "
                        "checkpoint of ours or akamaster:NAME; the head is replaced for the data's classes")
    p.add_argument("--freeze", default=None, choices=["nothing", "stem", "layer1", "layer2", "layer3", "layer4"],
                   help="with --pretrained: freeze the stem and stages up to this one (their BatchNorm stays in eval)")
    p.add_argument("--backbone-lr-scale", type=float, default=None,
                   help=f"with --pretrained: backbone lr = lr * this (default {DEFAULT_BACKBONE_LR_SCALE}); head: lr")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--n-test", type=int, default=d.n_test, help="held-out images for the reported accuracy")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images per optimizer step in all: under torchrun the GLOBAL batch, split evenly over the "
                        "processes (B/N each), so --lr and the schedule mean the same on any number of GPUs")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), "
                        "not each process's B/N share")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--opt", default=d.opt, choices=list(DEFAULT_WD))
    p.add_argument("--sched", default=d.sched, choices=["cosine", "onecycle"])
    p.add_argument("--wd", type=float, default=None, help="weight decay (default: 5e-4 SGD, 0.05 AdamW, 0 Adam)")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without a better val accuracy")
    p.add_argument("--seed", type=int, default=d.seed, help="init, order and training data; val data use seed+1")
    p.add_argument("--test-seed", type=int, default=d.test_seed)
    p.add_argument("--size", type=int, default=None, help="image side (default 32 for CIFAR nets, 64 for ImageNet)")
    p.add_argument("--no-clutter", dest="clutter", action="store_false")
    p.add_argument("--out", default=None,
                   help="checkpoint path without suffix (.safetensors + .json); under torchrun rank 0 writes it")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda when present; under torchrun each process takes cuda:LOCAL_RANK)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .datasets import DatasetError

    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
        resolve_precision(config.precision, device_for(config.device))
        per_rank_batch(config.batch_size, Dist(world_size=env_world_size()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    typed = sys.argv[1:2] == ["train"]  # run from the command line, not through main(argv)
    try:
        result = train(config, command=shlex.join(["python", "-m", "resnet_lab", *sys.argv[1:]]) if typed else None)
    except (DatasetError, WeightsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if env_rank() == 0:
        print(f"val acc {result.best_acc:.4f}  test acc {result.test_acc:.4f}  epochs {len(result.history)}")
    return 0 if math.isfinite(result.test_acc) else 1
