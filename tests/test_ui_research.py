"""The Research tab: its functions return what the components show, the text follows the numbers, the tab builds."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd
import pytest
from matplotlib.figure import Figure

from resnet_lab import degradation, gradflow
from resnet_lab.ui import research


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


def test_degradation_rerun_and_shipped_curves(monkeypatch):
    calls = []
    tiny = {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 8, "evals": 1}
    for k, v in tiny.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    research._quick_run.cache_clear()
    try:
        fig, table, text = research.rerun_degradation(progress=lambda f, d: calls.append(f))
    finally:
        research._quick_run.cache_clear()  # never leave the tiny run where the real button would find it
    assert isinstance(fig, Figure) and list(table.arch) == list(degradation.DEFAULT_ARCHS)
    assert "Short re-run, 2 steps" in text and calls[-1] == 1.0
    fig, table, text = research.shipped_curves()
    assert isinstance(fig, Figure) and "Shipped run" in text  # the shipped CSV is part of the app


def test_build_tab_inside_blocks_and_tab():
    with gr.Blocks() as demo:
        with gr.Tab("Research"):
            research.build_tab()
    api = {fn.api_name for fn in demo.fns.values()}
    assert {"gradnorms", "degradation"} <= api
    plots = [b for b in demo.blocks.values() if isinstance(b, gr.Plot)]
    assert len(plots) == 4 and plots[-1].value is not None  # the shipped curves show on load
