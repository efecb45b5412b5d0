"""What the Research sections share: a cache key that ignores progress callbacks, the memory budget of a live
run, and durations and sizes as people read them."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ... import gradflow

# A live run may take this share of the memory available now: the loaded models, Gradio and a QUICK job (which
# runs beside it) live in the rest. ResNet-152 at 224 px with batch 64 needs ~15 GiB (gradflow.estimate_memory):
# on a 16 GB Space one click would get the process killed; it is refused with settings that fit instead.
MEMORY_SHARE = 0.5


class Untracked:
    """Rides through `lru_cache` without being part of the key (a progress callback is not a setting)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Untracked)


def memory_budget(device: str = "cpu") -> int:
    """Bytes one live run may use: a share of what `device` can still allocate (free GPU memory on CUDA, else the
    container's limit, not the host's RAM: see `resources`), read at the click, so a busy server refuses sooner."""
    return int(gradflow.available_memory(device) * MEMORY_SHARE)


def gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def refuse_if_too_big(need: int, budget: int, what: str, smaller: str) -> None:
    """A `gr.Error` when a run's estimated peak `need` exceeds `budget`: what it needs, what the server can give,
    and `smaller`, the settings to try instead."""
    if need > budget:
        raise gr.Error(f"{what} needs about {gb(need)}; this server can give a live run {gb(budget)} now "
                       f"({MEMORY_SHARE:.0%} of the memory available). {smaller}",
                       title="Settings too large for this server")
