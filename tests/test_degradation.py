"""The degradation runner: tidy curves for a tiny budget, a fair lockstep setup, and the shipped result."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest

from resnet_lab.__main__ import main
from resnet_lab.research import degradation
from resnet_lab.research.degradation import COLUMNS, SHIPPED_CSV, final_metrics, lr_at, run_degradation

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
    with pytest.raises(ValueError, match="until"):
        run_degradation(5, 8, until=6)


def test_a_run_ignores_other_threads_use_of_the_global_rng():
    """Lockstep twins must start from the same weights whatever another tab's event does with torch's global RNG."""
    from test_gradflow import hammered_global_rng

    archs = ("plain20", "resnet20", "plain32", "resnet32", "plain44", "resnet44")
    quiet = run_degradation(1, 4, archs, 0, train_size=4, val_size=4, evals=1)
    with hammered_global_rng() as hammered:  # on the old code (manual_seed, then build) most runs split a pair
        runs = [run_degradation(1, 4, archs, 0, train_size=4, val_size=4, evals=1) for _ in range(6)]
    assert hammered[0] > 100
    for again in runs:
        pd.testing.assert_frame_equal(quiet, again)


def test_cli_writes_the_curves(tmp_path, capsys):
    out = tmp_path / "d.csv"
    assert main(["degradation", "--steps", "2", "--batch-size", "4", "--archs", "plain20", "--train-size", "8",
                 "--val-size", "8", "--evals", "1", "--out", str(out)]) == 0
    assert list(degradation.read_csv(out).columns) == COLUMNS
    assert "train_loss_smooth" in capsys.readouterr().out


# The shipped run's first 3 steps recomputed (see the test below): how far another CPU's arithmetic moves them.
CALM_REL = 2e-4  # every row before an update, and ResNet-20's after: measured at most 3.2e-5 relative
CHAOTIC_REL = 0.07  # plain-56's losses after an update: measured up to 3.3 %
CHAOTIC_IMAGES = 4  # plain-56's correct counts after an update: measured up to 2 images


def _images_behind(row: pd.Series, batch_size: int, val_size: int) -> int:
    """How many images an accuracy row counts: the held-out set, one batch, or (smoothed, a trailing mean that
    covers every step so far in the first steps) a batch per step."""
    if row.metric == "val_acc":
        return val_size
    return batch_size * (row.step + 1 if row.metric == "train_acc_smooth" else 1)


@pytest.mark.numerics
def test_shipped_curves_are_what_the_shipped_command_produces():
    """The first 3 of the 1500 steps of the README's command, re-run, give the shipped CSV's first rows.

    Not digit for digit: the shipped run was made on one x86 CPU (AVX-512, 2 threads) and this may be another.
    A float32 convolution sums up to 3*3*64 = 576 products per output in an order set by the CPU's vector width and
    the thread count, and `normal_` draws the initial weights through vectorized or scalar code (they differ by an
    ulp under ATEN_CPU_CAPABILITY=default). Before any update that moves a row by a few float32 ulps compounded
    over 56 layers; then the plain net, whose gradients grow ~10^9 toward its input, turns it into percents in one
    update. Measured against the CSV: this run under ATEN_CPU_CAPABILITY avx512, avx2 and default at 1 and 2
    threads, and 24 runs with plain-56's initial weights moved by ~1 ulp (relative N(0, 1e-7) noise):
    - before any update (step 0) every row, and ResNet-20's rows after it, within 3.2e-5 relative: `CALM_REL`
      allows 6x that, and its accuracies must count the same images;
    - plain-56 after an update: its losses within 3.3 % (2.5 % from ATEN_CPU_CAPABILITY=default alone), and its
      correct counts within 2 images (of 32 a step; 5 became 3 to 6 at step 1): `CHAOTIC_REL` and `CHAOTIC_IMAGES`
      allow about twice that. Accuracies compare as counts of images, never as ratios of a chaotic net's.
    """
    ship = degradation.read_csv(SHIPPED_CSV)
    # Two of the four nets, one of each depth and kind: each net of a lockstep run sees the same batches from the
    # same init seed whatever else trains beside it, so their rows are the full run's (and the test is half as long).
    archs = ("plain56", "resnet20")
    # the README's command: --steps 1500 --batch-size 32, everything else at its default (and this process's threads)
    again = run_degradation(1500, 32, archs, until=3)
    keys = ["arch", "variant", "depth", "step", "metric"]
    first = ship[(ship.step < 3) & ship.arch.isin(archs)]
    both = first.merge(again, on=keys, suffixes=("_shipped", "_now"), validate="one_to_one")
    assert len(both) == len(first) == len(again) == 28
    chaotic = (both.arch == "plain56") & (both.step > 0)
    accuracy = both.metric.str.contains("acc")
    val_size = inspect.signature(run_degradation).parameters["val_size"].default
    n = both.apply(_images_behind, axis=1, args=(32, val_size))
    shipped = both.value_shipped * n
    assert ((shipped.round() - shipped)[accuracy]).abs().max() < 1e-3  # whole images: `n` is what each row counts
    images = ((both.value_now - both.value_shipped) * n).round().abs()  # the correct counts' difference
    assert (images[accuracy & ~chaotic] == 0).all(), both[accuracy & ~chaotic & (images > 0)]
    assert (images[accuracy & chaotic] <= CHAOTIC_IMAGES).all(), both[accuracy & chaotic & (images > CHAOTIC_IMAGES)]
    printed = both.value_now.map(lambda v: float(f"{v:.6g}"))  # as the CLI writes it
    rel = (printed - both.value_shipped).abs() / both.value_shipped.abs()
    loss = ~accuracy
    assert (rel[loss & ~chaotic] <= CALM_REL).all(), both[loss & ~chaotic & (rel > CALM_REL)]
    assert (rel[loss & chaotic] <= CHAOTIC_REL).all(), both[loss & chaotic & (rel > CHAOTIC_REL)]


def test_shipped_curves_show_degradation():
    """He et al. 2015, Fig. 1: plain-56 ends with a higher training loss than plain-20, and at equal depth the
    shortcuts make the net trainable. (In this ~2% budget ResNet-56 still lags ResNet-20: not asserted.)
    The test above ties these numbers to the code; this one reads what the full run reached."""
    final = final_metrics(degradation.read_csv(SHIPPED_CSV)).set_index("arch")
    assert set(final.index) == set(degradation.DEFAULT_ARCHS)
    loss = final.train_loss_smooth
    assert loss["plain56"] > 1.2 * loss["plain20"]
    assert loss["resnet56"] < 0.8 * loss["plain56"] and loss["resnet20"] < 0.8 * loss["plain20"]
    assert final.val_acc["resnet56"] > final.val_acc["plain56"] + 0.1
    assert all(math.isfinite(v) for v in final.val_acc)




def test_memory_estimate_bounds_a_measured_peak():
    """Peak resident memory of the first steps of a run (fresh subprocess) against `estimate_memory`.

    Measured on 2 shared CPU cores: the tensors peak at what the estimate counts
    (166 vs 180 MiB for plain32/resnet32 at batch 64, tracked op by op), but the
    resident memory is 1.3-2x that (glibc, oneDNN's kernel caches: relatively more
    for small runs), so with its x2.2 the estimate bounds it: measured/estimate 0.76-0.91
    for this run over 8 runs, two at a time (0.75-0.88 from the x1.8 readings of earlier
    sessions: 0.92-1.07 for small runs, 0.92 for plain/resnet110 at batch 128, 0.72 for
    the shipped run). Leaving out the training step's activations would give ~3.
    """
    from benchmarks.bench_memory import CASES, measure

    added, estimate = measure("degradation"), CASES["degradation"][2]()
    assert 0.5 < added / estimate <= 1.0, (added, estimate)


def test_cli_refuses_a_run_that_does_not_fit(monkeypatch, capsys):
    from resnet_lab.runtime import resources

    need = degradation.estimate_memory(1500, 512, ("plain110", "resnet110"))
    monkeypatch.setattr(resources, "memory_available", lambda: need // 3)
    assert main(["degradation", "--batch-size", "512", "--archs", "plain110,resnet110"]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "--batch-size" in err
    fits = int(err.split("--batch-size ")[1].split()[0])
    assert degradation.estimate_memory(1500, fits, ("plain110", "resnet110")) <= need // 3
    assert main(["degradation", "--archs", "plain20,resnet21"]) == 2
    assert "unknown archs resnet21" in capsys.readouterr().err


def test_validation_is_the_one_evaluation_loop(monkeypatch):
    """val_loss / val_acc come from `scoring.score` (eval mode, float64 sums), once per net and validation point."""
    from resnet_lab.research.degradation import compute
    from resnet_lab.runtime import scoring

    scores = []

    def spy(net, batches, **kw):
        scores.append(scoring.score(net, batches, **kw))
        return scores[-1]

    monkeypatch.setattr(compute, "score", spy)
    df = run_degradation(3, 8, ("plain20", "resnet20"), 0, **TINY)
    val = df[df.metric == "val_loss"]
    assert len(scores) == len(val) == 2 * len(degradation.eval_steps(3, TINY["evals"]))
    assert sorted(val.value) == sorted(s.loss for s in scores)
    assert sorted(df[df.metric == "val_acc"].value) == sorted(s.accuracy for s in scores)


def test_estimated_seconds_come_from_the_cost_model(monkeypatch):
    """Every net: built once, `steps` training steps on the batch ("train_step" work: each step its layer calls,
    each image its MACs) and a forward pass over the held-out images in evaluation chunks at each validation
    point; the device asked is the run's own."""
    from resnet_lab.runtime import cost

    asked = []
    monkeypatch.setattr(cost, "rates", lambda device="cpu": asked.append(str(device)) or cost.Rates(0.02, 1e-4))
    monkeypatch.setattr(cost, "build_rates",
                        lambda device="cpu": asked.append(str(device)) or cost.BuildRates(3e-4, 1e-8))
    archs = ("plain20", "resnet56")
    checks = len(degradation.eval_steps(100, 3))  # 64 held-out images: one chunk of EVAL_BATCH each
    expected = sum(cost.macs_per_image(a, 32, 8) * (100 * 16 * cost.WORK["train_step"] + checks * 64) / 1e9 * 0.02
                   + cost.layer_calls(a, 32, 8) * (100 * cost.WORK["train_step"] + checks) * 1e-4
                   + cost.modules_of(a) * 3e-4 + cost.params_of(a) * 1e-8 for a in archs)
    got = degradation.estimate_cost(100, 16, archs, train_size=512, val_size=64, evals=3, device="cuda:1")
    assert got.seconds == pytest.approx(expected) and set(asked) == {"cuda:1"}
    assert got.bytes == degradation.estimate_memory(100, 16, archs, train_size=512, val_size=64, device="cuda:1")


def test_cli_device_defaults_to_the_resolver_and_records_the_run(tmp_path, monkeypatch, capsys):
    """No --device: cuda when present (the one resolver), not the CPU; the JSON beside the CSV records the run."""
    import json

    import torch

    from resnet_lab.runtime import devices

    monkeypatch.delenv(devices.ENV, raising=False)
    out = tmp_path / "d.csv"
    assert main(["degradation", "--steps", "2", "--batch-size", "4", "--archs", "plain20", "--train-size", "8",
                 "--val-size", "8", "--evals", "1", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["device"] == str(devices.resolve_device(None)) and record["estimated_seconds"] > 0
    assert "This run, 2 steps" in record["reading"]
    if not torch.cuda.is_available():
        assert main(["degradation", "--steps", "2", "--archs", "plain20", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
