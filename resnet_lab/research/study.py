"""The shape every study has, and the plumbing their command lines share.

A study is a package under `research/` made of the same five parts, so a new one is a few small files:

- compute: the measurement, returned as a tidy DataFrame (one row per measured number; columns in `COLUMNS`);
- describe: text computed from those numbers (the CLI prints it, the app shows it, the README quotes it), never
  a sentence the numbers do not support;
- plot: matplotlib Figures, made without pyplot (no global state: safe in Gradio's worker threads);
- cost: `cost.Cost(seconds, bytes)` of a run before it starts, from the one cost model in `cost.py`;
- CLI: `add_arguments(parser)` and `run(args) -> exit code`, built from the helpers below (models by path or by
  shipped-twin name, the one device resolver, torchrun, progress on rank 0, CSV + JSON + PNG outputs).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ..models.weights import WeightsUnavailable, load_checkpoint
from ..paths import ASSETS
from ..runtime.cost import arch_of
from ..runtime.distributed import cleanup, setup

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..models.weights import LoadedWeights
    from ..runtime.distributed import Dist

TWINS_DIR = ASSETS / "twins"


def fail(command: str, message: str) -> int:
    """Print `command: message` to stderr and return the usage-error exit code."""
    print(f"{command}: {message}", file=sys.stderr)
    return 2


def split_list(text: str | None) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"]."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def resolve_model_path(spec: str) -> Path:
    """A checkpoint path as typed, or a bare arch name for the shipped twin (`resnet56` ->
    assets/twins/shapes_resnet56.safetensors)."""
    path = Path(spec)
    if path.suffix == "" and not path.exists():
        shipped = TWINS_DIR / f"shapes_{spec}.safetensors"
        if shipped.is_file():
            return shipped
        path = path.with_suffix(".safetensors")
    return path


def load_models(specs: Sequence[str]) -> list[LoadedWeights]:
    """Checkpoints by path or shipped-twin arch name; ValueError with a message a person can act on."""
    paths = [resolve_model_path(s) for s in specs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"checkpoint not found: {', '.join(missing)} (give .safetensors files with their JSON, "
                         f"or the arch of a twin shipped in {TWINS_DIR.relative_to(ASSETS.parent)}/)")
    try:
        return [load_checkpoint(p) for p in paths]
    except WeightsUnavailable as e:
        raise ValueError(str(e)) from e


def model_labels(models: Sequence[LoadedWeights]) -> list[str]:
    """What each net is called in tables and plots: its arch, with the file name where two share an arch."""
    labels = [str(w.meta.get("arch") or arch_of(w.model)) for w in models]
    return [f"{lab} ({Path(w.path).stem})" if w.path is not None and labels.count(lab) > 1 else lab
            for lab, w in zip(labels, models)]


@contextmanager
def session(device: str | None) -> Iterator[Dist]:
    """This process's `Dist` (torchrun's group when launched by it, else one process) on the resolved device;
    the group is left on exit. A device that cannot be used raises `devices.DeviceError` (a ValueError)."""
    dist = setup(device)
    try:
        yield dist
    finally:
        cleanup(dist)


def run_record(args: Any, seconds: float, dist: Dist, **extra: Any) -> dict[str, Any]:
    """What a results JSON records about how it was made: the command, time, device, processes, threads."""
    return {"command": getattr(args, "command_line", None), "seconds": round(seconds, 2),
            "device": str(dist.device), "world_size": dist.world_size, "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, **extra}


def write_outputs(out: str | Path, stem: str, tables: dict[str, pd.DataFrame], figures: dict[str, Figure],
                  record: dict[str, Any], float_format: str = "%.7g") -> list[Path]:
    """`<stem><suffix>.csv` per table, `<stem><suffix>.png` per figure and `<stem>.json` (the record) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, df in tables.items():
        paths.append(out / f"{stem}{suffix}.csv")
        df.to_csv(paths[-1], index=False, float_format=float_format)
    for suffix, fig in figures.items():
        paths.append(out / f"{stem}{suffix}.png")
        fig.savefig(paths[-1], dpi=100)
    paths.append(out / f"{stem}.json")
    paths[-1].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return paths


def save(args: Any, tables: dict[str, pd.DataFrame], figures: dict[str, Figure], record: dict[str, Any],
         text: str, summary: dict[str, Any]) -> None:
    """`write_outputs` into `args.out` under `args.stem`, the reading and its tables in the JSON, each file named."""
    for path in write_outputs(args.out, args.stem, tables, figures, {**record, "summary": summary, "reading": text}):
        print(f"wrote {path}")


RUN_KEYS_LEFT_OUT = ("summary", "reading")  # a source's own reading is replaced by the re-reading


def from_csv_record(args: Any) -> dict[str, Any]:
    """The record of a `--from-csv` re-reading: the command that re-read, which files, and the record of every
    run that made them (each source's `<stem>.json` beside its CSV: its command, seconds, device and settings),
    so that results assembled from several runs still say how each part was made."""
    runs = []
    for source in split_list(args.from_csv):
        stem = Path(source)
        stem = stem.with_suffix("") if stem.suffix == ".csv" else stem
        meta = stem.with_name(stem.name + ".json")
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        record = record.get("runs", [record]) if isinstance(record, dict) else []
        runs += [{k: v for k, v in r.items() if k not in RUN_KEYS_LEFT_OUT} for r in record if isinstance(r, dict)]
    unique = {json.dumps(r, sort_keys=True, default=str): r for r in runs}  # a source read twice is one run
    return {"command": getattr(args, "command_line", None), "from_csv": args.from_csv, "runs": list(unique.values())}


class Timer:
    """Seconds since construction (`elapsed`), for run records."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
