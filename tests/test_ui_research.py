"""The Research tab: its functions return what the components show, the text follows the numbers, the tab builds."""

from __future__ import annotations

import dataclasses
import re
import time

import gradio as gr
import pandas as pd
import pytest
from matplotlib.figure import Figure

from resnet_lab import degradation, gradflow, resources
from resnet_lab.resnet import REGISTRY
from resnet_lab.ui import research
from resnet_lab.ui.common import LONG


def no_progress(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def small():
    """ResNet-20 and its twin, one seed, BN in train mode (also primes the cache)."""
    t0 = time.perf_counter()
    out = research.run_gradnorms(["resnet20"], "train", "default", 4, "auto", 1)  # the default gr.Progress()
    return out, time.perf_counter() - t0


def test_run_gradnorms_returns_figures_table_csv_and_text(small):
    (fig_w, fig_x, fig_s, table, csv, text), seconds = small
    assert seconds < 30  # seconds on a 2-core CPU; generous for a shared machine
    assert all(isinstance(f, Figure) for f in (fig_w, fig_x, fig_s))
    assert fig_w.axes[0].get_yscale() == "log" and fig_x.axes[0].get_yscale() == "log"
    assert isinstance(table, pd.DataFrame) and list(table.net) == ["plain20", "resnet20"]
    assert set(research.TABLE_COLUMNS.values()) <= set(table.columns)
    assert len(gradflow.read_csv(csv)) > 0
    assert "He et al. 2016" in text and "Yang et al. 2019" in text


def test_results_are_cached_per_settings(small):
    before = research._sweep.cache_info().hits
    research.run_gradnorms(["resnet20"], "train", "default", 4, "auto", 1, progress=no_progress)
    assert research._sweep.cache_info().hits == before + 1
    research.run_gradnorms(["resnet20"], "train", "default", 4, "32", 1, progress=no_progress)
    assert research._sweep.cache_info().hits == before + 1  # another input size is another experiment


def test_explanation_follows_the_measurement(small):
    """BN train: growth, never 'vanishing'; no BN: shrinking plain nets and a forward blow-up; zero-gamma: zeros."""
    train = small[0][5]
    assert "**grows** toward the input" in train and "vanishes" not in train and "shrinks" not in train
    none = research.run_gradnorms(["resnet56"], "none", "default", 4, "auto", 1, progress=no_progress)[5]
    assert "**shrinks** mildly toward the input" in none and "blows up in the forward pass" in none
    assert "Gradients grow" not in none
    zero = research.run_gradnorms(["resnet20"], "train", "zero-gamma", 4, "auto", 1, progress=no_progress)[5]
    assert "exactly zero" in zero and zero != train


def test_bad_settings_become_user_errors():
    with pytest.raises(gr.Error):
        research.run_gradnorms([], progress=no_progress)
    with pytest.raises(gr.Error):
        research.run_gradnorms(["resnet20"], "train", "default", 1, "auto", 1, progress=no_progress)


GIB = 2**30


def fake_estimate(cfg: gradflow.GradFlowConfig) -> int:
    """Bytes growing with batch, pixels and depth, like the real estimate, but known exactly to the test."""
    depth = max(REGISTRY[a].depth for a in cfg.archs)
    return cfg.batch_size * max(cfg.size_for(a) for a in cfg.archs) ** 2 * depth * 100 + 10**6


@pytest.fixture
def server_with(monkeypatch):
    """A server whose available memory the test chooses; a sweep that starts anyway fails the test."""
    def start(available: int) -> None:
        monkeypatch.setattr(resources, "memory_available", lambda *_a, **_k: available)

    def no_sweep(*_a, **_k):
        raise AssertionError("an oversized sweep started")

    monkeypatch.setattr(gradflow, "run_sweep", no_sweep)
    research._sweep.cache_clear()
    yield start
    research._sweep.cache_clear()


def test_oversized_sweep_is_refused_with_what_fits(server_with, monkeypatch):
    monkeypatch.setattr(gradflow, "estimate_memory", fake_estimate, raising=False)
    server_with(16 * GIB)  # a 16 GB Space, nothing used: a sweep may take 8 GiB
    budget = int(16 * GIB * research.MEMORY_SHARE)
    with pytest.raises(gr.Error) as e:
        research.run_gradnorms(["resnet50", "resnet152"], "train", "default", 64, "224", 1, progress=no_progress)
    cfg = research.make_config(["resnet50", "resnet152"], "train", "default", 64, "224", 1)
    fits = lambda **change: fake_estimate(dataclasses.replace(cfg, **change)) <= budget  # noqa: E731
    batch = max(b for b in range(2, 64) if fits(batch_size=b))
    size = max(s for s in research.SIZES if fits(input_size=s))
    message = str(e.value)
    assert f"needs about {fake_estimate(cfg) / GIB:.1f} GiB" in message and f"{budget / GIB:.1f} GiB" in message
    assert f"batch size {batch} at 224 px" in message and f"{size} px at batch size 64" in message
    assert ("without resnet152" in message) == fits(archs=("resnet50",))


def test_refusal_names_the_depth_to_leave_out(server_with, monkeypatch):
    monkeypatch.setattr(gradflow, "estimate_memory", fake_estimate, raising=False)
    cfg = research.make_config(["resnet20", "resnet110"], "train", "default", 64, "auto", 1)
    server_with(int(fake_estimate(dataclasses.replace(cfg, archs=("resnet20",))) / research.MEMORY_SHARE) + 1)
    with pytest.raises(gr.Error, match="without resnet110"):
        research.run_gradnorms(["resnet20", "resnet110"], "train", "default", 64, "auto", 1, progress=no_progress)


def test_real_estimate_refuses_resnet152_at_224_px_on_a_16_gb_space(server_with):
    """The issue's click: ResNet-152, 224 px, batch 64. Refused on a 16 GB Space; the batch offered instead fits."""
    server_with(16 * GIB)
    with pytest.raises(gr.Error, match="What fits") as e:
        research.run_gradnorms(["resnet152"], "train", "default", 64, "224", 1, progress=no_progress)
    batch = int(re.search(r"batch size (\d+) at 224 px", str(e.value)).group(1))
    cfg = research.make_config(["resnet152"], "train", "default", batch, "224", 1)
    assert gradflow.estimate_memory(cfg) <= research.memory_budget() < gradflow.estimate_memory(
        dataclasses.replace(cfg, batch_size=batch + 1))
    research.check_memory(research.make_config(research.DEFAULT_ARCHS, "train", "default", 8, "auto", 3))


def test_degradation_rerun_and_shipped_curves(monkeypatch):
    calls = []
    tiny = {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 8, "evals": 1}
    for k, v in tiny.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    research._quick_run.cache_clear()
    try:
        assert "about" in research.rerun_label() and "trained in" not in research.rerun_label()
        fig, table, text = research.rerun_degradation(progress=lambda f, d: calls.append(f))
        assert "This re-run trained in" in text
        assert "Cached: the re-run trained in" in research.rerun_degradation(progress=no_progress)[2]
        assert "trained in" in research.rerun_label() and "cached" in research.rerun_label()
    finally:
        research._quick_run.cache_clear()  # never leave the tiny run where the real button would find it
    assert isinstance(fig, Figure) and list(table.arch) == list(degradation.DEFAULT_ARCHS)
    assert "Short re-run, 2 steps" in text and calls[-1] == 1.0
    fig, table, text = research.shipped_curves()
    assert isinstance(fig, Figure) and "Shipped run" in text  # the shipped CSV is part of the app


def test_rerun_estimate_is_computed_from_the_timed_probe(monkeypatch):
    """The button's duration is setup + steps x step + validations, each as timed on this machine."""
    q = degradation.QUICK
    expected = 2.0 + q["steps"] * 0.5 + (q["evals"] + 1) * 0.25 * q["val_size"] / q["batch_size"]
    assert research.estimate_rerun({"setup": 2.0, "step": 0.5, "validation": 0.25}) == pytest.approx(expected)
    monkeypatch.setattr(research, "rerun_estimate", lambda: expected)
    research._quick_run.cache_clear()
    assert f"about {research._duration(expected)} on this server" in research.rerun_label()


def test_probe_times_each_part_of_a_real_run(monkeypatch):
    """The probe reads the real run's progress reports; a changed report would break it here, not in the app."""
    for k, v in {"batch_size": 4, "val_size": 8}.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    t = research._probe_degradation()
    assert set(t) == {"setup", "step", "validation"} and all(v > 0 for v in t.values())


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
    research._sweep.cache_clear()
    research._quick_run.cache_clear()
    try:
        with pytest.raises(gr.Error, match="can act on"):
            fns["gradnorms"].fn(["resnet20"], "none", "default", 2, "32", 1, progress=no_progress)
        with pytest.raises(gr.Error, match="can act on"):
            fns["degradation"].fn(progress=no_progress)
    finally:
        research._sweep.cache_clear()
        research._quick_run.cache_clear()
