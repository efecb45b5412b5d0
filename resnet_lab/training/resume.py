"""Training you can leave running: the full training state, written atomically, found again and loaded safely.

A state file holds everything the loop needs to continue as if it had never stopped (torchvision's and timm's
reference scripts keep the same): model, optimizer, scheduler and GradScaler state, the epoch and the step within
it, the data order's and augmentation's generator states as they were at the start of that epoch (the loop replays
the epoch's first steps' draws without training on them), the running sums of the epoch, best-so-far weights and
accuracy, the early-stopping counter, the history, the precision chosen and the command. Written with `torch.save`
to a temporary file in the same folder and renamed over the target (a crash mid-write leaves the previous state),
read back with `torch.load(weights_only=True)`: tensors, numbers, strings and containers only, nothing unpickled
that could run code.

Files are `<out>.step<global step>.state.pt` beside the run's `<out>.safetensors`; `latest(out)` finds the newest,
`prune(out, keep)` keeps the last `keep`.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "resnet-lab train state 1"
SUFFIX = ".state.pt"
# options that must match for a state to continue a run: anything that changes the model, the data, the steps
# or the optimizer's meaning (epochs sets the schedule's length; patience, out, quiet and device may change)
MUST_MATCH = ("arch", "data", "n_train", "n_val", "batch_size", "lr", "opt", "sched", "wd", "seed", "test_seed",
              "size", "clutter", "val_fraction", "epochs", "pretrained", "freeze", "backbone_lr_scale")


class ResumeError(ValueError):
    """A state that cannot continue this run (missing, unreadable, another run's), with what to do about it."""


def state_path(out: str | Path, global_step: int) -> Path:
    return Path(f"{out}.step{global_step:09d}{SUFFIX}")


def states(out: str | Path) -> list[Path]:
    """The run's state files, oldest first (by the global step in their names)."""
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\.step(\d+)" + re.escape(SUFFIX) + "$")
    found = [(int(m.group(1)), p) for p in out.parent.glob(f"{out.name}.step*{SUFFIX}")
             if (m := pattern.match(p.name))] if out.parent.is_dir() else []
    return [p for _, p in sorted(found)]


def latest(out: str | Path) -> Path | None:
    found = states(out)
    return found[-1] if found else None


def resolve(resume: str, out: str | None) -> Path:
    """`--resume PATH`, or `--resume auto`: the newest state of `--out`."""
    if resume == "auto":
        if not out:
            raise ResumeError("--resume auto looks for the newest state beside --out: give --out too")
        path = latest(out)
        if path is None:
            raise ResumeError(f"--resume auto: no {Path(out).name}.step*{SUFFIX} in {Path(out).parent}/ (a run "
                              "writes one after every epoch; start without --resume)")
        return path
    path = Path(resume)
    if not path.is_file():
        raise ResumeError(f"--resume: {path} is not a file (give a {SUFFIX} file a run wrote, or auto)")
    return path


def write(path: Path, state: dict[str, Any]) -> Path:
    """`state` at `path`, atomically: a temporary file in the same folder, then a rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The state at `path`, checked to belong to a run with `config` (a TrainConfig as a dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        raise ResumeError(f"--resume: {path} is not a readable training state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"--resume: {path} is not a resnet-lab training state")
    theirs = state.get("config", {})
    differ = [f"--{k.replace('_', '-')} {theirs.get(k)} (now {config.get(k)})" for k in MUST_MATCH
              if theirs.get(k) != config.get(k)]
    if differ:
        raise ResumeError(f"--resume: {path.name} was written by a run with other settings: " + ", ".join(differ)
                          + ". Resume with the same options, or start a new run.")
    return state


def prune(out: str | Path, keep: int) -> None:
    """Keep the newest `keep` states of the run (at least one)."""
    for old in states(out)[:-max(1, keep)]:
        old.unlink(missing_ok=True)


class StopRequest:
    """Set by SIGTERM or SIGINT while installed (`installed()`): the loop saves its state at the next step and
    stops cleanly. Outside the main thread (the app's workers) no handler can be installed and it never sets."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, _frame: object) -> None:
            self.signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Stopped(Exception):
    """A run stopped by a signal after saving its state (the CLI says where, and exits 128 + the signal)."""

    def __init__(self, signal_name: str, epoch: int, step: int, path: Path | None) -> None:
        self.signal_name, self.epoch, self.step, self.path = signal_name, epoch, step, path
        where = f"state written to {path}; continue with --resume {path} (or --resume auto)" if path else \
            "no state written (no --out)"
        super().__init__(f"stopped by {signal_name} after step {step} of epoch {epoch}: {where}")


@dataclass
class RunState:
    """Where a run stands between steps: the loop's own counters and records, saved beside the model's,
    optimizer's, scheduler's and scaler's states (`save`) and put back (`restore`)."""

    epoch: int = 1  # the epoch under way (or the next one, at step 0)
    step: int = 0  # steps of it done
    sums: tuple[float, int, int] = (0.0, 0, 0)  # (loss sum, correct, seen) of those steps, over all ranks
    data: list[dict] | dict | None = None  # the training batches' draws at the start of `epoch` (per rank)
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    stale: int = 0
    done: bool = False  # early-stopped: a resumed run only finishes
    train_time: float = 0.0
    precision: dict[str, Any] = field(default_factory=dict)
    mixing: torch.Tensor | None = None  # the batch-mixing generator's state, as `data`

    def end_epoch(self, val_acc: float, model: torch.nn.Module) -> None:
        """Book an epoch's validation accuracy: best weights (on a tie, the later: further annealed), the
        early-stopping counter, and the next epoch from its first step."""
        self.stale = 0 if val_acc > self.best_acc else self.stale + 1
        if val_acc >= self.best_acc:
            self.best_acc, self.best_epoch = val_acc, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.epoch, self.step, self.sums = self.epoch + 1, 0, (0.0, 0, 0)

    def save(self, config: Any, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
             scaler: torch.amp.GradScaler | None, dist: Any, command: str | None) -> Path | None:
        """Every rank's draws gathered, then rank 0 writes the state beside `config.out` and keeps the newest
        `config.keep` (nothing is written without `--out`)."""
        from dataclasses import asdict

        from .distributed import gather_objects

        data = gather_objects(self.data, dist) if dist.distributed else [self.data]
        if not config.out or not dist.is_main:
            return None
        steps = max(1, self.sched_steps(sched))
        state = {**asdict(self), "data": data, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                 "config": asdict(config), "command": command or config.cli()}
        path = write(state_path(config.out, steps), state)
        prune(config.out, config.keep)
        return path

    @staticmethod
    def sched_steps(sched: Any) -> int:
        return int(getattr(sched, "last_epoch", 0))

    @classmethod
    def restore(cls, state: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                scaler: torch.amp.GradScaler | None, batches: Any, dist: Any) -> RunState:
        """Put a read state back into the run's objects; returns the loop's counters."""
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        data = state["data"]
        if len(data) != dist.world_size:
            raise ResumeError(f"--resume: the state was written by {len(data)} processes, this run has "
                              f"{dist.world_size}; resume with the same number")
        if data[dist.rank] is not None:
            batches.load_state_dict(data[dist.rank])
        fields = {k: state[k] for k in cls.__dataclass_fields__ if k in state and k not in ("data", "mixing")}
        run = cls(**fields)
        run.sums = tuple(run.sums)  # type: ignore[assignment]
        return run
