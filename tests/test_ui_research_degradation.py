"""Research tab, degradation section: shipped curves, the short re-run, its estimate from the cost model, and
the app's device."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from resnet_lab.research import degradation
from resnet_lab.ui.research import degradation as deg_ui
from resnet_lab.ui.research._common import duration


def no_progress(*_args, **_kwargs) -> None:
    return None


def test_degradation_rerun_and_shipped_curves(monkeypatch):
    calls = []
    tiny = {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 8, "evals": 1}
    for k, v in tiny.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    deg_ui._quick_run.cache_clear()
    try:
        assert "about" in deg_ui.rerun_label() and "trained in" not in deg_ui.rerun_label()
        fig, narrow, table, text = deg_ui.rerun_degradation(progress=lambda f, d: calls.append(f))
        assert "This re-run trained in" in text
        assert "Cached: the re-run trained in" in deg_ui.rerun_degradation(progress=no_progress)[3]
        assert "trained in" in deg_ui.rerun_label() and "cached" in deg_ui.rerun_label()
    finally:
        deg_ui._quick_run.cache_clear()  # never leave the tiny run where the real button would find it
    assert isinstance(fig, Figure) and list(table.arch) == list(degradation.DEFAULT_ARCHS)
    # the phone's copy: the same two panels, one above the other
    (w, _), (nw, nh) = fig.get_size_inches(), narrow.get_size_inches()
    assert len(narrow.axes) == len(fig.axes) == 2 and nw < w and nh > nw
    assert "Short re-run, 2 steps" in text and calls[-1] == 1.0
    fig, table, text = deg_ui.shipped_curves()
    assert isinstance(fig, Figure) and "Shipped run" in text  # the shipped CSV is part of the app


def test_rerun_estimate_comes_from_the_cost_model(monkeypatch):
    """The button's duration is the cost model's: every net's build, its training steps ("train_step" work on the
    batch) and its forward passes over the held-out images at each validation point, at the rates of the app's
    device."""
    from resnet_lab.runtime import cost

    monkeypatch.setattr(cost, "rates", lambda device="cpu": cost.Rates(0.02, 1e-4))
    monkeypatch.setattr(cost, "build_rates", lambda device="cpu": cost.BuildRates(3e-4, 1e-8))
    q = degradation.QUICK
    checks = len(degradation.eval_steps(q["steps"], q["evals"]))
    chunks = -(-q["val_size"] // degradation.compute.EVAL_BATCH)
    expected = sum(cost.macs_per_image(a, 32, 8) * (q["steps"] * q["batch_size"] * cost.WORK["train_step"]
                                                    + checks * q["val_size"]) * 0.02 / 1e9
                   + cost.layer_calls(a, 32, 8) * (q["steps"] * cost.WORK["train_step"] + checks * chunks) * 1e-4
                   + cost.modules_of(a) * 3e-4 + cost.params_of(a) * 1e-8 for a in degradation.DEFAULT_ARCHS)
    assert deg_ui.rerun_estimate() == pytest.approx(expected)
    deg_ui._quick_run.cache_clear()
    assert f"about {duration(expected)} on this server" in deg_ui.rerun_label()


def test_building_the_section_trains_nothing(monkeypatch):
    """The page is built at every app start: its button's estimate must not train (it used to time a 2-step run,
    7.8 s of each start-up). Any training step while the section is built fails this test."""
    import gradio as gr
    import torch

    def no_training(*_a, **_k):
        raise AssertionError("building the degradation section trained a net")

    monkeypatch.setattr(degradation, "run_degradation", no_training)
    monkeypatch.setattr(torch.Tensor, "backward", no_training)
    monkeypatch.setattr(torch.optim.SGD, "step", no_training)
    deg_ui._quick_run.cache_clear()
    with gr.Blocks():
        deg_ui.build()
    assert "about" in deg_ui.rerun_label()


def test_rerun_runs_and_is_sized_on_the_apps_full_device(monkeypatch):
    """RESNET_LAB_DEVICE=cuda:1: the re-run's memory check, its estimate and the run itself use cuda:1, and a run
    that does not fit there is refused before it starts."""
    from types import SimpleNamespace

    import gradio as gr
    import torch

    from resnet_lab.runtime import cost, memory

    for k, v in {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 8, "evals": 1}.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    monkeypatch.setattr(deg_ui, "zoo", lambda: SimpleNamespace(device=torch.device("cuda", 1)))
    rates, budgets, runs = [], [], []
    monkeypatch.setattr(cost, "rates", lambda device="cpu": rates.append(str(device)) or cost.Rates(0.02, 1e-4))
    monkeypatch.setattr(cost, "build_rates",
                        lambda device="cpu": rates.append(str(device)) or cost.BuildRates(3e-4, 1e-8))
    free = [2**40]
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": budgets.append(str(device)) or free[0])
    real = degradation.run_degradation

    def on_cpu(*a, device="cpu", **k):  # what the GPU would compute, on a test machine without one
        runs.append(str(device))
        return real(*a, **k)

    monkeypatch.setattr(degradation, "run_degradation", on_cpu)
    deg_ui._quick_run.cache_clear()
    try:
        free[0] = 1
        with pytest.raises(gr.Error, match="short re-run"):
            deg_ui.rerun_degradation(progress=no_progress)
        assert runs == []
        free[0] = 2**40
        deg_ui.rerun_degradation(progress=no_progress)
    finally:
        deg_ui._quick_run.cache_clear()
    assert runs == ["cuda:1"] and set(budgets) == {"cuda:1"} and set(rates) == {"cuda:1"}


def test_cli_prints_the_reading_of_its_curves(capsys):
    """`python -m resnet_lab degradation` ends with the same text the tab computes from the same curves."""
    from resnet_lab.__main__ import main

    args = ["degradation", "--steps", "2", "--batch-size", "4", "--archs", "plain20,plain56", "--train-size", "8",
            "--val-size", "8", "--evals", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    df = degradation.run_degradation(2, 4, ("plain20", "plain56"), train_size=8, val_size=8, evals=1)
    assert out.rstrip().endswith(degradation.describe_degradation(df, "This run, 2 steps"))
    assert "Plain: plain56 trains" in out


def test_degradation_text_follows_the_losses():
    """The verdict is read from the final losses: swap which net ends higher and the words swap."""
    import pandas as pd

    def curves(plain20: float, plain56: float) -> pd.DataFrame:
        rows = [(a, "plain", d, 10, m, v) for a, d, loss in (("plain20", 20, plain20), ("plain56", 56, plain56))
                for m, v in (("train_loss_smooth", loss), ("train_acc_smooth", 0.5), ("val_loss", loss),
                             ("val_acc", 0.5))]
        return pd.DataFrame(rows, columns=degradation.COLUMNS)

    assert "plain56 trains **worse**" in degradation.describe_degradation(curves(0.5, 1.0), "t")
    assert "plain56 trains **better**" in degradation.describe_degradation(curves(1.0, 0.5), "t")
    assert "about as well" in degradation.describe_degradation(curves(1.0, 1.01), "t")
    assert "still at chance level" in degradation.describe_degradation(curves(0.5, 2.079), "t")
