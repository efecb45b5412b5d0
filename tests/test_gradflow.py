"""Gradient flow at init: the twins are fair, every conv is measured, and the qualitative facts hold on our nets.

The facts (see resnet_lab.research.gradflow): with BN in train mode plain nets' gradients
grow toward the input (~x1.2 per layer, Yang et al. 2019) while ResNets stay far
flatter; without BN plain nets shrink mildly and ResNets blow up forward; zero-gamma
makes every residual block the identity. CIFAR nets keep this fast.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from resnet_lab.__main__ import main
from resnet_lab.research import gradflow
from resnet_lab.research.gradflow import GradFlowConfig, measure, run_sweep, summarize
from resnet_lab.runtime import memory

CIFAR = ("resnet20", "resnet56", "resnet110")
LN10 = math.log(10)


@pytest.fixture(scope="module")
def bn_train() -> pd.DataFrame:
    """BN in train mode, 5 seeds: the sweep most facts are read from (~5 s)."""
    return summarize(run_sweep(GradFlowConfig(archs=CIFAR, seeds=5))).set_index(["arch", "variant"])


@pytest.fixture(scope="module")
def no_bn() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = run_sweep(GradFlowConfig(archs=("resnet20", "resnet56"), bn_mode="none", seeds=3))
    return df, summarize(df).set_index(["arch", "variant"])


@pytest.mark.parametrize("arch", ["resnet56", "resnet50"])
def test_twins_share_every_common_weight(arch):
    cfg = GradFlowConfig(archs=(arch,))
    res = gradflow.build_net(arch, "residual", 3, cfg).state_dict()
    plain = gradflow.build_net(arch, "plain", 3, cfg).state_dict()
    assert set(plain) <= set(res)
    assert all(".downsample." in k for k in set(res) - set(plain))  # only the projections are extra
    assert all(torch.equal(res[k], plain[k]) for k in plain)
    other = gradflow.build_net(arch, "plain", 4, cfg).state_dict()  # and the seed does matter
    assert not torch.equal(other["layer1.0.conv1.weight"], plain["layer1.0.conv1.weight"])


@contextlib.contextmanager
def hammered_global_rng() -> Iterator[list[int]]:
    """A thread reseeding and drawing from torch's global RNG nonstop, as another tab's event might.

    A tiny switch interval lets it run between any two bytecodes of the caller,
    so a `torch.manual_seed(s); build()` pair is split often, not once in a while.
    Yields a one-item list counting the hammer's iterations.
    """
    stop, count = threading.Event(), [0]

    def hammer() -> None:
        while not stop.is_set():
            torch.manual_seed(count[0])
            torch.rand(1)
            count[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_twins_share_their_weights_while_another_thread_uses_the_global_rng():
    """The race of issue 8: 17 of 357 twin pairs built after `torch.manual_seed` did not share their weights."""
    cfg = GradFlowConfig(archs=("resnet20",))
    seeds = range(40)
    quiet = {s: gradflow.build_net("resnet20", "plain", s, cfg).state_dict() for s in seeds}
    with hammered_global_rng() as hammered:
        pairs = {s: [gradflow.build_net("resnet20", v, s, cfg).state_dict() for v in gradflow.VARIANTS]
                 for s in seeds}
    assert hammered[0] > 100  # the hammer really ran meanwhile
    split = [s for s, (plain, res) in pairs.items()
             if not all(torch.equal(plain[k], res[k]) and torch.equal(plain[k], quiet[s][k]) for k in plain)]
    assert split == []


def test_library_leaves_the_global_rng_alone():
    """Drawing from (or reseeding) the global RNG would shift every other user's random stream."""
    state = torch.random.get_rng_state()
    run_sweep(GradFlowConfig(archs=("resnet20",), batch_size=2))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("arch", ["resnet20", "resnet50"])
def test_every_conv_gets_a_gradient_norm(arch):
    cfg = GradFlowConfig(archs=(arch,), batch_size=2, input_size=32)
    net = gradflow.build_net(arch, "residual", 0, cfg)
    df = pd.DataFrame(measure(arch, "residual", 0, cfg), columns=gradflow.COLUMNS)
    convs = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    w = df[df.quantity.isin(["grad_w", "grad_w_shortcut"])]
    assert set(w.layer) == convs and len(w) == len(convs)
    assert (w.value > 0).all() and np.isfinite(w.value).all()
    main_path = df[df.quantity == "grad_w"].depth_index.tolist()
    assert main_path == list(range(1, net.config.depth))  # every weighted layer but the classifier, in order
    blocks = df[df.quantity == "grad_x"]
    assert blocks.layer.tolist() == [n for n, _ in net.blocks()] and (blocks.value > 0).all()


def test_plain56_grows_more_than_resnet56_by_over_an_order_of_magnitude(bn_train):
    assert bn_train.loc[("resnet56", "plain"), "seeds"] == 5
    gap = bn_train.loc[("resnet56", "plain"), "log10_ratio_mean"] - bn_train.loc[("resnet56", "residual"),
                                                                                  "log10_ratio_mean"]
    assert gap > 1


def test_bn_train_plain_gradients_grow_toward_the_input(bn_train):
    plain = bn_train.xs("plain", level="variant")
    res = bn_train.xs("residual", level="variant")
    assert ((plain.growth_mean > 1.1) & (plain.growth_mean < 1.35)).all()  # Yang et al.: ~x1.2 per layer
    assert plain.log10_ratio_mean.is_monotonic_increasing  # deeper: more layers of growth
    assert plain.loc["resnet56", "log10_ratio_mean"] > 3 and plain.loc["resnet110", "log10_ratio_mean"] > 5
    assert (plain.log10_ratio_mean - res.log10_ratio_mean).loc[["resnet56", "resnet110"]].min() > 2


def test_plain_initial_loss_is_ln_classes(bn_train):
    plain = bn_train.xs("plain", level="variant")
    assert (abs(plain.loss_mean / LN10 - 1) < 0.10).all()


def _logits_and_labels(arch: str, seed: int, cfg: GradFlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """What `measure` feeds the loss: the residual net's logits on the seed's batch (train-mode BN), as float64."""
    net = gradflow.build_net(arch, "residual", seed, cfg)
    x, y = gradflow.make_batch(cfg, cfg.size_for(arch), seed)
    with torch.no_grad():
        return net(x).double().numpy(), y.numpy()


def _cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy, log-sum-exp written out in float64 (independent of torch's)."""
    m = z.max(1)
    return m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(len(y)), y]


def _gaussian_logit_loss(var: float, classes: int, draws: int = 200_000) -> float:
    """E[CE] if the logits were i.i.d. N(0, var) over the classes (Monte Carlo, seeded).

    For small var this is ln C + var/2 (second order in the logits); for the deep
    ResNets var reaches ~4.5, where that expansion overshoots by 0.6, so it is integrated.
    """
    z = np.random.default_rng(0).normal(0.0, math.sqrt(var), (draws, classes))
    return float(_cross_entropy(z, np.zeros(draws, dtype=int)).mean())


def test_logged_loss_is_the_cross_entropy_of_the_logits(bn_train):
    cfg = GradFlowConfig(archs=CIFAR, seeds=5)
    for arch in CIFAR:
        z, y = _logits_and_labels(arch, 0, cfg)
        logged = gradflow.measure(arch, "residual", 0, cfg)[0]
        assert logged[5] == "loss" and logged[7] == pytest.approx(_cross_entropy(z, y).mean(), rel=1e-6)


def test_resnet_initial_loss_grows_with_depth_as_the_logit_variance_predicts(bn_train):
    """Each block adds its branch's variance to the identity path, so the logits' spread grows with depth.

    Measured (batch 8 of noise, seeds 0-4): logit variance across classes 0.56, 2.0,
    4.5 for ResNet-20/56/110 (about linear in the 9/27/54 blocks), loss 2.59, 3.12,
    3.91; i.i.d. Gaussian logits with those variances give 2.55, 3.13, 3.91. Plain
    twins' logits barely spread (variance ~0.06): their loss is ln 10.
    """
    cfg = GradFlowConfig(archs=CIFAR, seeds=5)
    loss = bn_train.xs("residual", level="variant").loss_mean.loc[list(CIFAR)]
    variances = []
    for arch in CIFAR:
        zs, ys = zip(*(_logits_and_labels(arch, seed, cfg) for seed in range(5)))
        z, y = np.concatenate(zs), np.concatenate(ys)
        assert _cross_entropy(z, y).mean() == pytest.approx(loss[arch], rel=1e-6)  # the sweep's loss, recomputed
        var = float(z.var(1, ddof=1).mean())
        variances.append(var)
        assert loss[arch] == pytest.approx(_gaussian_logit_loss(var, cfg.num_classes), rel=0.03), arch
    assert np.all(np.diff(variances) > 0) and variances[-1] > 5 * variances[0]
    np.testing.assert_allclose(loss.to_numpy(), [2.6, 3.1, 3.9], atol=0.05)  # the module docstring's numbers


def test_without_bn_plain_nets_shrink_and_resnets_blow_up(no_bn):
    df, summary = no_bn
    plain = summary.xs("plain", level="variant")
    assert (plain.log10_ratio_mean < 0).all() and (plain.dx_log10_ratio_mean < 0).all()
    assert (abs(plain.loss_mean / LN10 - 1) < 0.10).all()
    assert summary.loc[("resnet56", "residual"), "loss_mean"] > 100
    std = df[(df.arch == "resnet56") & (df.variant == "residual") & (df.quantity == "act_std") & (df.seed == 0)]
    assert std.value.iloc[-1] > 100 * std.value.iloc[0]  # the forward pass explodes block by block


def test_eval_mode_bn_at_init_is_no_bn(no_bn):
    _, none = no_bn
    ev = summarize(run_sweep(GradFlowConfig(archs=("resnet20",), bn_mode="eval", seeds=3))).set_index(
        ["arch", "variant"])
    cols = ["log10_ratio_mean", "dx_log10_ratio_mean", "loss_mean"]
    np.testing.assert_allclose(ev[cols].to_numpy(), none.loc[["resnet20"], cols].to_numpy(), rtol=1e-3, atol=1e-3)


def test_zero_gamma_makes_resnet_blocks_identities():
    df = run_sweep(GradFlowConfig(archs=("resnet20",), zero_init=True))
    w = df[df.quantity == "grad_w"]
    res, plain = w[w.variant == "residual"], w[w.variant == "plain"]
    assert res[res.layer == "conv1"].value.item() > 0  # the stem still learns through the identity path
    assert (res[res.layer != "conv1"].value == 0).all()  # the branches get no gradient until the gammas move
    assert (plain.value == 0).all()  # no identity path: nothing gets through
    s = summarize(df).set_index("variant")
    assert abs(s.loc["residual", "dx_growth_mean"] - 1) < 0.02
    assert math.isnan(s.loc["plain", "log10_ratio_mean"])


def test_shapes_input_works():
    df = run_sweep(GradFlowConfig(archs=("resnet20",), data="shapes", batch_size=4))
    assert (df[df.quantity == "grad_w"].value > 0).all()


def test_csv_round_trip(tmp_path):
    df = run_sweep(GradFlowConfig(archs=("resnet20",), seeds=2, batch_size=4))
    path = tmp_path / "g.csv"
    gradflow.to_csv(df, str(path))
    back = gradflow.read_csv(str(path))
    pd.testing.assert_frame_equal(back, df, check_exact=False, rtol=1e-8)
    pd.testing.assert_frame_equal(summarize(back), summarize(df), check_exact=False, rtol=1e-7)
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        gradflow.read_csv(str(tmp_path / "bad.csv"))


def test_plots_use_log_scale():
    df = run_sweep(GradFlowConfig(archs=("resnet20",), batch_size=4))
    fig = gradflow.plot_profile(df, "grad_w")
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 2  # plain and residual


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="plain twin"):
        GradFlowConfig(archs=("plain20",))
    with pytest.raises(ValueError, match="bn_mode"):
        GradFlowConfig(bn_mode="batch")
    with pytest.raises(ValueError, match="at least 2"):
        GradFlowConfig(batch_size=1)


def test_cli_writes_csv_plot_and_record(tmp_path, monkeypatch, capsys):
    """No --device: `devices.resolve_device` decides (RESNET_LAB_DEVICE, else cuda when present), as for every
    other command; the JSON beside the CSV records the device, the command and the cost model's estimate."""
    import json

    from resnet_lab.runtime import devices

    monkeypatch.delenv(devices.ENV, raising=False)
    out, png = tmp_path / "g.csv", tmp_path / "g.png"
    assert main(["gradnorms", "--archs", "resnet20", "--batch-size", "4", "--out", str(out), "--plot", str(png)]) == 0
    assert set(gradflow.read_csv(str(out)).variant) == {"plain", "residual"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "log10_ratio_mean" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["device"] == str(devices.resolve_device(None))
    assert record["command"].startswith("python -m resnet_lab gradnorms") and record["estimated_seconds"] > 0
    assert "Per depth" in record["reading"]
    if not torch.cuda.is_available():
        assert main(["gradnorms", "--archs", "resnet20", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


# --- memory: the estimate that lets the CLI and the Research tab refuse a sweep that would kill the process ---


def test_memory_estimate_bounds_a_measured_peak():
    """The process's peak resident memory over one `measure` (fresh subprocess, VmHWM) vs the estimate.

    Measured on 2 shared CPU cores: the resident peak is 0.95-1.27x the tensor count
    (`net_memory` + batch) over six configs, so `estimate_memory` (x2.2, for the worse
    overheads of multi-step training and evaluation) bounds it: measured/estimate 0.46-0.49
    here (0.43-0.58 in earlier sessions). Leaving out the saved activations (most of it)
    would give ~5x the count.
    """
    from benchmarks.bench_memory import gradflow_config, measure

    cfg = gradflow_config()
    added = measure("gradflow")
    tensors = gradflow.net_memory(cfg.archs[0], "residual", cfg) + cfg.batch_size * 3 * cfg.input_size ** 2 * 4
    assert 0.8 < added / tensors < 1.35, (added, tensors)
    assert 0.35 < added / gradflow.estimate_memory(cfg) <= 1.0


@pytest.mark.parametrize("arch,bn_mode", [("resnet20", "train"), ("resnet50", "train"), ("resnet50", "eval"),
                                          ("resnet20", "none")])
def test_meta_count_equals_what_a_real_forward_saves(arch, bn_mode):
    """The estimate counts saved tensors on meta with a stand-in BN; a real CPU forward with real BN saves the same."""
    cfg = GradFlowConfig(archs=(arch,), batch_size=4, input_size=32, bn_mode=bn_mode)
    for variant in gradflow.VARIANTS:
        net = gradflow.build_net(arch, variant, 0, cfg)
        real, real_largest = memory.saved_tensor_bytes(net, *gradflow.make_batch(cfg, 32, 0))
        params, _, (saved, _, largest) = memory._profile(arch, variant, 32, bn_mode, cfg.num_classes)
        assert params == sum(p.numel() * p.element_size() for p in net.parameters())
        assert saved == real, variant
        assert largest == real_largest


def test_estimate_is_affine_in_the_batch_and_refuses_what_does_not_fit(monkeypatch, capsys):
    big = GradFlowConfig(archs=("resnet20", "resnet152"), input_size=224, batch_size=64)
    need = gradflow.estimate_memory(big)
    assert 32 * 2**30 < need < 37 * 2**30  # the "about 18 GB" sweep: tensors 15.8 GB, x2.2 for the process
    budget = 3 * 2**30
    fits = gradflow.largest_batch(big, budget)
    assert fits is not None and 2 <= fits < 64
    assert gradflow.estimate_memory(replace(big, batch_size=fits)) <= budget
    assert gradflow.estimate_memory(replace(big, batch_size=fits + 1)) > budget
    monkeypatch.setattr(memory.resources, "memory_available", lambda: budget)
    assert main(["gradnorms", "--archs", "resnet20,resnet152", "--input-size", "224", "--batch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "resnet152 at 224 px" in err and f"--batch-size {fits}" in err and "3.0 GiB" in err
    monkeypatch.setattr(memory.resources, "memory_available", lambda: 2**20)
    assert main(["gradnorms", "--archs", "resnet20", "--batch-size", "4"]) == 2
    assert "Even the smallest batch does not fit" in capsys.readouterr().err


# --- time: the one cost model sizes a sweep before it runs ---


@pytest.fixture
def fixed_rate(monkeypatch) -> tuple:
    """The cost model's rates pinned (they are measured on first use otherwise), the devices asked kept."""
    from resnet_lab.runtime import cost

    rates, builds, asked = cost.Rates(0.02, 1e-4), cost.BuildRates(3e-4, 1e-8), []
    monkeypatch.setattr(cost, "rates", lambda device="cpu": asked.append(str(device)) or rates)
    monkeypatch.setattr(cost, "build_rates", lambda device="cpu": asked.append(str(device)) or builds)
    return rates, builds, asked


def test_estimated_seconds_are_a_build_and_one_training_step_per_net_from_the_cost_model(fixed_rate):
    """Each net: built (its seeded init) and one forward and backward on one batch ("train_step" work: its layer
    calls once, its MACs per image), at its own input size; seeds add."""
    from resnet_lab.runtime import cost

    rates, builds, asked = fixed_rate
    cfg = GradFlowConfig(archs=("resnet20", "resnet18"), seeds=3, batch_size=4, device="cpu")
    nets = [("resnet20", 32), ("plain20", 32), ("resnet18", 64), ("plain18", 64)]
    step = sum(cost.layer_calls(a, s, 10) * rates.per_call + 4 * cost.macs_per_image(a, s, 10) / 1e9 * rates.per_gmac
               for a, s in nets) * cost.WORK["train_step"]
    built = sum(cost.modules_of(a, 10) * builds.per_module + cost.params_of(a, 10) * builds.per_param
                for a, _ in nets)
    expected = 3 * (step + built)
    assert gradflow.estimate_seconds(cfg) == pytest.approx(expected)
    assert gradflow.estimate_seconds(replace(cfg, seeds=6)) == pytest.approx(2 * expected)
    both = gradflow.estimate_cost(cfg)
    assert both.seconds == pytest.approx(expected) and both.bytes == gradflow.estimate_memory(cfg)
    asked.clear()
    gradflow.estimate_seconds(GradFlowConfig(archs=("resnet20",), device=torch.device("cuda", 1)))
    assert set(asked) == {"cuda:1"}  # the rates of the sweep's own device, index included


def test_time_fits_names_seeds_size_and_depths_that_fit(fixed_rate):
    """The issue's click: five ImageNet depths at 224 px, batch 8, 10 seeds. Each offered setting fits the budget;
    one more seed, a batch one larger, or the next offered size up would not; where nothing of a kind fits, none
    is offered."""
    cfg = GradFlowConfig(input_size=224, seeds=10)
    budget = 60.0
    fit = gradflow.time_fits(cfg, budget)
    assert fit is not None and fit.need == pytest.approx(gradflow.estimate_seconds(cfg)) and fit.need > budget
    assert fit.seeds is not None and 1 <= fit.seeds < 10
    assert gradflow.estimate_seconds(replace(cfg, seeds=fit.seeds)) <= budget
    assert gradflow.estimate_seconds(replace(cfg, seeds=fit.seeds + 1)) > budget
    assert fit.batch is None and gradflow.estimate_seconds(replace(cfg, batch_size=2)) > budget  # 10 seeds of 2
    assert gradflow.estimate_seconds(replace(cfg, input_size=fit.input_size)) <= budget
    above = [s for s in gradflow.INPUT_SIZES if fit.input_size < s < 224]
    assert all(gradflow.estimate_seconds(replace(cfg, input_size=s)) > budget for s in above)
    assert fit.archs and set(fit.archs) < set(cfg.archs) and "resnet152" not in fit.archs
    assert gradflow.estimate_seconds(replace(cfg, archs=fit.archs)) <= budget
    assert gradflow.time_fits(cfg, fit.need) is None
    one = GradFlowConfig(archs=("resnet152",), input_size=224, batch_size=64)  # one net: only batch or size help
    fit = gradflow.time_fits(one, budget)
    assert fit.seeds is None and fit.archs is None and fit.batch is not None
    assert gradflow.estimate_seconds(replace(one, batch_size=fit.batch)) <= budget
    assert gradflow.estimate_seconds(replace(one, batch_size=fit.batch + 1)) > budget


def test_config_keeps_the_full_device():
    """A torch.device with an index (the app's cuda:1) stays cuda:1, so the sweep, its memory and its rate use it."""
    assert GradFlowConfig(device=torch.device("cuda", 1)).device == "cuda:1"
    assert GradFlowConfig(device="cuda:1") == GradFlowConfig(device=torch.device("cuda:1"))  # one cache key
    big = GradFlowConfig(archs=("resnet20",), device="cuda:1")
    assert gradflow.estimate_memory(big) < gradflow.estimate_memory(replace(big, device="cpu"))  # CUDA's overhead
    with pytest.raises(ValueError, match="device"):
        GradFlowConfig(device="tpu")
