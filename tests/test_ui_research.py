"""The Research tab as a whole: every section builds inside one Blocks, its runs share the LONG queue group, and
library errors reach people as messages."""

from __future__ import annotations

import gradio as gr
import pytest

from resnet_lab.research import degradation, gradflow, landscape, lesion
from resnet_lab.ui import research
from resnet_lab.ui.common import LONG
from resnet_lab.ui.research import degradation as deg_ui
from resnet_lab.ui.research import gradnorms
from resnet_lab.ui.research import landscape as ls_ui
from resnet_lab.ui.research import lesion as lesion_ui


def no_progress(*_args, **_kwargs) -> None:
    return None


def test_build_tab_inside_blocks_and_tab(monkeypatch):
    with gr.Blocks() as demo:
        with gr.Tab("Research"):
            research.build_tab()
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    runs = {"gradnorms", "degradation", "landscape", "lesion"}
    assert runs <= set(fns)
    assert {(fns[r].concurrency_id, fns[r].concurrency_limit) for r in runs} == {(LONG["concurrency_id"], 1)}
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["degradation-plot"].value is not None  # the shipped curves show on load
    for section in ("landscape", "lesion"):  # each new section: a run button, its outputs and the shipped results
        assert {f"{section}-run", f"{section}-plot", f"{section}-table", f"{section}-csv", f"{section}-text",
                f"{section}-shipped-text", f"{section}-shipped-plot"} <= set(by_id)
        event = fns[section]
        assert [by_id[i]._id for i in (f"{section}-plot", f"{section}-table", f"{section}-csv",
                                       f"{section}-text")] == [o._id for o in event.outputs]
    buttons = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button)]
    assert any(v.startswith("Re-run a short version") and "estimating" in v for v in buttons)  # nothing timed yet
    from resnet_lab.ui.research import degradation as degradation_ui

    assert "on this server" in degradation_ui.rerun_label()  # what the page load puts there

    def broken(*_a, **_k):
        raise ValueError("a library error a person can act on")

    monkeypatch.setattr(gradflow, "run_sweep", broken)  # the registered events turn it into our message
    monkeypatch.setattr(degradation, "run_degradation", broken)
    monkeypatch.setattr(landscape, "compute_landscape", broken)
    monkeypatch.setattr(lesion, "lesion_study", broken)
    gradnorms._sweep.cache_clear()
    deg_ui._quick_run.cache_clear()
    try:
        with pytest.raises(gr.Error, match="can act on"):
            fns["gradnorms"].fn(["resnet20"], "none", "default", 2, "32", 1, progress=no_progress)
        with pytest.raises(gr.Error, match="can act on"):
            fns["degradation"].fn(progress=no_progress)
        with pytest.raises(gr.Error, match="can act on"):
            fns["landscape"].fn(ls_ui.SHAPES_NET, 0.3, 7, progress=no_progress)  # settings no other test caches
        with pytest.raises(gr.Error, match="can act on"):
            fns["lesion"].fn(lesion_ui.SHAPES_NET, progress=no_progress)
    finally:
        gradnorms._sweep.cache_clear()
        deg_ui._quick_run.cache_clear()
