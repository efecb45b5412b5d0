"""Research tab, degradation section: shipped curves, the short re-run and its timed estimate."""

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
        fig, table, text = deg_ui.rerun_degradation(progress=lambda f, d: calls.append(f))
        assert "This re-run trained in" in text
        assert "Cached: the re-run trained in" in deg_ui.rerun_degradation(progress=no_progress)[2]
        assert "trained in" in deg_ui.rerun_label() and "cached" in deg_ui.rerun_label()
    finally:
        deg_ui._quick_run.cache_clear()  # never leave the tiny run where the real button would find it
    assert isinstance(fig, Figure) and list(table.arch) == list(degradation.DEFAULT_ARCHS)
    assert "Short re-run, 2 steps" in text and calls[-1] == 1.0
    fig, table, text = deg_ui.shipped_curves()
    assert isinstance(fig, Figure) and "Shipped run" in text  # the shipped CSV is part of the app


def test_rerun_estimate_is_computed_from_the_timed_probe(monkeypatch):
    """The button's duration is setup + steps x step + validations, each as timed on this machine."""
    q = degradation.QUICK
    expected = 2.0 + q["steps"] * 0.5 + (q["evals"] + 1) * 0.25 * q["val_size"] / q["batch_size"]
    assert deg_ui.estimate_rerun({"setup": 2.0, "step": 0.5, "validation": 0.25}) == pytest.approx(expected)
    monkeypatch.setattr(deg_ui, "rerun_estimate", lambda: expected)
    deg_ui._quick_run.cache_clear()
    assert f"about {duration(expected)} on this server" in deg_ui.rerun_label()


def test_probe_times_each_part_of_a_real_run(monkeypatch):
    """The probe reads the real run's progress reports; a changed report would break it here, not in the app."""
    for k, v in {"batch_size": 4, "val_size": 8}.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    t = deg_ui._probe_degradation()
    assert set(t) == {"setup", "step", "validation"} and all(v > 0 for v in t.values())


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
