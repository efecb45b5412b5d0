"""Training you can leave running: the full training state, written atomically, found again and loaded safely.

A state file holds everything the loop needs to continue as if it had never stopped (torchvision's and timm's
reference scripts keep the same): model, optimizer, scheduler and GradScaler state, the epoch and the step within
it, the data order's and augmentation's generator states as they were at the start of that epoch (the loop replays
the epoch's first steps' draws without training on them), the running sums of the epoch, best-so-far weights and
accuracy, the early-stopping counter, the history, the precision chosen and the command. Written with `torch.save`
to a temporary file in the same folder and renamed over the target (a crash mid-write leaves the previous state),
read back with `torch.load(weights_only=True)`: tensors, numbers, strings and containers only, nothing unpickled
that could run code.

Files are `<out>.<run>.step<global step>.state.pt` beside the run's `<out>.safetensors`. `<run>` is
`<settings key>-<random>`: the key names the options that must match (all but the few the config declares
`may_differ`: `settings.must_match`), so `--resume auto` finds the states of the command's own settings and no
other's; the random part tells apart runs of the same settings, so pruning (`prune`, the newest `--keep`) only ever
touches the run's own states. A resumed run keeps its state's id; a run started beside other runs' states says so
(`others`) and leaves them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import settings
from ..files import check_writable, replacing
from ..models.checkpoints import checkpoint_path, meta_path
from ..runtime.distributed import gather_objects
from .config import DEFAULTS, RESUME_MUST_MATCH, TrainConfig

FORMAT = "resnet-lab train state 1"
SUFFIX = ".state.pt"
MUST_MATCH = RESUME_MUST_MATCH  # every option of the config but those it declares `may_differ`
# a run's config, or its options as a record (the run JSON's or a state's `config`) holds them
Config = TrainConfig | Mapping[str, Any]
_RUN = r"[0-9a-f]{8}-[0-9a-f]{6}"


class ResumeError(ValueError):
    """A state that cannot continue this run (missing, unreadable, another run's), with what to do about it."""


@dataclass(frozen=True)
class StateFile:
    path: Path
    run: str | None  # None: written before states carried a run id
    step: int  # the global step it was written after


def _norm(v: Any) -> Any:
    """A value as compared and hashed: a CLI list and a tuple alike, 1 and 1.0 alike."""
    if isinstance(v, (tuple, list)):
        return [_norm(x) for x in v]
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _shown(v: Any) -> str:
    return " ".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def _declared(config: Config) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]:
    """(options, the names that must match, defaults): a config's, read off its class's declaration (an option
    declared on it is checked with no other change), or a record's options, read with `TrainConfig`'s."""
    if isinstance(config, Mapping):
        return dict(config), MUST_MATCH, DEFAULTS
    return config.options(), settings.must_match(type(config)), settings.defaults(type(config))


def differences(theirs: Mapping[str, Any], config: Config) -> list[str]:
    """The must-match options in which a state's config differs from this run's, as `--opt THEIRS (now OURS)`
    (an option the state predates counts as its default)."""
    ours, must, default = _declared(config)
    return [f"--{k.replace('_', '-')} {_shown(theirs.get(k, default[k]))} (now {_shown(ours.get(k, default[k]))})"
            for k in must if _norm(theirs.get(k, default[k])) != _norm(ours.get(k, default[k]))]


def settings_key(config: Config) -> str:
    """8 hex digits naming the must-match settings; only those off their defaults are hashed, so an option added
    later, at its default, leaves the keys of existing states alone."""
    ours, must, default = _declared(config)
    chosen = {k: _norm(ours.get(k, default[k])) for k in must}
    chosen = {k: v for k, v in chosen.items() if v != _norm(default[k])}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_id(config: Config, saved: dict[str, Any] | None = None) -> str:
    """The id the run's states carry. A resumed run keeps its state's, unless `--out` already holds later states
    of that run (resumed from an earlier one: a branch, which must neither overwrite them nor be pruned by them);
    any other run gets a new one."""
    run = str(saved.get("run") or "") if saved else ""
    if re.fullmatch(_RUN, run):
        step = int((saved or {}).get("scheduler", {}).get("last_epoch", 0))
        out = _declared(config)[0].get("out")
        if not out or not any(s.run == run and s.step > step for s in scan(out)):
            return run
    return f"{settings_key(config)}-{secrets.token_hex(3)}"


def state_path(out: str | Path, run: str, global_step: int) -> Path:
    return Path(f"{out}.{run}.step{global_step:09d}{SUFFIX}")


def scan(out: str | Path) -> list[StateFile]:
    """Every state beside `out`, any run's, by run and step. The folder is listed and the names parsed (a glob
    would read `[`, `*` or `?` in `--out` as patterns and find nothing)."""
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + rf"\.(?:({_RUN})\.)?step(\d+)" + re.escape(SUFFIX))
    try:
        names = os.listdir(out.parent)
    except OSError:  # no folder yet
        return []
    found = [StateFile(out.parent / n, m.group(1), int(m.group(2))) for n in names if (m := pattern.fullmatch(n))]
    return sorted(found, key=lambda s: (s.run or "", s.step))


def states(out: str | Path, run: str | None = None) -> list[Path]:
    """The states of run `run` beside `out` (of any run if None), oldest first (by global step)."""
    return [s.path for s in sorted(scan(out), key=lambda s: s.step) if run is None or s.run == run]


def latest(out: str | Path, run: str | None = None) -> Path | None:
    found = states(out, run)
    return found[-1] if found else None


def _newest(found: list[StateFile]) -> StateFile:
    """The state written last (by time, then step): a folder's runs do not share a step count."""

    def written(s: StateFile) -> tuple[int, int]:
        try:
            return s.path.stat().st_mtime_ns, s.step
        except OSError:
            return 0, s.step

    return max(found, key=written)


def _peek_config(path: Path) -> dict[str, Any] | None:
    """A state's config without reading its tensors (memory-mapped), or None if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state.get("config") if isinstance(state, dict) else None
    except Exception:  # truncated or not a state: said as such, it is only being described
        return None


def _describe(found: list[StateFile], config: Config) -> str:
    """'N training states of M runs (newest NAME: how its settings differ)'."""
    newest = _newest(found)
    theirs = _peek_config(newest.path)
    how = "unreadable" if theirs is None else ", ".join(differences(theirs, config)) or "the same settings"
    runs = len({s.run for s in found})
    return (f"{len(found)} training state{'s' * (len(found) > 1)} of {runs} other run{'s' * (runs > 1)} "
            f"(newest {newest.path.name}: {how})")


def others(out: str | Path, run: str, config: Config) -> str | None:
    """One line for a run starting beside other runs' states: what is there; they are left as they are."""
    found = [s for s in scan(out) if s.run != run]
    if not found:
        return None
    return (f"{Path(out).parent}/ holds {_describe(found, config)}, left as they are; this run's are "
            f"{Path(out).name}.{run}.step*{SUFFIX}")


def replaced(out: str | Path, run: str, config: Config) -> str | None:
    """One line for a run whose `--out` holds another run's finished checkpoint: said at the start, while the run
    can still be pointed elsewhere, since it replaces that checkpoint when it ends (its states are left)."""
    path = checkpoint_path(out)
    if not path.is_file():
        return None
    try:
        meta = json.loads(meta_path(path).read_text())
    except (OSError, ValueError):  # no JSON beside it, or not JSON
        meta = None
    if isinstance(meta, dict) and meta.get("run") == run:  # this run's own (resumed after it was written)
        return None
    theirs = meta.get("config") if isinstance(meta, dict) else None
    how = (", ".join(differences(theirs, config)) or "the same settings") if isinstance(theirs, dict) else "no JSON"
    return f"{path} holds another run's checkpoint ({how}); this run replaces it when it ends: give another --out " \
           "to keep both"


def beside_out(out: str | Path, run: str, config: Config) -> list[str]:
    """Before the work: ValueError naming --out if no file can be written there (not an hour later, at the first
    save), then the lines on what the run finds there (`others`, `replaced`), for the log."""
    check_writable(out, "--out")
    return [line for line in (others(out, run, config), replaced(out, run, config)) if line]


def resolve(resume: str, config: Config) -> Path:
    """`--resume PATH`, or `--resume auto`: the newest state of the most recently written run beside `--out`
    whose settings are this run's (no other run's state is ever picked)."""
    out = _declared(config)[0].get("out")
    if resume == "auto":
        if not out:
            raise ResumeError("--resume auto looks for the newest state beside --out: give --out too")
        key, found = settings_key(config), scan(out)
        mine = [s for s in found if s.run and s.run.startswith(key + "-")]
        if not mine:
            there = f"; it holds {_describe(found, config)}" if found else ""
            raise ResumeError(f"--resume auto: no state of a run with these settings ({Path(out).name}.{key}-*.step*"
                              f"{SUFFIX}) in {Path(out).parent}/{there}. A run writes one after every epoch: start "
                              "without --resume, or continue another run with --resume PATH and its options")
        run = _newest([max((s for s in mine if s.run == r), key=lambda s: s.step) for r in {s.run for s in mine}])
        return run.path
    path = Path(resume)
    if not path.is_file():
        raise ResumeError(f"--resume: {path} is not a file (give a {SUFFIX} file a run wrote, or auto)")
    return path


def write(path: Path, state: dict[str, Any]) -> Path:
    """`state` at `path`, atomically (`files.replacing`): a crash mid-write leaves the previous state."""
    with replacing(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def read(path: Path, config: Config) -> dict[str, Any]:
    """The state at `path`, checked to belong to a run with `config`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        raise ResumeError(f"--resume: {path} is not a readable training state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"--resume: {path} is not a resnet-lab training state")
    differ = differences(state.get("config", {}), config)
    if differ:
        raise ResumeError(f"--resume: {path.name} was written by a run with other settings: " + ", ".join(differ)
                          + ". Resume with the same options, or start a new run.")
    return state


def prune(out: str | Path, run: str, keep: int) -> None:
    """Keep the newest `keep` states of run `run` (at least one); other runs' states are not this run's to delete."""
    for old in states(out, run)[:-max(1, keep)]:
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

    run: str = ""  # the id in its states' names (`run_id`)
    epoch: int = 1  # the epoch under way (or the next one, at step 0)
    step: int = 0  # steps of it done (all of them: stopped after its last step, before validation)
    sums: tuple[float, int, int] = (0.0, 0, 0)  # (loss sum, correct, seen) of those steps, over all ranks
    # the training batches' draws (per rank) at the start of `epoch`, or at its end once all its steps are done
    data: list[dict] | dict | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    stale: int = 0
    done: bool = False  # early-stopped: a resumed run only finishes
    train_time: float = 0.0
    precision: dict[str, Any] = field(default_factory=dict)
    mixing: torch.Tensor | None = None  # the batch-mixing generator's state, as `data`
    ema: dict[str, Any] | None = None  # the weights' EMA (`ema.WeightsEma.state_dict`), where the run keeps one

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
        """Every rank's draws gathered, then rank 0 writes the state beside `config.out` and keeps the run's newest
        `config.keep` (nothing is written without `--out`)."""
        from dataclasses import asdict

        data = gather_objects(self.data, dist) if dist.distributed else [self.data]
        if not config.out or not dist.is_main:
            return None
        steps = max(1, self.sched_steps(sched))
        state = {**asdict(self), "data": data, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                 "config": config.options(), "command": command or config.cli()}
        path = write(state_path(config.out, self.run, steps), state)
        prune(config.out, self.run, config.keep)
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
