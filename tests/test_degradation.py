"""The degradation runner: tidy curves for a tiny budget, a fair lockstep setup, and the shipped result."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from resnet_lab import degradation
from resnet_lab.__main__ import main
from resnet_lab.degradation import COLUMNS, SHIPPED_CSV, final_metrics, lr_at, run_degradation

TINY = {"train_size": 24, "val_size": 16, "evals": 1}


@pytest.fixture(scope="module")
def tiny() -> tuple[pd.DataFrame, list[tuple[float, str]]]:
    calls: list[tuple[float, str]] = []
    df = run_degradation(3, 8, ("plain20", "resnet20"), 0, lambda f, d: calls.append((f, d)), **TINY)
    return df, calls


def test_tiny_budget_gives_tidy_curves(tiny):
    df, calls = tiny
    assert list(df.columns) == COLUMNS
    metrics = {"train_loss", "train_acc", "train_loss_smooth", "train_acc_smooth", "val_loss", "val_acc"}
    assert set(df.metric) == metrics
    for arch in ("plain20", "resnet20"):
        d = df[df.arch == arch]
        assert sorted(d[d.metric == "train_loss"].step) == [0, 1, 2]
        assert sorted(d[d.metric == "val_acc"].step) == [0, 3]
    assert np.isfinite(df.value).all()
    assert df[df.metric.str.endswith("acc")].value.between(0, 1).all()
    assert set(df[df.arch == "resnet20"].variant) == {"residual"} and set(df.depth) == {20}
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_run_is_determined_by_its_seed(tiny):
    """Same seed: same init and the same data order, so the very same curves; another seed: other curves."""
    df, _ = tiny
    again = run_degradation(3, 8, ("plain20", "resnet20"), 0, **TINY)
    pd.testing.assert_frame_equal(df, again)
    other = run_degradation(3, 8, ("plain20", "resnet20"), 1, **TINY)
    assert not np.allclose(df.value, other.value)


def test_smoothing_is_a_trailing_mean():
    raw = pd.DataFrame({"arch": "plain20", "variant": "plain", "depth": 20, "step": range(4),
                        "metric": "train_loss", "value": [4.0, 2.0, 0.0, 2.0]})
    smooth = degradation.add_smoothing(raw, window=2)
    got = smooth[smooth.metric == "train_loss_smooth"].sort_values("step").value.tolist()
    assert got == [4.0, 3.0, 1.0, 1.0]


def test_schedule_warms_up_then_decays():
    assert lr_at(0, 100, 0.1, 5) == pytest.approx(0.01)
    assert lr_at(5, 100, 0.1, 5) == pytest.approx(0.1)
    assert lr_at(99, 100, 0.1, 5) < 0.001
    assert all(lr_at(s, 100, 0.1, 5) >= lr_at(s + 1, 100, 0.1, 5) for s in range(5, 99))


def test_rejects_bad_budgets():
    with pytest.raises(ValueError):
        run_degradation(0, 8)
    with pytest.raises(ValueError, match="unknown"):
        run_degradation(1, 8, ("resnet21",))


def test_cli_writes_the_curves(tmp_path, capsys):
    out = tmp_path / "d.csv"
    assert main(["degradation", "--steps", "2", "--batch-size", "4", "--archs", "plain20", "--train-size", "8",
                 "--val-size", "8", "--evals", "1", "--out", str(out)]) == 0
    assert list(degradation.read_csv(out).columns) == COLUMNS
    assert "train_loss_smooth" in capsys.readouterr().out


def test_shipped_curves_show_degradation():
    """He et al. 2015, Fig. 1: plain-56 ends with a higher training loss than plain-20, and at equal depth the
    shortcuts make the net trainable. (In this ~2% budget ResNet-56 still lags ResNet-20: not asserted.)"""
    final = final_metrics(degradation.read_csv(SHIPPED_CSV)).set_index("arch")
    assert set(final.index) == set(degradation.DEFAULT_ARCHS)
    loss = final.train_loss_smooth
    assert loss["plain56"] > 1.2 * loss["plain20"]
    assert loss["resnet56"] < 0.8 * loss["plain56"] and loss["resnet20"] < 0.8 * loss["plain20"]
    assert final.val_acc["resnet56"] > final.val_acc["plain56"] + 0.1
    assert all(math.isfinite(v) for v in final.val_acc)
