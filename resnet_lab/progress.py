"""The one progress-callback type the long-running library functions take, and a tqdm bar for the CLIs.

A `Progress` is called as `progress(fraction, text)`: fraction of the work done in [0, 1] and what is being done.
Its return value is ignored, so `gr.Progress()` (the UI), a tqdm-driving closure (the CLIs) and a test's
recorder all fit one type.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], object]


def tqdm_progress(total: int, desc: str) -> tuple[Progress, Callable[[], None]]:
    """A `progress(fraction, desc)` callable that drives a tqdm bar of `total` steps, and its closer."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step")

    def progress(fraction: float, text: str) -> None:
        bar.n = round(fraction * total)
        bar.set_postfix_str(text, refresh=False)
        bar.refresh()

    return progress, bar.close
