"""Train any registered arch on Shapes: the models whose explanations we can check against ground truth.

The data come from three disjoint seeds: `seed` for training, `seed + 1` for
validation (early stopping and the choice of the best epoch) and `test_seed`
for the accuracy reported in the checkpoint, which nothing was tuned on.
The checkpoint's JSON carries everything `weights.load_checkpoint` and the
app need (arch, classes, mean/std, input size) plus the command that made it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from .inference import resolve_device
from .progress import Progress
from .resnet import REGISTRY, build, init_seed, list_archs
from .shapes import CLASSES, MEAN, STD, ShapesDataset, normalize
from .weights import save_checkpoint

DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}


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

    def __post_init__(self) -> None:
        if self.arch not in REGISTRY:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(list_archs())}")
        if self.data != "shapes":
            raise ValueError(f"unknown data {self.data!r}; only 'shapes' is supported")
        if self.opt not in DEFAULT_WD or self.sched not in ("cosine", "onecycle"):
            raise ValueError(f"opt must be sgd|adamw and sched cosine|onecycle, not {self.opt!r}, {self.sched!r}")
        if self.test_seed in self.data_seeds()[:2]:
            raise ValueError(f"test seed {self.test_seed} collides with the training/validation seeds")
        if min(self.epochs, self.n_val, self.n_test) < 1:
            raise ValueError("epochs, n_val and n_test must each be at least 1")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be at least one batch ({self.batch_size})")

    @property
    def image_size(self) -> int:
        return self.size or (32 if REGISTRY[self.arch].stem == "cifar" else 64)

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
            if k == "clutter":
                args += [] if v else ["--no-clutter"]
            elif k == "quiet":
                args += ["--quiet"] if v else []
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
    """SGD (momentum 0.9, Nesterov) or AdamW; no weight decay on BN and biases, as is usual."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler:
    """Stepped once per batch: cosine to zero, or one-cycle (30% warm-up)."""
    if config.sched == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.3)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def random_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right and/or up-down at random: every Shapes class is mirror-invariant."""
    h, v = (torch.rand(2, len(x), 1, 1, 1, generator=generator) < 0.5).to(x.device)
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)


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


def _epoch(model, loader, opt, sched, generator, device, bar_desc, quiet, report) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy) over it."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=bar_desc, disable=quiet, leave=False, mininterval=1.0, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar):
        x = normalize(random_flips(x, generator).to(device)).contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach().item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.3g}")
        report(step + 1, len(loader))
    return loss_sum / seen, correct / seen


def train(config: TrainConfig, progress: Progress | None = None, *, command: str | None = None) -> TrainResult:
    """Train `config.arch` on Shapes with early stopping; keep (and save, if `config.out`) the best weights.

    `progress(fraction, desc)` is called after every step, for a UI progress bar;
    the terminal gets tqdm bars unless `config.quiet`. `command` is the command
    line as typed, for the record (`config.cli()`, with every option spelled out, is stored too).
    """
    device = resolve_device(config.device)
    size = config.image_size
    train_seed, val_seed, test_seed = config.data_seeds()
    log = (lambda s: None) if config.quiet else tqdm.write
    t0 = time.perf_counter()
    train_set = ShapesDataset(config.n_train, train_seed, size, config.clutter)
    val_set = ShapesDataset(config.n_val, val_seed, size, config.clutter)
    log(f"rendered {len(train_set)} + {len(val_set)} images of {size} px in {time.perf_counter() - t0:.1f} s")

    model = initial_model(config)
    model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v
                                 for k, v in shapes_data_config(size).items()})
    model = model.to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                         generator=generator)
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, config.epochs * len(loader))

    history: list[dict[str, float]] = []
    best_acc, best_state, best_epoch, stale = -1.0, None, 0, 0
    t_train = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()

        def report(step: int, steps: int, epoch: int = epoch) -> None:
            if progress is not None:
                progress(((epoch - 1) * steps + step) / (config.epochs * steps), f"epoch {epoch}/{config.epochs}")

        loss, acc = _epoch(model, loader, opt, sched, generator, device, f"epoch {epoch}/{config.epochs}",
                           config.quiet, report)
        val_acc = accuracy(model, val_set)
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
    test_acc = accuracy(model, ShapesDataset(config.n_test, test_seed, size, config.clutter))
    log(f"best val acc {best_acc:.4f} (epoch {best_epoch}), test acc {test_acc:.4f} on seed {test_seed}, "
        f"{train_time:.0f} s")

    meta = {
        "arch": config.arch, "num_classes": len(CLASSES), "classes": list(CLASSES), **shapes_data_config(size),
        "seed": config.seed,
        "data": {"name": "shapes", "clutter": config.clutter, "train_seed": train_seed, "val_seed": val_seed,
                 "test_seed": test_seed, "n_train": config.n_train, "n_val": config.n_val, "n_test": config.n_test},
        "val_acc": best_acc, "test_acc": test_acc, "best_epoch": best_epoch, "epochs_run": len(history),
        "train_time_s": round(train_time, 1),
        "epoch_time_s": round(sum(h["time_s"] for h in history) / len(history), 1),
        "device": str(device), "num_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "command": command or config.cli(), "command_full": config.cli(), "config": asdict(config),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
    model = model.to(memory_format=torch.contiguous_format).eval()
    path = save_checkpoint(model, config.out, meta) if config.out else None
    if path:
        log(f"wrote {path} and {path.with_suffix('.json').name}")
    return TrainResult(history, best_acc, test_acc, model, path, meta)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--arch", default=d.arch, choices=list_archs(), metavar="ARCH", help="any registered arch")
    p.add_argument("--data", default=d.data, choices=["shapes"])
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--n-test", type=int, default=d.n_test, help="held-out images for the reported accuracy")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--opt", default=d.opt, choices=["sgd", "adamw"])
    p.add_argument("--sched", default=d.sched, choices=["cosine", "onecycle"])
    p.add_argument("--wd", type=float, default=None, help="weight decay (default: 5e-4 SGD, 0.05 AdamW)")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without a better val accuracy")
    p.add_argument("--seed", type=int, default=d.seed, help="init, order and training data; val data use seed+1")
    p.add_argument("--test-seed", type=int, default=d.test_seed)
    p.add_argument("--size", type=int, default=None, help="image side (default 32 for CIFAR nets, 64 for ImageNet)")
    p.add_argument("--no-clutter", dest="clutter", action="store_false")
    p.add_argument("--out", default=None, help="checkpoint path without suffix (.safetensors + .json)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    typed = sys.argv[1:2] == ["train"]  # run from the command line, not through main(argv)
    result = train(config, command=shlex.join(["python", "-m", "resnet_lab", *sys.argv[1:]]) if typed else None)
    print(f"val acc {result.best_acc:.4f}  test acc {result.test_acc:.4f}  epochs {len(result.history)}")
    return 0 if math.isfinite(result.test_acc) else 1
