"""Research tab, gradient-norms section: the function returns what the components show, the text follows the
numbers, oversized sweeps are refused with settings that fit."""

from __future__ import annotations

import dataclasses
import re

import gradio as gr
import pandas as pd
import pytest
from matplotlib.figure import Figure

from resnet_lab.models.resnet import REGISTRY
from resnet_lab.research import gradflow
from resnet_lab.runtime import resources
from resnet_lab.ui.research import MEMORY_SHARE, gradnorms, memory_budget
from resnet_lab.ui.research._common import duration, unbroken


def no_progress(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def small():
    """ResNet-20 and its twin, one seed, BN in train mode (also primes the cache)."""
    return gradnorms.run_gradnorms(["resnet20"], "train", "default", 4, "auto", 1)  # the default gr.Progress()


def test_run_gradnorms_returns_figures_table_csv_and_text(small):
    fig_w, fig_x, fig_s, table, csv, text = small
    assert all(isinstance(f, Figure) for f in (fig_w, fig_x, fig_s))
    assert fig_w.axes[0].get_yscale() == "log" and fig_x.axes[0].get_yscale() == "log"
    assert isinstance(table, pd.DataFrame) and list(table.net) == ["plain20", "resnet20"]
    assert {unbroken(c) for c in gradnorms.TABLE_COLUMNS.values()} <= set(table.columns)
    assert len(gradflow.read_csv(csv)) > 0
    assert "He et al. 2016" in text and "Yang et al. 2019" in text


def test_results_are_cached_per_settings(small):
    before = gradnorms._sweep.cache_info().hits
    gradnorms.run_gradnorms(["resnet20"], "train", "default", 4, "auto", 1, progress=no_progress)
    assert gradnorms._sweep.cache_info().hits == before + 1
    gradnorms.run_gradnorms(["resnet20"], "train", "default", 4, "32", 1, progress=no_progress)
    assert gradnorms._sweep.cache_info().hits == before + 1  # another input size is another experiment


def test_explanation_follows_the_measurement(small):
    """BN train: growth, never 'vanishing'; no BN: shrinking plain nets and a forward blow-up; zero-gamma: zeros."""
    train = small[5]
    assert "**grows** toward the input" in train and "vanishes" not in train and "shrinks" not in train
    none = gradnorms.run_gradnorms(["resnet56"], "none", "default", 4, "auto", 1, progress=no_progress)[5]
    assert "**shrinks** mildly toward the input" in none and "blows up in the forward pass" in none
    assert "Gradients grow" not in none
    zero = gradnorms.run_gradnorms(["resnet20"], "train", "zero-gamma", 4, "auto", 1, progress=no_progress)[5]
    assert "exactly zero" in zero and zero != train


def test_bad_settings_become_user_errors():
    with pytest.raises(gr.Error):
        gradnorms.run_gradnorms([], progress=no_progress)
    with pytest.raises(gr.Error):
        gradnorms.run_gradnorms(["resnet20"], "train", "default", 1, "auto", 1, progress=no_progress)


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
    gradnorms._sweep.cache_clear()
    yield start
    gradnorms._sweep.cache_clear()


def test_oversized_sweep_is_refused_with_what_fits(server_with, monkeypatch):
    monkeypatch.setattr(gradflow, "estimate_memory", fake_estimate, raising=False)
    server_with(16 * GIB)  # a 16 GB Space, nothing used: a sweep may take 8 GiB
    budget = int(16 * GIB * MEMORY_SHARE)
    with pytest.raises(gr.Error) as e:
        gradnorms.run_gradnorms(["resnet50", "resnet152"], "train", "default", 64, "224", 1, progress=no_progress)
    cfg = gradnorms.make_config(["resnet50", "resnet152"], "train", "default", 64, "224", 1)
    fits = lambda **change: fake_estimate(dataclasses.replace(cfg, **change)) <= budget  # noqa: E731
    batch = max(b for b in range(2, 64) if fits(batch_size=b))
    size = max(s for s in gradflow.INPUT_SIZES if fits(input_size=s))
    message = str(e.value)
    assert f"needs about {fake_estimate(cfg) / GIB:.1f} GiB" in message and f"{budget / GIB:.1f} GiB" in message
    assert f"batch size {batch} at 224 px" in message and f"{size} px at batch size 64" in message
    assert ("without resnet152" in message) == fits(archs=("resnet50",))


def test_refusal_names_the_depth_to_leave_out(server_with, monkeypatch):
    monkeypatch.setattr(gradflow, "estimate_memory", fake_estimate, raising=False)
    cfg = gradnorms.make_config(["resnet20", "resnet110"], "train", "default", 64, "auto", 1)
    server_with(int(fake_estimate(dataclasses.replace(cfg, archs=("resnet20",))) / MEMORY_SHARE) + 1)
    with pytest.raises(gr.Error, match="without resnet110"):
        gradnorms.run_gradnorms(["resnet20", "resnet110"], "train", "default", 64, "auto", 1, progress=no_progress)


def test_real_estimate_refuses_resnet152_at_224_px_on_a_16_gb_space(server_with):
    """The issue's click: ResNet-152, 224 px, batch 64. Refused on a 16 GB Space; the batch offered instead fits."""
    server_with(16 * GIB)
    with pytest.raises(gr.Error, match="What fits") as e:
        gradnorms.run_gradnorms(["resnet152"], "train", "default", 64, "224", 1, progress=no_progress)
    batch = int(re.search(r"batch size (\d+) at 224 px", str(e.value)).group(1))
    cfg = gradnorms.make_config(["resnet152"], "train", "default", batch, "224", 1)
    assert gradflow.estimate_memory(cfg) <= memory_budget() < gradflow.estimate_memory(
        dataclasses.replace(cfg, batch_size=batch + 1))
    gradnorms.check_memory(gradnorms.make_config(gradnorms.DEFAULT_ARCHS, "train", "default", 8, "auto", 3))


def test_cli_prints_the_same_reading_the_tab_shows(small, capsys):
    """The text computed from the numbers lives in the library: the CLI prints what the tab shows, for the same
    settings (batch 4, ResNet-20, one seed, noise)."""
    from resnet_lab.__main__ import main

    assert main(["gradnorms", "--archs", "resnet20", "--batch-size", "4", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(small[5].rstrip())


def test_what_fits_is_one_answer_for_the_cli_and_the_tab(monkeypatch, capsys):
    """The CLI's flags and the tab's words name the same batch, size and depth, from `gradflow.what_fits`."""
    from resnet_lab.__main__ import main

    monkeypatch.setattr(gradflow, "estimate_memory", fake_estimate)
    cfg = gradnorms.make_config(["resnet20", "resnet110"], "train", "default", 64, "224", 1)
    budget = fake_estimate(dataclasses.replace(cfg, archs=("resnet20",)))  # resnet20 alone fits, exactly
    fit = gradflow.what_fits(cfg, budget)
    assert fit.without == "resnet110" and fit.need == fake_estimate(cfg)
    assert fake_estimate(dataclasses.replace(cfg, batch_size=fit.batch)) <= budget
    assert fake_estimate(dataclasses.replace(cfg, batch_size=fit.batch + 1)) > budget
    assert fake_estimate(dataclasses.replace(cfg, input_size=fit.input_size)) <= budget
    bigger = [s for s in gradflow.INPUT_SIZES if fit.input_size < s < 224]
    assert all(fake_estimate(dataclasses.replace(cfg, input_size=s)) > budget for s in bigger)
    assert gradflow.what_fits(cfg, fit.need) is None
    with pytest.raises(gr.Error) as e:
        gradnorms.check_memory(cfg, budget)
    message = str(e.value)
    assert f"batch size {fit.batch} at 224 px" in message and f"{fit.input_size} px at batch size 64" in message
    monkeypatch.setattr(resources, "memory_available", lambda *_a, **_k: budget)
    assert main(["gradnorms", "--archs", "resnet20,resnet110", "--batch-size", "64", "--input-size", "224"]) == 2
    err = capsys.readouterr().err
    assert f"--batch-size {fit.batch}" in err and f"--input-size {fit.input_size}" in err and "without resnet110" in err


@pytest.fixture
def pinned_rate(monkeypatch):
    """The cost model's rates pinned (else measured on first use), and the devices they were asked for."""
    from resnet_lab.runtime import cost

    asked = []
    monkeypatch.setattr(cost, "rates", lambda device="cpu": asked.append(str(device)) or cost.Rates(0.02, 1e-4))
    monkeypatch.setattr(cost, "build_rates",
                        lambda device="cpu": asked.append(str(device)) or cost.BuildRates(3e-4, 1e-8))
    return asked


def test_overlong_sweep_is_refused_with_what_fits(server_with, pinned_rate):
    """The issue's click: five ImageNet depths at 224 px, batch 8, 10 seeds would hold the one long slot for
    minutes. Refused before anything runs, naming fewer seeds, a smaller size and fewer depths that fit the budget
    by the same estimate (one more seed would not); for a single net, the largest batch that fits."""
    server_with(2**50)  # memory is no limit here: only time refuses
    archs = list(gradflow.IMAGENET_ARCHS)
    with pytest.raises(gr.Error) as e:
        gradnorms.run_gradnorms(archs, "train", "default", 8, "224", 10, progress=no_progress)
    cfg = gradnorms.make_config(archs, "train", "default", 8, "224", 10)
    need, budget = gradflow.estimate_seconds(cfg), gradnorms.TIME_BUDGET_S
    assert need > 4 * budget
    message = str(e.value)
    assert f"about {duration(need)}" in message and f"the {duration(budget)}" in message
    seeds = int(re.search(r"(\d+) seeds?", message).group(1))
    size = int(re.search(r"; or (\d+) px", message).group(1))
    kept = tuple(re.search(r"only ([\w, ]+)\.", message).group(1).split(", "))
    fits = lambda **change: gradflow.estimate_seconds(dataclasses.replace(cfg, **change)) <= budget  # noqa: E731
    assert fits(seeds=seeds) and not fits(seeds=seeds + 1)
    assert "batch size" not in message and not fits(batch_size=2)  # ten seeds of even two images take too long
    assert fits(input_size=size) and not fits(input_size=min(s for s in gradflow.INPUT_SIZES if s > size))
    assert fits(archs=kept) and set(kept) < set(archs)
    with pytest.raises(gr.Error) as e:  # one net: fewer seeds or depths cannot help, a smaller batch can
        gradnorms.run_gradnorms(["resnet152"], "train", "default", 64, "224", 1, progress=no_progress)
    one = gradnorms.make_config(["resnet152"], "train", "default", 64, "224", 1)
    batch = int(re.search(r"batch size (\d+)", str(e.value)).group(1))
    assert gradflow.estimate_seconds(dataclasses.replace(one, batch_size=batch)) <= budget
    assert gradflow.estimate_seconds(dataclasses.replace(one, batch_size=batch + 1)) > budget
    assert "seed" not in str(e.value).split("What fits")[1]


def test_a_sweep_within_the_time_budget_runs(server_with, pinned_rate, monkeypatch):
    """The refusal is a budget, not a ban: settings it offers run."""
    server_with(2**50)
    ran = []
    monkeypatch.setattr(gradflow, "run_sweep", lambda cfg, progress=None: ran.append(cfg) or run_small(cfg))
    gradnorms.run_gradnorms(["resnet20"], "train", "default", 2, "32", 1, progress=no_progress)
    assert len(ran) == 1 and gradflow.estimate_seconds(ran[0]) <= gradnorms.TIME_BUDGET_S


def run_small(cfg: gradflow.GradFlowConfig) -> pd.DataFrame:
    """The real sweep of `cfg` on the CPU (what a GPU run would return, for a test machine without one)."""
    from resnet_lab.research.gradflow.compute import run_sweep

    return run_sweep(dataclasses.replace(cfg, device="cpu"))


def test_sweep_runs_on_the_apps_full_device(server_with, pinned_rate, monkeypatch):
    """RESNET_LAB_DEVICE=cuda:1 makes the app's device cuda:1: the sweep, its memory budget and its time estimate
    all use cuda:1, not just "cuda" (which would be GPU 0)."""
    from types import SimpleNamespace

    import torch

    from resnet_lab.runtime import memory

    server_with(2**50)
    monkeypatch.setattr(gradnorms, "zoo", lambda: SimpleNamespace(device=torch.device("cuda", 1)))
    budgets, swept = [], []
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": budgets.append(str(device)) or 2**40)
    monkeypatch.setattr(gradflow, "run_sweep", lambda cfg, progress=None: swept.append(cfg.device) or run_small(cfg))
    out = gradnorms.run_gradnorms(["resnet20"], "train", "default", 2, "32", 1, progress=no_progress)
    assert swept == ["cuda:1"] and set(budgets) == {"cuda:1"} and set(pinned_rate) == {"cuda:1"}
    assert list(out[3].net) == ["plain20", "resnet20"]
