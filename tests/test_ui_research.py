"""The Research tab as a whole: every section builds inside one Blocks, its runs share the LONG queue group, and
library errors reach people as messages."""

from __future__ import annotations

import gradio as gr
import pytest

from resnet_lab import degradation, gradflow
from resnet_lab.ui import research
from resnet_lab.ui.common import LONG
from resnet_lab.ui.research import degradation as deg_ui
from resnet_lab.ui.research import gradnorms


def no_progress(*_args, **_kwargs) -> None:
    return None


def test_build_tab_inside_blocks_and_tab(monkeypatch):
    with gr.Blocks() as demo:
        with gr.Tab("Research"):
            research.build_tab()
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    assert {"gradnorms", "degradation"} <= set(fns)
    assert fns["gradnorms"].concurrency_id == fns["degradation"].concurrency_id == LONG["concurrency_id"]
    plots = [b for b in demo.blocks.values() if isinstance(b, gr.Plot)]
    assert len(plots) == 4 and plots[-1].value is not None  # the shipped curves show on load
    buttons = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button)]
    assert any(v.startswith("Re-run a short version") and "on this server" in v for v in buttons)

    def broken(*_a, **_k):
        raise ValueError("a library error a person can act on")

    monkeypatch.setattr(gradflow, "run_sweep", broken)  # the registered events turn it into our message
    monkeypatch.setattr(degradation, "run_degradation", broken)
    gradnorms._sweep.cache_clear()
    deg_ui._quick_run.cache_clear()
    try:
        with pytest.raises(gr.Error, match="can act on"):
            fns["gradnorms"].fn(["resnet20"], "none", "default", 2, "32", 1, progress=no_progress)
        with pytest.raises(gr.Error, match="can act on"):
            fns["degradation"].fn(progress=no_progress)
    finally:
        gradnorms._sweep.cache_clear()
        deg_ui._quick_run.cache_clear()
