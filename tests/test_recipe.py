"""The small-data recipe: weight decay off BatchNorm and biases, a step budget, label smoothing and the weights' EMA,
each as given or chosen by the data's size, and recorded in the run's JSON."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import nn

from resnet_lab.cli.train import add_arguments
from resnet_lab.models.resnet import build
from resnet_lab.training import recipe
from resnet_lab.training.config import TrainConfig
from resnet_lab.training.ema import WeightsEma
from resnet_lab.training.train import make_optimizer, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weight_decay_is_on_conv_and_linear_weights_only():
    model = build("resnet20", num_classes=10, seed=0)
    opt = make_optimizer(model, TrainConfig())
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    rest = {id(p) for p in model.parameters()} - weights  # BatchNorm weights and biases, the head's bias
    assert decayed == weights and free == rest and rest
    assert any(isinstance(m, nn.BatchNorm2d) and id(m.weight) in free for m in model.modules())


FOLDER = "folder:somewhere"


@pytest.mark.parametrize("n, batch", [(200, 32), (1_131, 64), (2_047, 64), (2_048, 128), (9_999, 128)])
def test_a_small_folder_halves_its_batch_until_an_epoch_has_enough_steps(n, batch):
    config = TrainConfig(data=FOLDER)
    assert recipe.batch_size(config, n) == batch  # the largest of 128, 64, 32 giving >= 16 steps an epoch
    assert n // batch >= recipe.SMALL_EPOCH_STEPS or batch == recipe.SMALL_BATCH_MIN
    r = recipe.resolve(config, n, max(1, n // batch))
    assert r.batch_size == batch and r.record()["batch_size"] == batch and "steps an epoch" in r.why["batch_size"]
    assert r.total_steps * batch >= recipe.SMALL_STEPS * recipe.BATCH  # the same images seen at any batch
    assert recipe.batch_size(TrainConfig(data=FOLDER, batch_size=100), n) == 100  # as given
    assert recipe.batch_size(TrainConfig(data=FOLDER), recipe.SMALL_SET) == recipe.BATCH
    assert recipe.batch_size(TrainConfig(data="cifar10"), n) == recipe.BATCH


def test_a_small_folder_trains_for_a_step_budget_and_explicit_epochs_win():
    r = recipe.resolve(TrainConfig(data=FOLDER, batch_size=128), n_train=1_000, steps_per_epoch=7)
    assert r.small and r.epochs == math.ceil(recipe.SMALL_STEPS / 7) and r.total_steps >= recipe.SMALL_STEPS
    assert r.patience is None and not r.stops_early(10**6)  # the schedule runs to its end
    assert r.augment.smoothing == recipe.SMALL_SMOOTHING and r.ema_decay == recipe.SMALL_EMA_DECAY and r.calibrate
    assert recipe.resolve(TrainConfig(data=FOLDER, steps=100), 1_000, 7).epochs == 15  # ceil(100 / 7)
    given = recipe.resolve(TrainConfig.from_options(data=FOLDER, epochs=3, steps=100, smoothing=0.0, ema_decay=0.0),
                           1_000, 7)
    assert (given.epochs, given.patience, given.augment.smoothing, given.ema_decay) == (3, 5, 0.0, 0.0)
    assert given.why["epochs"] == "--epochs" and given.stops_early(5)


@pytest.mark.parametrize("data, n", [(FOLDER, recipe.SMALL_SET), ("shapes", 1_000), ("cifar10", 45_000)])
def test_other_data_keep_the_epoch_recipe(data, n):
    r = recipe.resolve(TrainConfig(data=data), n_train=n, steps_per_epoch=100)
    assert not r.small and (r.epochs, r.patience, r.augment.smoothing, r.ema_decay) == (15, 5, 0.0, 0.0)
    assert r.batch_size == recipe.BATCH == 128
    assert not r.calibrate and recipe.resolve(TrainConfig(data=data, calibrate="on"), n, 100).calibrate


def test_bad_recipe_values_are_refused():
    for bad in (dict(steps=0), dict(epochs=0), dict(ema_decay=1.0), dict(ema_decay=-0.1), dict(patience=0),
                dict(calibrate="yes")):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_the_ema_is_the_running_average_of_the_weights_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    ema = WeightsEma(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(40):  # past the warm-up, where the cap 0.9 takes over
        loss = model(torch.randn(8, 3, dtype=torch.float64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.dtype.is_floating_point else v.clone()
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)
    assert int(ema.module[1].num_batches_tracked) == 40 and not any(p.requires_grad for p in ema.module.parameters())
    again = WeightsEma(model, 0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 40 and again.decay_now() == ema.decay_now()


def test_help_names_each_choice():
    p = argparse.ArgumentParser()
    add_arguments(p)
    text = p.format_help()
    for option in ("--steps", "--epochs", "--patience", "--smoothing", "--ema-decay", "--calibrate"):
        assert option in text
    assert f"{recipe.SMALL_STEPS}" in text and f"{recipe.SMALL_EMA_DECAY}" in text
    assert f"{recipe.SMALL_EPOCH_STEPS} steps" in text


def test_a_small_folder_run_records_its_recipe(tmp_path):
    from test_datasets import write_folder

    write_folder(tmp_path / "imgs", {"h": 12, "v": 12}, bad=False)
    r = train(
        TrainConfig(
            data=f"folder:{tmp_path / 'imgs'}",
            steps=7,
            batch_size=8,
            lr=0.05,
            workers=0,
            quiet=True,
            out=str(tmp_path / "run"),
        )
    )
    meta = json.loads(r.path.with_suffix(".json").read_text())
    rec = meta["recipe"]
    spe = rec["steps_per_epoch"]  # 22 training images at batch 8
    assert spe == 2 and rec["epochs"] == meta["epochs_run"] == math.ceil(7 / spe) and rec["total_steps"] == 8
    assert rec["batch_size"] == meta["global_batch"] == 8 and rec["why"]["batch_size"] == "--batch-size"
    assert rec["small_set"] and rec["patience"] is None and rec["why"]["epochs"].endswith("--steps")
    assert rec["smoothing"] == meta["augment"]["smoothing"] == recipe.SMALL_SMOOTHING
    assert rec["ema_decay"] == recipe.SMALL_EMA_DECAY and rec["kept"] in ("EMA", "raw weights")
    assert all("val_acc_ema" in h for h in meta["history"])
    best = meta["history"][meta["best_epoch"] - 1]
    assert meta["val_acc"] == pytest.approx(max(best["val_acc"], best["val_acc_ema"]))
    assert (rec["kept"] == "EMA") == (best["ema_kept"] == 1.0)
    assert meta["config"]["steps"] == 7 and meta["config"]["ema_decay"] is None  # as typed, beside the resolved
    t = rec["temperature"]  # fitted on the validation split and folded into the saved head
    assert rec["calibrate"] and 0.1 <= t["temperature"] <= 10 and t["val_nll_after"] <= t["val_nll_before"]
    assert t["val_images"] == 2 and rec["why"]["calibrate"].startswith("--calibrate auto: a folder of 22")


def test_temperature_scaling_fits_the_validation_nll_and_keeps_every_prediction():
    from resnet_lab.runtime.scoring import chunks
    from resnet_lab.training import calibration

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)  # the head `calibration.fold` divides, as in our ResNets

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Net()
    x = torch.randn(300, 6)
    with torch.no_grad():
        logits = model(x)
    t_true = 2.5  # labels drawn from softmax(logits / 2.5): the net is overconfident by exactly that temperature
    y = torch.multinomial(torch.softmax(logits / t_true, 1), 1, generator=torch.Generator().manual_seed(1))[:, 0]
    fit = calibration.calibrate(model, chunks(x, y, 64))
    assert abs(math.log(fit.temperature / t_true)) < 0.25 and fit.nll_after < fit.nll_before and fit.images == 300
    assert not fit.at_bound
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, logits / fit.temperature, rtol=1e-5, atol=1e-6)
    assert torch.equal(after.argmax(1), logits.argmax(1))
    # a split the net gets entirely right pulls T down to its bound, and the record says so
    right = calibration.fit_temperature(model, chunks(x, after.argmax(1), 64))
    assert right.temperature == pytest.approx(0.1) and right.record()["at_bound"]


def test_a_resumed_run_continues_the_weights_ema(tmp_path):
    """The EMA is part of a training state: a run resumed after its first epoch ends with the same average."""
    from test_datasets import write_folder

    from resnet_lab.training import resume

    write_folder(tmp_path / "imgs", {"h": 12, "v": 12}, bad=False)
    base = dict(
        data=f"folder:{tmp_path / 'imgs'}",
        epochs=3,
        batch_size=8,
        lr=0.05,
        workers=0,
        quiet=True,
        keep=5,
        ema_decay=0.9,
    )
    train(TrainConfig(**base, out=str(tmp_path / "whole" / "m")))
    first = resume.states(tmp_path / "whole" / "m")[0]
    train(TrainConfig(**base, out=str(tmp_path / "again" / "m"), resume=str(first)))

    def ema(out: str) -> dict:
        return torch.load(resume.latest(tmp_path / out / "m"), weights_only=True)["ema"]

    whole, again = ema("whole"), ema("again")
    assert whole["updates"] == again["updates"] == 3 * 2  # 22 training images at batch 8: 2 steps an epoch
    assert whole["state"].keys() == again["state"].keys()
    assert all(torch.equal(whole["state"][k], again["state"][k]) for k in whole["state"])
