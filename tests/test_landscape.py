"""Loss landscapes: filter-normalized directions, exact restoration, the summary numbers, the CLI and torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resnet_lab.__main__ import main
from resnet_lab.research import landscape as L
from resnet_lab.resnet import build
from resnet_lab.shapes import CLASSES, MEAN, STD
from resnet_lab.weights import LoadedWeights, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16


def _loaded(arch: str = "resnet20", seed: int = 0, **kw) -> LoadedWeights:
    """A small Shapes 'checkpoint' in memory: random weights and BN statistics that are not the identity."""
    net = build(arch, num_classes=len(CLASSES), seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    cfg = {**net.pretrained_cfg, "input_size": (3, SIZE, SIZE), "mean": MEAN, "std": STD}
    meta = {"arch": arch, "num_classes": len(CLASSES), "classes": list(CLASSES), "input_size": [3, SIZE, SIZE],
            "mean": list(MEAN), "std": list(STD), "data": {"name": "shapes", "clutter": False, "test_seed": 999}}
    return LoadedWeights(net.eval(), "random", cfg, meta)


@pytest.fixture(scope="module")
def res20() -> LoadedWeights:
    return _loaded("resnet20")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.uint8) if a[k].is_floating_point() else a[k],
                                                    b[k].view(torch.uint8) if b[k].is_floating_point() else b[k])
                                        for k in a)


def test_alpha_zero_reproduces_the_models_own_loss(res20):
    x, y = L.held_out_set(res20, 24)
    with torch.no_grad():
        logits = res20.model.eval()(x)
    own_loss = F.cross_entropy(logits, y).item()
    own_acc = (logits.argmax(1) == y).float().mean().item()
    df = L.compute_landscape([res20], grid=3, span=0.5, dims=2, n=24, batch=10)
    center = df[(df.alpha == 0) & (df.beta == 0)].iloc[0]
    assert center.loss == L.loss_and_accuracy(res20.model, x, y, batch=10)[0]  # exactly: same code, same batching
    assert center.loss == pytest.approx(own_loss, rel=1e-5) and center.accuracy == pytest.approx(own_acc)
    assert (df.loss.drop(center.name) != center.loss).all()  # every other point moved the weights


def test_every_filter_of_a_direction_has_its_weight_filters_norm(res20):
    d = L.random_direction(res20.model, seed=3)
    weights = dict(res20.model.named_parameters())
    assert set(d) == {k for k, p in weights.items() if p.dim() > 1}
    assert any(k.startswith("fc.") for k in d) and any("conv" in k for k in d)
    for k, t in d.items():
        w = weights[k].detach()
        torch.testing.assert_close(t.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        # and it is still the random draw, only rescaled per filter (not the weights, not one scale per tensor)
        raw = L.raw_direction(res20.model, seed=3)[k]
        cos = F.cosine_similarity(t.flatten(1), raw.flatten(1), dim=1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_a_dead_filter_gets_no_direction():
    w = _loaded()
    with torch.no_grad():
        w.model.conv1.weight[3].zero_()
    d = L.random_direction(w.model, seed=0)["conv1.weight"]
    assert torch.count_nonzero(d[3]) == 0 and torch.isfinite(d).all()


def test_bn_and_bias_parameters_and_statistics_do_not_move(res20):
    model = res20.model
    before = _state(model)
    fixed = {k for k, v in before.items() if v.dim() <= 1}  # BN gamma/beta/statistics, fc.bias
    assert "fc.bias" in fixed and "bn1.running_var" in fixed
    moved = []
    x, y = L.held_out_set(res20, 4)
    d1, d2 = L.random_direction(model, 0, 0), L.random_direction(model, 0, 1)

    def check(_i: int) -> None:  # runs while the weights are perturbed
        now = model.state_dict()
        assert all(torch.equal(now[k], before[k]) for k in fixed)
        moved.append(sorted(k for k in before if not torch.equal(now[k], before[k])))

    L.evaluate_grid(model, x, y, [(0.3, -0.2), (-0.5, 0.4)], d1, d2, check)
    assert moved[0] == moved[1] == sorted(d1)


def test_same_seed_same_directions_other_seed_or_index_other_directions(res20):
    a, b = L.random_direction(res20.model, 5, 0), L.random_direction(res20.model, 5, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (L.random_direction(res20.model, 6, 0), L.random_direction(res20.model, 5, 1)):
        assert not any(torch.equal(a[k], other[k]) for k in a)


def test_twins_get_the_same_direction_tensors_where_their_parameters_correspond():
    res, plain = _loaded("resnet20", seed=0), _loaded("plain20", seed=11)  # different weights, same names
    raw_r, raw_p = L.raw_direction(res.model, 2), L.raw_direction(plain.model, 2)
    assert raw_r.keys() == raw_p.keys()
    assert all(torch.equal(raw_r[k], raw_p[k]) for k in raw_r)
    # normalized: the same tensor per filter, each scaled to its own net's filter norm
    d_r, d_p = L.random_direction(res.model, 2), L.random_direction(plain.model, 2)
    wr, wp = dict(res.model.named_parameters()), dict(plain.model.named_parameters())
    for k in d_r:
        unit_r = d_r[k].flatten(1) / wr[k].detach().flatten(1).norm(dim=1, keepdim=True)
        unit_p = d_p[k].flatten(1) / wp[k].detach().flatten(1).norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit_r, unit_p, rtol=1e-5, atol=1e-7)
    # projection shortcuts (option B) exist in the residual net only: the shared names still agree
    res_b = build("resnet20", num_classes=8, shortcut="B", seed=0)
    raw_b = L.raw_direction(res_b, 2)
    assert set(raw_b) - set(raw_p) == {k for k in raw_b if "downsample" in k} != set()
    assert all(torch.equal(raw_b[k], raw_p[k]) for k in raw_p)


def test_weights_restored_bit_for_bit_even_after_an_error(res20):
    model = res20.model
    before = _state(model)
    x, y = L.held_out_set(res20, 4)
    d1, d2 = L.random_direction(model, 0, 0), L.random_direction(model, 0, 1)
    L.evaluate_grid(model, x, y, [(0.7, 0.1), (-0.3, 0.9)], d1, d2)
    assert _bitwise_equal(_state(model), before)

    def boom(i: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        L.evaluate_grid(model, x, y, [(0.7, 0.1)], d1, d2, boom)
    assert _bitwise_equal(_state(model), before)


def test_compute_landscape_leaves_the_callers_model_and_the_global_rng_alone(res20):
    before = _state(res20.model)
    rng, np_rng = torch.get_rng_state(), np.random.get_state()
    df1 = L.compute_landscape([res20], grid=3, dims=1, n=6, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng))
    assert _bitwise_equal(_state(res20.model), before)
    torch.manual_seed(1234)  # a different global RNG state changes nothing
    pd.testing.assert_frame_equal(L.compute_landscape([res20], grid=3, dims=1, n=6, seed=1), df1)


def _synthetic(fn, models=("resnet20", "plain20"), grid: int = 9) -> pd.DataFrame:
    axis = L.grid_axis(grid, 1.0)
    rows = [(m, a, b, f(a, b), 1.0 - min(f(a, b), 0.9)) for m, f in zip(models, fn) for a in axis for b in axis]
    return pd.DataFrame(rows, columns=L.COLUMNS)


def test_surface_hessian_and_nonconvexity_on_known_surfaces():
    h = 0.25
    a, b = np.meshgrid(L.grid_axis(9, 1.0), L.grid_axis(9, 1.0), indexing="ij")
    lmin, lmax = L.surface_hessian((a + b) ** 2, h)  # convex, eigenvalues 0 and 4 (the cross term matters)
    np.testing.assert_allclose(lmin, 0, atol=1e-9)
    np.testing.assert_allclose(lmax, 4)
    lmin, lmax = L.surface_hessian(a * b, h)  # a saddle: -1 and 1
    np.testing.assert_allclose(lmin, -1)
    np.testing.assert_allclose(lmax, 1)
    assert L.nonconvexity(*L.surface_hessian(a**2 + 3 * b**2, h)) == (0.0, 0.0)
    assert L.nonconvexity(*L.surface_hessian(a * b, h)) == (1.0, 1.0)


def test_local_minima_counts_spurious_minima_only():
    a, b = np.meshgrid(L.grid_axis(9, 1.0), L.grid_axis(9, 1.0), indexing="ij")
    bowl = a**2 + b**2
    assert L.local_minima(bowl) == 0  # the centre is the trained minimum, not a spurious one
    dented = bowl.copy()
    dented[2, 6] -= 1.0
    dented[6, 1] -= 1.0
    dented[0, 4] -= 5.0  # on the border: not counted (no full neighbourhood)
    assert L.local_minima(dented) == 2


def test_the_central_share_looks_only_near_the_minimum():
    bowl_then_chaos = lambda a, b: a**2 + b**2 + 5 * max(0.0, abs(a) - 0.7) * np.sin(20 * b)  # noqa: E731
    s = L.summarize(_synthetic([bowl_then_chaos], models=("resnet20",), grid=17)).iloc[0]
    assert s.nonconvex_center == 0 and s.nonconvex_share > 0.1


def test_summary_and_text_say_which_twin_is_smoother():
    df = _synthetic([lambda a, b: 0.01 + a**2 + b**2, lambda a, b: 0.02 + 4 * (a**2 + b**2) + np.sin(9 * a * b)])
    s = L.summarize(df).set_index("model")
    assert s.loc["resnet20", "nonconvex_share"] == 0 and s.loc["plain20", "nonconvex_share"] > 0.2
    assert s.loc["resnet20", "rise_mean"] == pytest.approx(0.25)  # 0.5**2, at the step span/2
    text = L.describe_landscape(df)
    ratio = s.loc["plain20", "rise_mean"] / s.loc["resnet20", "rise_mean"]
    assert "resnet20's surface is the more convex: 0% of it is non-convex" in text
    assert f"plain20's minimum is the sharper one: its loss rises {ratio:.1f}x more" in text
    assert "disagrees" not in text
    flipped = df.assign(model=df.model.map({"resnet20": "plain20", "plain20": "resnet20"}))
    text = L.describe_landscape(flipped)  # a flatter plain-20 is what Li et al. allow; a flatter plain-56 is not
    assert "does not contradict Li et al." in text and "disagrees" not in text
    deep = flipped.assign(model=flipped.model.str.replace("20", "56"))
    assert "disagrees with Li et al." in L.describe_landscape(deep)


def test_text_flags_a_net_at_chance_and_handles_1d():
    line = [("plain56", a, 0.0, 2.08, 0.125) for a in L.grid_axis(5, 1.0)]
    text = L.describe_landscape(pd.DataFrame(line, columns=L.COLUMNS))
    assert "near chance" in text and "never trained" in text and "non-convex" not in text
    res = [("resnet56", a, 0.0, 0.01 + a**2, 1.0) for a in L.grid_axis(5, 1.0)]
    text = L.describe_landscape(pd.DataFrame(line + res, columns=L.COLUMNS))
    assert "plain56's surface is flatter" in text  # what the numbers say, and then why:
    assert "plain56 did not train to a minimum, so this pair is not Li et al.'s comparison" in text
    assert "disagrees" not in text
    barely = [("plain56", a, 0.0, 1.79 + a**2, 0.27) for a in L.grid_axis(5, 1.0)]  # above chance, loss still high
    text = L.describe_landscape(pd.DataFrame(barely + res, columns=L.COLUMNS))
    assert "far from a minimum" in text and "plain56 did not train to a minimum" in text


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("twins")
    out = []
    for arch, seed in (("plain20", 1), ("resnet20", 0)):
        w = _loaded(arch, seed)
        out.append(save_checkpoint(w.model, folder / f"shapes_{arch}", w.meta))
    return out


def test_cli_writes_csv_plots_and_prints_the_text(checkpoints, tmp_path, capsys):
    models = ",".join(map(str, checkpoints))
    rc = main(["landscape", "--models", models, "--grid", "3", "--dims", "2", "--n", "8", "--device", "cpu",
               "--out", str(tmp_path), "--stem", "ls", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    df = L.read_csv(tmp_path / "ls.csv")
    assert list(df.columns) == L.COLUMNS and len(df) == 2 * 9 and list(dict.fromkeys(df.model)) == ["plain20",
                                                                                                   "resnet20"]
    assert L.describe_landscape(df) in out
    assert all((tmp_path / f).stat().st_size > 0 for f in ("ls_1d.png", "ls_2d.png", "ls.json"))


@pytest.mark.parametrize("args, message", [
    (["--grid", "4"], "--grid must be odd"),
    (["--n", "0"], "--n must be at least 1"),
    (["--span", "nan"], "--span must be a positive number"),
    (["--models", "nowhere.safetensors"], "not found"),
])
def test_cli_refuses_bad_input_with_a_message(checkpoints, capsys, args, message):
    argv = ["landscape", "--models", str(checkpoints[0]), "--quiet", "--device", "cpu", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_write_the_same_csv_as_one_process(checkpoints, tmp_path):
    common = ["landscape", "--models", ",".join(map(str, checkpoints)), "--grid", "3", "--dims", "2",
              "--images", "6", "--device", "cpu", "--quiet", "--stem", "ls"]  # --images: see add_arguments
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank below: the same kernels, so the same bits
    try:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "resnet_lab", *common,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "on 2 x cpu" in two.stdout
    assert (tmp_path / "two" / "ls.csv").read_text() == (tmp_path / "one" / "ls.csv").read_text()


def test_a_nets_landscape_does_not_depend_on_the_nets_beside_it(res20):
    plain = _loaded("plain20", seed=4)
    both = L.compute_landscape([plain, res20], grid=3, dims=2, n=6, seed=2)
    alone = pd.concat([L.compute_landscape([w], grid=3, dims=2, n=6, seed=2) for w in (plain, res20)],
                      ignore_index=True)
    pd.testing.assert_frame_equal(both, alone)  # so per-net runs (in parallel) may be concatenated


def test_quick_settings_fit_their_budget_and_shrink_for_deeper_nets():
    q20 = L.quick_settings(["resnet20", "plain20"], seconds=25)
    q56 = L.quick_settings(["resnet56", "plain56"], seconds=25)
    assert q20["seconds"] <= 25 and q56["seconds"] <= 25
    assert q56["n"] * q56["grid"] < q20["n"] * q20["grid"]
    assert L.estimate_seconds(["resnet56"], 11, 2, 100) > L.estimate_seconds(["resnet20"], 11, 2, 100) * 2.5


_MEMORY_SETUP = """
import torch
from resnet_lab.research import landscape as L
from resnet_lab.resnet import build
from resnet_lab.shapes import MEAN, STD
from resnet_lab.weights import LoadedWeights
def loaded(arch):
    net = build(arch, num_classes=8, seed=0).eval()
    cfg = {**net.pretrained_cfg, "input_size": (3, 32, 32), "mean": MEAN, "std": STD}
    return LoadedWeights(net, "random", cfg, {"arch": arch, "data": {"name": "shapes", "clutter": False}})
models = [loaded("plain20"), loaded("resnet20")]
L.compute_landscape(models, grid=3, dims=1, n=8)
"""


def test_memory_estimate_bounds_a_measured_peak():
    """Peak resident memory of a run (fresh subprocess, after a warm-up) against `estimate_memory`: measured
    169-291 MiB (it varies with the machine's load) against 377 MiB estimated for two 20-layer nets on 512 images;
    leaving out the activations would give an estimate of ~30 MiB."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peak_memory import added_peak

    added = added_peak(_MEMORY_SETUP, "L.compute_landscape(models, grid=3, dims=1, n=512)")
    estimate = L.estimate_memory(["plain20", "resnet20"], 512)
    assert 0.4 < added / estimate <= 1.0


def test_a_checkpoint_not_trained_on_shapes_is_refused_by_name(tmp_path, capsys):
    w = _loaded()
    path = save_checkpoint(w.model, tmp_path / "cifar_resnet20", {**w.meta, "data": {"name": "cifar10"}})
    assert main(["landscape", "--models", str(path), "--grid", "3", "--n", "2", "--device", "cpu", "--quiet"]) == 2
    assert "trained on 'cifar10'" in capsys.readouterr().err
