"""Loss landscapes: filter-normalized directions, exact restoration, the controls (checked by hand), the readings
and their verdicts, the CLI and torchrun."""

from __future__ import annotations

import copy
import json
import math
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
from conftest import near_ties

from resnet_lab.__main__ import main
from resnet_lab.data.heldout import held_out_set
from resnet_lab.data.shapes import CLASSES, MEAN, STD
from resnet_lab.models.resnet import build
from resnet_lab.models.weights import LoadedWeights, save_checkpoint
from resnet_lab.research import landscape as L
from resnet_lab.research.landscape import compute, directions, readings
from resnet_lab.research.study import load_models
from resnet_lab.runtime.scoring import chunks, score

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16


def _loaded(arch: str = "resnet20", seed: int = 0, **kw) -> LoadedWeights:
    """A small Shapes 'checkpoint' in memory: random weights, BN statistics that are not the identity, and BN's
    batch counter where training leaves it (a fresh net's 0 would let a re-estimation that skipped the reset pass:
    with momentum None its first batch replaces the statistics whatever they were)."""
    net = build(arch, num_classes=len(CLASSES), seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(1000)
    cfg = {**net.pretrained_cfg, "input_size": (3, SIZE, SIZE), "mean": MEAN, "std": STD}
    meta = {"arch": arch, "num_classes": len(CLASSES), "classes": list(CLASSES), "input_size": [3, SIZE, SIZE],
            "mean": list(MEAN), "std": list(STD),
            "data": {"name": "shapes", "clutter": False, "test_seed": 999, "train_seed": 0}}
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
    data = held_out_set(res20, 24)
    with torch.no_grad():
        logits = res20.model.eval()(data.x)
    df, _ = L.compute_landscape([res20], grid=5, span=0.5, dims=2, n=24, batch=10)
    center = df[(df.alpha == 0) & (df.beta == 0)].iloc[0]
    assert center.loss == score(res20.model, chunks(data.x, data.y, 10)).loss  # exactly: the one evaluation loop
    assert center.loss == pytest.approx(F.cross_entropy(logits, data.y).item(), rel=1e-5)
    assert center.accuracy == pytest.approx((logits.argmax(1) == data.y).float().mean().item())
    assert (df.loss.drop(center.name) != center.loss).all()  # every other point moved the weights


def test_every_filter_of_a_direction_has_its_weight_filters_norm(res20):
    d = L.random_direction(res20.model, seed=3)
    weights = dict(res20.model.named_parameters())
    assert set(d) == {k for k, p in weights.items() if p.dim() > 1}
    assert any(k.startswith("fc.") for k in d) and any("conv" in k for k in d)
    for k, t in d.items():
        w = weights[k].detach()
        torch.testing.assert_close(t.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        raw = directions.raw_direction(res20.model, seed=3)[k]  # still the random draw, rescaled per filter
        cos = F.cosine_similarity(t.flatten(1), raw.flatten(1), dim=1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_a_dead_filter_gets_no_direction():
    w = _loaded()
    with torch.no_grad():
        w.model.conv1.weight[3].zero_()
    d = L.random_direction(w.model, seed=0)["conv1.weight"]
    assert torch.count_nonzero(d[3]) == 0 and torch.isfinite(d).all()


def test_bn_and_bias_do_not_move_and_weights_come_back_bit_for_bit_even_after_an_error(res20):
    model = res20.model
    before = _state(model)
    fixed = {k for k, v in before.items() if v.dim() <= 1}  # BN gamma/beta/statistics, fc.bias
    assert "fc.bias" in fixed and "bn1.running_var" in fixed
    d1, d2 = L.random_direction(model, 0, 0), L.random_direction(model, 0, 1)
    with directions.moving(model, d1, d2) as mover:
        mover.move(0.3, -0.2)
        now = model.state_dict()
        assert all(torch.equal(now[k], before[k]) for k in fixed)
        assert sorted(k for k in before if not torch.equal(now[k], before[k])) == sorted(d1)
    assert _bitwise_equal(_state(model), before)
    with pytest.raises(KeyboardInterrupt), directions.moving(model, d1, d2) as mover:
        mover.move(0.7, 0.1)
        raise KeyboardInterrupt
    assert _bitwise_equal(_state(model), before)


def test_same_seed_same_directions_other_seed_or_index_other_directions(res20):
    a, b = L.random_direction(res20.model, 5, 0), L.random_direction(res20.model, 5, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (L.random_direction(res20.model, 6, 0), L.random_direction(res20.model, 5, 1)):
        assert not any(torch.equal(a[k], other[k]) for k in a)


def test_twins_get_the_same_direction_tensors_where_their_parameters_correspond():
    res, plain = _loaded("resnet20", seed=0), _loaded("plain20", seed=11)  # different weights, same names
    raw_r, raw_p = directions.raw_direction(res.model, 2), directions.raw_direction(plain.model, 2)
    assert raw_r.keys() == raw_p.keys() and all(torch.equal(raw_r[k], raw_p[k]) for k in raw_r)
    d_r, d_p = L.random_direction(res.model, 2), L.random_direction(plain.model, 2)
    wr, wp = dict(res.model.named_parameters()), dict(plain.model.named_parameters())
    for k in d_r:
        unit_r = d_r[k].flatten(1) / wr[k].detach().flatten(1).norm(dim=1, keepdim=True)
        unit_p = d_p[k].flatten(1) / wp[k].detach().flatten(1).norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit_r, unit_p, rtol=1e-5, atol=1e-7)
    res_b = build("resnet20", num_classes=8, shortcut="B", seed=0)  # projections exist in the residual net only
    raw_b = directions.raw_direction(res_b, 2)
    assert set(raw_b) - set(raw_p) == {k for k in raw_b if "downsample" in k} != set()
    assert all(torch.equal(raw_b[k], raw_p[k]) for k in raw_p)


def test_compute_landscape_leaves_the_callers_model_and_the_global_rng_alone(res20):
    before = _state(res20.model)
    rng, np_rng = torch.get_rng_state(), np.random.get_state()
    df1, _ = L.compute_landscape([res20], grid=5, dims=1, n=6, seeds=[1], controls=L.CONTROLS, bn_images=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng))
    assert _bitwise_equal(_state(res20.model), before)
    torch.manual_seed(1234)  # a different global RNG state changes nothing
    df2, _ = L.compute_landscape([res20], grid=5, dims=1, n=6, seeds=[1], controls=L.CONTROLS, bn_images=8)
    pd.testing.assert_frame_equal(df2, df1)


# ----------------------------------------------------------------------------- the controls, by hand


def test_bn_re_estimation_is_the_average_of_batch_statistics_and_is_undone(res20):
    """The first BN's re-estimated running mean/var equal the mean over batches of its input's per-batch mean and
    unbiased variance, computed here from conv1 by hand; the stored statistics come back afterwards. The net's BNs
    have counted 1000 training batches: without the reset, the stored statistics would keep a 1000/1003 share."""
    net = res20.model
    assert all(int(m.num_batches_tracked) == 1000 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = held_out_set(res20, 20, split="train").x
    before = _state(net)
    with compute.bn_statistics_kept(net):
        compute.recalibrate_bn(net, x, batch=8)  # batches of 8, 8 and 4
        with torch.no_grad():
            h = net.conv1(x)
        parts = [h[i:i + 8] for i in range(0, 20, 8)]
        mean = torch.stack([p.mean((0, 2, 3)) for p in parts]).mean(0)
        var = torch.stack([p.transpose(0, 1).flatten(1).var(1, unbiased=True) for p in parts]).mean(0)
        torch.testing.assert_close(net.bn1.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.bn1.running_var, var, rtol=1e-5, atol=1e-6)
        assert not net.training
    assert _bitwise_equal(_state(net), before)


def test_temperature_matches_the_loss_by_hand_and_rises_use_it():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 8, (50,), generator=g)
    logits = torch.randn(50, 8, generator=g) + 6 * F.one_hot(y, 8)  # confident and right
    own = F.cross_entropy(logits, y).item()
    t = compute.temperature_for(logits, y, 3 * own)
    assert t > 1 and F.cross_entropy(logits.double() / t, y).item() == pytest.approx(3 * own, rel=1e-8)
    assert compute.temperature_for(logits, y, own / 2) == 1.0  # already less confident than asked: untouched
    assert math.isnan(compute.temperature_for(logits, y, math.log(8) + 0.1))  # no T reaches guessing's loss


def test_temperature_control_equalizes_the_losses_at_w0():
    a, b = _loaded("resnet20", seed=0), _loaded("plain20", seed=3)
    df, record = L.compute_landscape([a, b], points=compute.radius_points([0.1]), n=16, seeds=[0],
                                     controls=["none", "temperature"])
    at0 = df[(df.alpha == 0)].pivot_table(index="model", columns="control", values="loss")
    assert at0["temperature"].nunique() == 1 or np.allclose(at0["temperature"], at0["temperature"].max(), rtol=1e-6)
    assert at0["temperature"].max() == pytest.approx(at0["none"].max(), rel=1e-6)  # matched to the larger loss
    assert record["temperature"]["temperature"][at0["none"].idxmax()] == 1.0


# ----------------------------------------------------------------------------- readings and verdicts


def _synthetic(fns: dict, grid: int = 9, seeds=(0,), controls=("none",), span: float = 1.0) -> pd.DataFrame:
    axis = directions.grid_axis(grid, span)
    rows = [(m, s, a, b, c, f(a, b, s, c), 1.0 - min(f(a, b, s, c), 0.9))
            for m, f in fns.items() for s in seeds for c in controls for a in axis for b in axis]
    return pd.DataFrame(rows, columns=L.COLUMNS)


def test_surface_hessian_and_nonconvexity_on_known_surfaces():
    h = 0.25
    a, b = np.meshgrid(directions.grid_axis(9, 1.0), directions.grid_axis(9, 1.0), indexing="ij")
    lmin, lmax = readings.surface_hessian((a + b) ** 2, h)  # convex, eigenvalues 0 and 4 (the cross term matters)
    np.testing.assert_allclose(lmin, 0, atol=1e-9)
    np.testing.assert_allclose(lmax, 4)
    lmin, lmax = readings.surface_hessian(a * b, h)  # a saddle: -1 and 1
    np.testing.assert_allclose(lmin, -1)
    np.testing.assert_allclose(lmax, 1)
    assert not readings.nonconvex(*readings.surface_hessian(a**2 + 3 * b**2, h)).any()
    assert readings.nonconvex(*readings.surface_hessian(a * b, h)).all()


def test_minima_count_only_below_chance_and_dips_on_a_plateau_are_reported_apart():
    bowl = lambda a, b, s, c: 0.01 + a**2 + b**2  # noqa: E731

    def dented(a, b, s, c):  # a small basin (max |a|, |b| <= 0.25), a plateau above chance around it
        dents = {(-0.25, 0.25): 0.005, (0.75, -0.75): 2.5}  # one minimum inside the basin, one dip on the plateau
        return dents.get((round(a, 2), round(b, 2)), 0.01 + a**2 + b**2 if max(abs(a), abs(b)) <= 0.25 else 3.0)

    s = readings.surface_readings(_synthetic({"resnet20": bowl, "plain20": dented})).set_index("model")
    assert s.loc["resnet20", "minima_below_chance"] == 0 and s.loc["resnet20", "dips_above_chance"] == 0
    assert s.loc["plain20", "minima_below_chance"] == 1 and s.loc["plain20", "dips_above_chance"] == 1
    text = L.describe_landscape(_synthetic({"resnet20": bowl, "plain20": dented}))
    assert "1 local minima below chance and 1 dips above it (on the plateau: not competing minima)" in text


def test_convexity_is_read_inside_the_basin_only():
    """A convex basin (loss below ln 8 for |a| < 0.45) inside a chaotic plateau (|a| >= 0.75, above chance)."""
    def surface(a, b, s, c):
        return 0.01 + 10 * a**2 + b**2 + (3 + np.sin(20 * b + s) if abs(a) >= 0.74 else 0.0)

    r = readings.surface_readings(_synthetic({"resnet20": surface}, grid=17)).iloc[0]
    assert r.basin_points > 20 and r.nonconvex_basin == 0 and r.nonconvex_all > 0.1


def test_a_grid_and_a_sharpness_study_read_together_as_each_alone():
    """The shipped reading combines the 2-D grid (seed 0) with the radius study (seeds 0-5): the shared points are
    kept once, the radius points between grid points leave no hole in the surface, and every seed's rise is read
    along its first direction, so seed 0 counts as much as any other."""
    bowl = lambda a, b, s, c: 0.01 + (1 + s) * a**2 + 3 * b**2  # noqa: E731
    grid = _synthetic({"resnet20": bowl}, grid=11)
    line = pd.DataFrame([("resnet20", s, a, b, "none", bowl(a, b, s, 0), 1.0 - min(bowl(a, b, s, 0), 0.9))
                         for s in range(6) for a, b in compute.radius_points(compute.RADII)], columns=L.COLUMNS)
    both = L.combine([grid, line])
    assert len(both) == len(grid) + len(line) - 3  # seed 0's center and +-0.2 lie on the grid: kept once
    pd.testing.assert_frame_equal(readings.rises(both), readings.rises(line))
    pd.testing.assert_frame_equal(readings.surface_readings(both), readings.surface_readings(grid))
    assert readings.rises(line).query("radius == 0.5").rise.tolist() == pytest.approx(
        [(1 + s) * 0.25 for s in range(6)])


def test_a_grid_of_three_or_an_even_grid_is_refused_with_the_reason(capsys):
    for grid in (3, 4):
        with pytest.raises(ValueError, match="at least 5 points"):
            directions.check_grid(grid)
        assert main(["landscape", "--models", "resnet20", "--grid", str(grid), "--quiet"]) == 2
        assert "rise is read at half the span" in capsys.readouterr().err


def _pair(res_fn, plain_fn, seeds=range(6), controls=("none",), grid=9) -> pd.DataFrame:
    return _synthetic({"resnet20": res_fn, "plain20": plain_fn}, grid=grid, seeds=seeds, controls=controls)


def test_verdict_follows_the_numbers_and_their_spread():
    wobble = lambda s: 0.02 * ((s % 3) - 1)  # noqa: E731
    steep = lambda a, b, s, c: 0.01 + 4 * (a**2 + b**2) * (1 + wobble(s))  # noqa: E731
    flat = lambda a, b, s, c: 0.01 + (a**2 + b**2) * (1 + wobble(s))  # noqa: E731
    text = L.describe_landscape(_pair(steep, flat))
    assert "**resnet20 is the sharper**" in text and ": no consistent difference (rise" not in text
    text = L.describe_landscape(_pair(flat, steep))  # the numbers swap: so does the verdict
    assert "**plain20 is the sharper**" in text
    noisy = lambda a, b, s, c: 0.01 + (a**2 + b**2) * (1 + (3 if s % 2 else -0.9))  # noqa: E731
    text = L.describe_landscape(_pair(noisy, flat))  # as often sharper as flatter: no verdict
    assert ": no consistent difference (rise" in text and "is the sharper" not in text
    one = L.describe_landscape(_pair(steep, flat, seeds=[0]))
    assert "one direction seed: no spread, so no verdict" in one


def test_a_reading_that_a_control_removes_does_not_survive():
    def res(a, b, s, c):  # sharper without controls, but not once BN is re-estimated
        k = 4.0 if c in ("none", "temperature") else 1.0
        return 0.01 + k * (a**2 + b**2) * (1 + 0.01 * s)
    plain = lambda a, b, s, c: 0.01 + (a**2 + b**2) * (1 + 0.01 * ((s * 7) % 5))  # noqa: E731
    text = L.describe_landscape(_pair(res, plain, controls=L.CONTROLS))
    assert "does **not survive** the controls" in text and "bn (no consistent difference" in text
    robust = lambda a, b, s, c: 0.01 + 4 * (a**2 + b**2) * (1 + 0.01 * s)  # noqa: E731
    text = L.describe_landscape(_pair(robust, plain, controls=L.CONTROLS))
    assert "under every control (temperature, bn, bn+temperature)" in text


def test_text_flags_a_net_that_never_trained():
    line = _synthetic({"plain56": lambda a, b, s, c: 2.08, "resnet56": lambda a, b, s, c: 0.01 + a**2}, grid=5)
    text = L.describe_landscape(line)
    assert "plain56: loss 2.08" in text and "not at a trained minimum" in text and "not compared" in text


# ----------------------------------------------------------------------------- CLI, torchrun, shipped results


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("twins")
    out = []
    for arch, seed in (("plain20", 1), ("resnet20", 0)):
        w = _loaded(arch, seed)
        out.append(save_checkpoint(w.model, folder / f"shapes_{arch}", w.meta))
    return out


def test_cli_writes_csv_json_plots_and_prints_the_text(checkpoints, tmp_path, capsys):
    models = ",".join(map(str, checkpoints))
    rc = main(["landscape", "--models", models, "--grid", "5", "--dims", "2", "--n", "8", "--seeds", "2",
               "--device", "cpu", "--out", str(tmp_path), "--stem", "ls", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    df = L.read_csv(str(tmp_path / "ls.csv"))
    assert list(df.columns) == L.COLUMNS and len(df) == 2 * 2 * 25
    assert L.describe_landscape(df) in out
    assert all((tmp_path / f).stat().st_size > 0 for f in ("ls_1d.png", "ls_2d.png", "ls_sharpness.png", "ls.json"))
    assert main(["landscape", "--from-csv", str(tmp_path / "ls.csv"), "--out", str(tmp_path / "again"),
                 "--stem", "ls"]) == 0  # re-read: the same reading, no computation
    assert L.describe_landscape(df) in capsys.readouterr().out
    first, again = (json.loads((tmp_path / d / "ls.json").read_text()) for d in (".", "again"))
    run = again["runs"][0]  # the re-reading says how its numbers were made: the source run's record
    assert run["command"] == first["command"] and run["seconds"] == first["seconds"] and run["seeds"] == [0, 1]
    assert "reading" not in run and "summary" not in run


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "argument --n/--images: must be an integer >= 1 (got 0)"),
    (["--span", "nan"], "argument --span: must be a finite number > 0 (got nan)"),
    (["--controls", "none,bogus"], "argument --controls: unknown controls bogus"),
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
    common = ["landscape", "--models", ",".join(map(str, checkpoints)), "--radii", "0.1,0.5", "--seeds", "2",
              "--controls", "none,temperature,bn", "--bn-images", "8", "--images", "6", "--device", "cpu",
              "--quiet", "--stem", "ls"]  # --images: torchrun's parser takes --n for one of its own options
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
    both, _ = L.compute_landscape([plain, res20], grid=5, dims=2, n=6, seeds=[2])
    alone = pd.concat([L.compute_landscape([w], grid=5, dims=2, n=6, seeds=[2])[0] for w in (plain, res20)],
                      ignore_index=True)
    pd.testing.assert_frame_equal(both, alone)  # so per-net runs (in parallel) may be concatenated


def test_quick_settings_fit_their_budget_and_shrink_for_deeper_nets():
    q20 = L.quick_settings(["resnet20", "plain20"], seconds=5)
    q56 = L.quick_settings(["resnet56", "plain56"], seconds=5)
    assert q56["n"] * q56["grid"] <= q20["n"] * q20["grid"]
    assert q20["seconds"] <= 5 or (q20["n"] == 64 and q20["grid"] == 7)
    one = L.estimate_cost(["resnet56"], 11, 100).seconds
    assert one > 2.5 * L.estimate_cost(["resnet20"], 11, 100).seconds


def test_memory_estimate_bounds_a_measured_peak():
    """Peak resident memory of a run (fresh subprocess, after a warm-up) against the cost model's bytes: measured
    84-204 MiB over 24 runs, two at a time (glibc's heap keeps a varying number of freed activation-sized blocks;
    the live tensors peak at ~87 MiB), against 252 MiB estimated for two 20-layer nets on 512 images; leaving out
    the activations would give an estimate of ~41 MiB."""
    from benchmarks.bench_memory import CASES, measure

    added, estimate = measure("landscape"), CASES["landscape"][2]()
    assert 0.25 < added / estimate <= 1.0, (added, estimate)


@pytest.mark.numerics
def test_the_shipped_grid_is_what_the_shipped_command_computes():
    """A few points of every shipped net, recomputed: losses within 1e-4 relative (float32 forward passes summed in
    another order on another CPU; the CSV keeps 7 digits), accuracies the same count of the 256 images but for those
    near a tie at that point (`near_ties`), which another CPU may call either way."""
    ship = L.read_csv(str(L.SHIPPED_CSV))
    n = 256
    for model in ("resnet20", "plain56"):
        w = load_models([model])[0]
        pts = [(0.0, 0.0), (0.3, -0.2)]
        again, _ = L.compute_landscape([w], points=pts, n=n, seeds=[0])
        net, data = copy.deepcopy(w.model).eval(), held_out_set(w, n, split="test")
        with directions.moving(net, directions.random_direction(net, 0, 0),
                               directions.random_direction(net, 0, 1)) as mover:
            for a, b in pts:
                want = ship[(ship.model == model) & (ship.seed == 0) & np.isclose(ship.alpha, a)
                            & np.isclose(ship.beta, b)]
                got = again[np.isclose(again.alpha, a) & np.isclose(again.beta, b)]
                assert got.loss.iloc[0] == pytest.approx(want.loss.iloc[0], rel=1e-4)
                mover.move(a, b)
                ties = near_ties(net, chunks(data.x, data.y, 256))
                assert abs(round(got.accuracy.iloc[0] * n) - round(want.accuracy.iloc[0] * n)) <= ties, (model, a, b)
