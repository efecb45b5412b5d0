"""Train any registered arch on Shapes (the models whose explanations we can check), CIFAR-10/100 or an image folder.

This module is the loop: the run's config and CLI options are `config`, its data `run_data`, its precision
`precision_probe`, and validation/test accuracy the one evaluation loop (`scoring.score`). The checkpoint's JSON
carries everything `weights.load_checkpoint` and the app need (arch, classes, mean/std, input size) plus the
command that made it. Under `torchrun --nproc-per-node N` the same loop runs in N processes (DDP, see
`distributed`): `batch_size` stays the global batch of a step, each rank trains on its share, accuracies are summed
over ranks, rank 0 logs and writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from ..data.loaders import Batches, per_rank_batch
from ..data.shapes import CLASSES, shapes_data_config
from ..models.optim import decay_groups
from ..models.optim import make_optimizer as build_optimizer
from ..models.resnet import build, init_seed
from ..models.weights import save_checkpoint
from ..progress import Progress
from ..runtime.distributed import (
    Dist,
    all_reduce_score,
    all_reduce_sum,
    cleanup,
    gather_objects,
    inner,
    setup,
    unwrap,
    wrap,
)
from ..runtime.precision import DTYPES, dtype_name
from ..runtime.scoring import score
from . import augment, calibration, finetune, resume
from . import recipe as recipes
from .config import TrainConfig
from .ema import WeightsEma
from .precision_probe import choose_train_precision, optimizer_step, resolve_precision
from .run_data import make_data
from .run_record import checkpoint_meta


@dataclass
class TrainResult:
    """What a run produced: per-epoch history, the best (restored) model and its scores."""

    history: list[dict[str, float]]
    best_acc: float  # validation accuracy of the kept weights
    test_acc: float
    model: nn.Module
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov), AdamW or Adam (coupled L2, default 0); no weight decay on BN and biases.
    Fine-tuning: the head at `lr`, the backbone at `lr * lr_scale`, frozen parameters left out."""
    if config.pretrained:
        groups = finetune.param_groups(model, config.lr, config.lr_scale, config.weight_decay)
    else:
        groups = decay_groups(model, config.weight_decay)
    return build_optimizer(config.opt, groups, config.lr, momentum=0.9, nesterov=True)


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


# ----------------------------------------------------------------------------- the loop


def _precision(config: TrainConfig, model: nn.Module, size: int, dtype: torch.dtype | None, channels_last: bool,
               dist: Dist, log: Callable[[str], None], batch: int) -> tuple[torch.dtype | None, dict[str, Any]]:
    """`--precision auto` on CUDA times fp32 against the GPU's half dtype on this model and keeps the faster (a
    ResNet-20 at 32 px trains faster in fp32/TF32, a ResNet-50 at 224 px in bf16); every rank takes rank 0's choice."""
    if config.precision != "auto" or dist.device.type != "cuda":
        return dtype, {"policy": config.precision, "choice": dtype_name(dtype), "measured": False}
    dtype, record = choose_train_precision(model, (3, size, size), per_rank_batch(batch, dist),
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


def accuracy(model: nn.Module, batches: Batches, *, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
             dtype: torch.dtype | None = None, dist: Dist = Dist()) -> float:
    """Top-1 accuracy over every rank's share of `batches` (`scoring.score`, summed over ranks: exactly the
    single-process number), in eval mode through `forward` (the compiled view) with autocast to `dtype`."""
    return all_reduce_score(score(model, batches, forward=forward, dtype=dtype), dist).accuracy


MIX_SEED = 7_919  # the mixing generator's seed is the run's seed plus this
STOP_CHECK_EVERY = 8  # under torchrun, steps between agreeing on a stop request (one tiny all-reduce each)


@dataclass
class EpochPass:
    """One pass over the training set: (mean loss, accuracy) when it ran to the end, else the step it stopped
    after and its running sums (what a resumed run continues from)."""

    loss: float = math.nan
    acc: float = math.nan
    stopped_after: int | None = None
    sums: tuple[float, int, int] = (0.0, 0, 0)


def _epoch(forward, model, batches, opt, sched, scaler, dtype, bar_desc, quiet, report, dist, *, start: int = 0,
           sums: tuple[float, int, int] = (0.0, 0, 0), stop: resume.StopRequest | None = None,
           loss_of: Callable, after_step: Callable[[], None] = lambda: None) -> EpochPass:
    """One pass over the training set (over all ranks' shares). From step `start` on with the running `sums` of
    a resumed epoch: the steps before it are drawn (order and augmentation, so the generators advance exactly as
    they did) but not trained on; from the end (stopped after its last step) nothing is drawn. A `stop` request
    ends the pass after the current step, the last one included, on every rank alike."""
    model.train()
    loss_sum = torch.tensor(sums[0], dtype=torch.float64, device=batches.device)
    correct = torch.tensor(sums[1], dtype=torch.int64, device=batches.device)
    seen = sums[2]
    bar = tqdm(batches, desc=bar_desc, disable=quiet, leave=False, mininterval=1.0, dynamic_ncols=True)
    next_postfix, stopped_after = 0.0, None
    for step, (x, y) in enumerate(bar if start < len(batches) else ()):
        if step < start:
            continue
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss, logits = loss_of(forward, x, y)  # `augment.loss_fn`: plain, smoothed or mixed cross-entropy
        optimizer_step(loss, opt, scaler)
        sched.step()
        after_step()  # the weights' EMA, where the run keeps one
        loss_sum += loss.detach().double() * len(y)  # kept on the device: no sync per step on a GPU
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if not quiet and time.monotonic() >= next_postfix:  # reading the loss syncs a GPU: once a second at most
            next_postfix = time.monotonic() + 1.0
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.3g}")
        report(step + 1, len(batches))
        last = step + 1 == len(batches)  # ranks agree there too: a signal in an epoch's last step is not lost
        if stop is not None and _agree_to_stop(stop, dist, check=last or (step + 1) % STOP_CHECK_EVERY == 0):
            stopped_after = step + 1
            if not last:  # after the last step the loop ends by itself: the sampler's closing draws are made
                break
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(seen)]), dist)
    if stopped_after is not None:
        return EpochPass(stopped_after=stopped_after, sums=(totals[0].item(), int(totals[1]), int(totals[2])))
    loss_sum, correct, seen = totals.tolist()
    return EpochPass(loss_sum / seen, correct / seen)


def _agree_to_stop(stop: resume.StopRequest, dist: Dist, check: bool = True) -> bool:
    """Whether every rank stops here: a request seen by any rank, agreed under torchrun where `check` (every few
    steps, an epoch's last, after a state is saved: the same points on every rank), at once in one process."""
    if not dist.distributed:
        return bool(stop)
    if not check:
        return False
    return bool(all_reduce_sum(torch.tensor([float(bool(stop))], device=dist.device), dist).item() > 0)


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
    # a state that cannot continue this run is refused before any data is made
    source = resume.resolve(config.resume, config) if config.resume else None
    saved = resume.read(source, config) if source else None
    quiet = config.quiet or not dist.is_main  # one process speaks
    log = (lambda s: None) if quiet else tqdm.write
    run_id = resume.run_id(config, saved)  # its states' names: pruning and --resume auto see no other run's
    for line in resume.beside_out(config.out, run_id, config) if config.out else ():  # unwritable: refused
        log(line)
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
    n_train = sum(data.record.get("counts", {}).get("train", {}).values()) or config.n_train
    plan = recipes.resolve(config, n_train, len(data.train))  # epochs, patience, smoothing, EMA: as given or chosen
    if saved is not None and saved.get("precision"):  # the precision the run chose, not a new probe's choice
        precision_record = saved["precision"]
        dtype = DTYPES[precision_record["choice"]]
    else:
        dtype, precision_record = _precision(config, model, size, dtype, channels_last, dist, log, plan.batch_size)
    trained = wrap(model, dist, config.sync_bn)  # DDP under torchrun, else the model itself
    forward = _Forward(maybe_compile(trained, config.compile, log), trained, log)
    # evaluation runs on the bare model: ranks' shares may differ in batch count, and DDP's forward would sync
    evaluate = forward if trained is model else _Forward(maybe_compile(model, config.compile, log), model, log)
    opt = make_optimizer(model, config)
    epochs = plan.epochs
    sched = make_scheduler(opt, config, plan.total_steps)
    ema = WeightsEma(model, plan.ema_decay) if plan.ema_decay else None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    mixing = torch.Generator().manual_seed(config.seed + MIX_SEED)  # batch mixing draws, apart from the data's
    loss_of = augment.loss_fn(plan.augment, len(data.classes), mixing)
    run = resume.RunState(precision=precision_record)
    if saved is not None:
        run = resume.RunState.restore(saved, inner(trained), opt, sched, scaler, data.train, dist)
        if saved.get("mixing") is not None:
            mixing.set_state(saved["mixing"])
        if ema is not None and run.ema:
            ema.load_state_dict(run.ema)
        log(f"resumed from {source}: epoch {run.epoch}, step {run.step} of {len(data.train)}")
    run.run = run_id
    stop = resume.StopRequest()
    t_train = time.perf_counter() - run.train_time
    with stop.installed():
        while run.epoch <= epochs and not run.done:
            epoch, t_epoch = run.epoch, time.perf_counter()
            at_start = data.train.state_dict()  # the epoch's draws, replayed by a run resumed within it

            def report(step: int, steps: int, epoch: int = epoch) -> None:
                if progress is not None:
                    progress(((epoch - 1) * steps + step) / (epochs * steps), f"epoch {epoch}/{epochs}")

            p = _epoch(forward, trained, data.train, opt, sched, scaler, dtype, f"epoch {epoch}/{epochs}",
                       quiet, report, dist, start=run.step, sums=run.sums if dist.is_main else (0.0, 0, 0),
                       stop=stop, loss_of=loss_of, after_step=(lambda: ema.update(model)) if ema else lambda: None)
            if p.stopped_after is not None:
                # the data's draws as at the epoch's start (its first steps are drawn again, untrained), or as now
                # after its last step (nothing left to draw); the mixing generator's as now (skipped steps mix nothing)
                run.step, run.sums, run.mixing = p.stopped_after, p.sums, mixing.get_state()
                run.data = data.train.state_dict() if p.stopped_after == len(data.train) else at_start
                run.train_time, run.ema = time.perf_counter() - t_train, ema.state_dict() if ema else None
                path = run.save(config, inner(trained), opt, sched, scaler, dist, command)
                raise resume.Stopped(stop.name, epoch, p.stopped_after, path)
            val_acc = accuracy(model, data.val, forward=evaluate, dtype=dtype, dist=dist)  # all ranks agree
            if not math.isfinite(val_acc):
                raise ValueError("validation accuracy is not a number: the validation set is empty")
            # the EMA is this epoch's candidate where it validates at least as well as the raw weights
            val_ema = accuracy(ema.module, data.val, dtype=dtype, dist=dist) if ema else -1.0
            run.history.append({"epoch": epoch, "train_loss": p.loss, "train_acc": p.acc, "val_acc": val_acc,
                                **({"val_acc_ema": val_ema, "ema_kept": float(val_ema >= val_acc)} if ema else {}),
                                "lr": sched.get_last_lr()[0], "time_s": time.perf_counter() - t_epoch})
            log(f"epoch {epoch:3d}  loss {p.loss:.4f}  train acc {p.acc:.4f}  val acc {val_acc:.4f}  "
                + (f"EMA {val_ema:.4f}  " if ema else "") + f"{run.history[-1]['time_s']:.1f} s")
            run.end_epoch(max(val_acc, val_ema), ema.module if ema and val_ema >= val_acc else model)
            if plan.stops_early(run.stale):
                log(f"early stop: no better val accuracy for {plan.patience} epochs")
                run.done = True
            run.data, run.mixing = data.train.state_dict(), mixing.get_state()
            run.train_time, run.ema = time.perf_counter() - t_train, ema.state_dict() if ema else None
            path = run.save(config, inner(trained), opt, sched, scaler, dist, command)
            if _agree_to_stop(stop, dist):  # a signal during validation or the save: the state just written
                raise resume.Stopped(stop.name, epoch, len(data.train), path)
    history, best_acc, best_epoch = run.history, run.best_acc, run.best_epoch
    train_time = time.perf_counter() - t_train
    model.load_state_dict(run.best_state)
    fit = calibration.calibrate(model, data.val, dtype=dtype, dist=dist) if plan.calibrate else None
    test_acc = best_acc  # a folder without test/: the val accuracy, said so in the JSON
    if data.test is not None:
        test_acc = accuracy(model, data.test, forward=evaluate, dtype=dtype, dist=dist)
    log(f"best val acc {best_acc:.4f} (epoch {best_epoch}), test acc {test_acc:.4f}, {train_time:.0f} s"
        + (f", temperature {fit.temperature:.3f}" if fit else ""))

    meta = checkpoint_meta(config, data, model, size, plan, run, test_acc=test_acc, train_time=train_time, dist=dist,
                           dtype=dtype, precision_record=precision_record, command=command, start=start, frozen=frozen,
                           temperature=fit)
    model = unwrap(model).to(memory_format=torch.contiguous_format).eval()  # plain BatchNorm2d again
    path = save_checkpoint(model, config.out, meta) if config.out and dist.is_main else None
    if path:
        log(f"wrote {path} and {path.with_suffix('.json').name}")
    return TrainResult(history, best_acc, test_acc, model, path, meta)
