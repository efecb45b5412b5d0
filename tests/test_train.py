"""Training: a short run learns, is repeatable, and round-trips through the checkpoint; the shipped model is good."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import near_ties
from torch import nn

from resnet_lab.__main__ import main
from resnet_lab.data.shapes import CLASSES, MEAN, STD, ShapesDataset, normalize
from resnet_lab.models.weights import load_checkpoint
from resnet_lab.runtime.scoring import chunks, score
from resnet_lab.training.train import TrainConfig, initial_model, train

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "shapes_resnet20.safetensors"
TINY = dict(n_train=384, n_val=128, n_test=128, batch_size=32, lr=0.05, seed=3, quiet=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def accuracy(model: nn.Module, ds: ShapesDataset, batch_size: int = 256) -> float:
    """Top-1 on a Shapes set through the one evaluation loop, the images normalized as training normalizes them."""
    return score(model, chunks(ds.normalized(), ds.labels, batch_size)).accuracy


def train_cli(out: Path, *args: str) -> Path:
    """`python -m resnet_lab train ARGS --quiet --out OUT`, which must succeed; the checkpoint it wrote."""
    assert main(["train", *args, "--quiet", "--out", str(out)]) == 0
    return out.with_suffix(".safetensors")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    return train_cli(tmp_path_factory.mktemp("train") / "tiny", "--epochs", "3", "--n-train", "384", "--n-val",
                     "128", "--n-test", "128", "--batch-size", "32", "--lr", "0.05", "--seed", "3")


def test_short_run_lowers_the_loss_and_records_everything(cli_run):
    meta = json.loads(cli_run.with_suffix(".json").read_text())
    losses = [h["train_loss"] for h in meta["history"]]
    assert meta["epochs_run"] == len(losses) == 3
    assert losses[-1] < losses[0] - 0.05
    assert meta["arch"] == "resnet20" and meta["classes"] == list(CLASSES) and meta["num_classes"] == 8
    assert meta["mean"] == list(MEAN) and meta["std"] == list(STD) and meta["input_size"] == [3, 32, 32]
    assert meta["data"]["train_seed"] != meta["data"]["val_seed"] != meta["data"]["test_seed"]
    assert 0 <= meta["test_acc"] <= 1 and meta["train_time_s"] > 0 and meta["torch_version"] == torch.__version__
    assert meta["command_full"].startswith("python -m resnet_lab train --arch resnet20")


def test_checkpoint_loads_back_with_identical_outputs(cli_run):
    loaded = load_checkpoint(cli_run)
    assert loaded.pretrained_cfg["mean"] == MEAN and loaded.pretrained_cfg["input_size"] == (3, 32, 32)
    config = TrainConfig.from_options(json.loads(cli_run.with_suffix(".json").read_text())["config"])
    again = train(config)  # same config: the same weights, bit for bit
    x = normalize(ShapesDataset(16, seed=50)[0][0][None].repeat(2, 1, 1, 1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), again.model.eval()(x))
    assert again.test_acc == pytest.approx(loaded.meta["test_acc"])


def test_every_kind_of_arch_trains(tmp_path):
    for arch, size in (("plain20", None), ("resnet18", 64)):
        r = train(TrainConfig(arch=arch, size=size, epochs=1, n_train=64, n_val=32, n_test=32, batch_size=32,
                              quiet=True, out=str(tmp_path / arch)))
        assert len(r.history) == 1 and r.path.is_file()
        assert load_checkpoint(r.path).pretrained_cfg["input_size"] == (3, size or 32, size or 32)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    """The returned (and saved) weights are the best epoch's, not the last one's: checked against the weights the
    run's own training states recorded for both."""
    from resnet_lab.training import resume

    seen = []
    out = tmp_path / "m"
    r = train(TrainConfig(**{**TINY, "epochs": 6, "patience": 2, "lr": 0.5, "out": str(out), "keep": 10}),
              progress=lambda f, d: seen.append(f))
    vals = [h["val_acc"] for h in r.history]
    assert r.best_acc == max(vals) and seen == sorted(seen) and 0 < seen[-1] <= 1
    last = torch.load(resume.latest(out), weights_only=True)
    best_epoch = r.meta["best_epoch"]
    assert best_epoch < len(vals)  # this run's best is not its last epoch (else the test could not tell them apart)
    best = torch.load(resume.states(out)[best_epoch - 1], weights_only=True)["model"]
    kept = r.model.state_dict()
    assert all(torch.equal(kept[k], best[k]) for k in kept)
    assert not all(torch.equal(kept[k], last["model"][k]) for k in kept)


class _Always(nn.Module):
    """Predicts one class whatever the input."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), len(CLASSES)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_accuracy_is_the_fraction_right():
    ds = ShapesDataset(80, seed=4)
    assert accuracy(_Always(2), ds, batch_size=32) == pytest.approx(1 / len(CLASSES))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        TrainConfig(arch="resnet21")
    with pytest.raises(ValueError, match="collides"):
        TrainConfig(seed=998, test_seed=999)


def test_initial_weights_ignore_other_threads_use_of_the_global_rng():
    """The old `fork_rng(); manual_seed(seed); build()` could be split by another thread reseeding in between."""
    from test_gradflow import hammered_global_rng

    configs = [TrainConfig(seed=s, quiet=True) for s in range(30)]
    quiet = [initial_model(c).state_dict() for c in configs]
    with hammered_global_rng() as hammered:
        again = [initial_model(c).state_dict() for c in configs]
    assert hammered[0] > 100
    for a, b in zip(quiet, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(quiet[0]["conv1.weight"], quiet[1]["conv1.weight"])


def test_shipped_init_is_what_manual_seed_and_build_gave():
    """The shipped checkpoint's command (seed 0) must still start from the weights it started from."""
    import resnet_lab

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        old = resnet_lab.build("resnet20", num_classes=len(CLASSES))
    new = initial_model(TrainConfig(seed=0)).state_dict()
    assert all(torch.equal(v, new[k]) for k, v in old.state_dict().items())


@pytest.mark.numerics
def test_shipped_json_scores_are_what_the_weights_score():
    """The JSON's test accuracy, re-measured from the shipped weights on the test set it names (not just re-read),
    in images: the same count but for images near a tie, which another CPU may call either way (none here)."""
    loaded = load_checkpoint(SHIPPED)
    data = loaded.meta["data"]
    test_set = ShapesDataset(data["n_test"], data["test_seed"], loaded.meta["input_size"][-1], data["clutter"])
    n = data["n_test"]
    ties = near_ties(loaded.model, chunks(test_set.normalized(), test_set.labels, 256))
    assert abs(round(accuracy(loaded.model, test_set) * n) - round(loaded.meta["test_acc"] * n)) <= ties


def test_shipped_model_is_accurate_on_unseen_data():
    assert SHIPPED.stat().st_size < 5e6
    loaded = load_checkpoint(SHIPPED)
    seeds = loaded.meta["data"]
    held_out = 4242
    assert held_out not in (seeds["train_seed"], seeds["val_seed"], seeds["test_seed"])
    assert loaded.meta["test_acc"] >= 0.97
    assert accuracy(loaded.model, ShapesDataset(400, seed=held_out)) >= 0.97


# ----------------------------------------------------------------------------- CIFAR, folders, optimizers, precision


def write_quadrant_cifar10(root: Path, per_batch: int = 100) -> None:
    """CIFAR-10 files in the official pickle layout whose class (0-3) is which of four 8-row bands is bright:
    learnable in a few epochs and kept by the augmentation (a left-right flip would merge left/right quadrants)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        labels = rng.integers(0, 4, per_batch)
        images = rng.integers(0, 60, (per_batch, 3, 32, 32), dtype=np.uint8)
        for j, c in enumerate(labels):
            images[j, :, c * 8:c * 8 + 8] += 180
        batch = {b"data": images.reshape(per_batch, -1), b"labels": labels.tolist(), b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{k}".encode() for k in range(10)], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_quadrant_cifar10(root)
    return train_cli(root / "ckpt" / "c10", "--data", "cifar10", "--no-checksum", "--data-dir", str(root),
                     "--epochs", "5", "--batch-size", "32", "--lr", "0.05", "--seed", "1")


def test_cifar_run_learns_records_its_data_and_loads_back(cifar_run):
    from resnet_lab.models.resnet import CIFAR_MEAN, CIFAR_STD

    meta = json.loads(cifar_run.with_suffix(".json").read_text())
    losses = [h["train_loss"] for h in meta["history"]]
    assert losses[-1] < losses[0] - 0.1 and meta["test_acc"] > 0.6  # 4 classes used: chance is 0.25
    assert meta["classes"] == [f"c{k}" for k in range(10)] and meta["num_classes"] == 10
    counts = meta["data"]["counts"]
    for c in counts["train"]:  # 10% of each class of the 500, stratified
        assert counts["val"][c] == round(0.1 * (counts["train"][c] + counts["val"][c]))
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 500
    assert sum(counts["test"].values()) == 100 and meta["data"]["skipped"] == [] and not meta["test_acc_is_val"]
    assert meta["mean"] == pytest.approx(CIFAR_MEAN) and meta["std"] == pytest.approx(CIFAR_STD)
    assert meta["precision"] == "fp32" and "--data cifar10" in meta["command_full"]
    loaded = load_checkpoint(cifar_run)
    assert loaded.pretrained_cfg["mean"] == pytest.approx(CIFAR_MEAN) and loaded.meta["classes"][3] == "c3"
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32)
    assert loaded.model.fc.out_features == 10


@pytest.mark.filterwarnings("ignore:skipped")
@pytest.mark.parametrize("workers", [0, 2])
def test_folder_trains_an_epoch_and_lists_the_skipped_file(tmp_path, workers):
    from test_datasets import write_folder

    bad = write_folder(tmp_path / "imgs", {"horizontal": 12, "vertical": 12})
    r = train(TrainConfig(data=f"folder:{tmp_path / 'imgs'}", epochs=1, batch_size=8, lr=0.05, workers=workers,
                          quiet=True, out=str(tmp_path / "f"), folder_cache="off"))
    meta = json.loads(r.path.with_suffix(".json").read_text())
    assert {Path(s["path"]) for s in meta["data"]["skipped"]} == set(bad)
    assert meta["classes"] == ["horizontal", "vertical"] and meta["test_acc_is_val"] and r.test_acc == r.best_acc
    assert sum(meta["data"]["counts"]["train"].values()) + sum(meta["data"]["counts"]["val"].values()) == 24
    assert meta["data"]["test_split"].startswith("none") and load_checkpoint(r.path).meta["num_classes"] == 2


def test_a_folder_with_test_reports_the_test_accuracy(tmp_path):
    from test_datasets import write_folder

    for split in ("train", "val", "test"):
        write_folder(tmp_path / split, {"h": 6, "v": 6}, bad=False)
    r = train(TrainConfig(data=f"folder:{tmp_path}", epochs=1, batch_size=4, workers=0, quiet=True))
    assert not r.meta["test_acc_is_val"] and sum(r.meta["data"]["counts"]["test"].values()) == 12
    assert r.meta["data"]["layout"] == "train/val"


def test_adam_is_adam_with_no_default_decay():
    from resnet_lab.training.train import make_optimizer

    config = TrainConfig(opt="adam", lr=1e-3)
    opt = make_optimizer(initial_model(config), config)
    assert type(opt) is torch.optim.Adam and config.weight_decay == 0.0
    assert "--opt adam" in config.cli()


def test_precision_choices_and_fp16_on_cpu_refused(capsys):
    from resnet_lab.training.precision_probe import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    assert main(["train", "--precision", "fp16", "--device", "cpu", "--quiet"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_bad_data_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--no-checksum", "--quiet"]) == 2
    assert "cifar10 not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="folder:PATH"):
        TrainConfig(data="imagenet")
    with pytest.raises(ValueError, match="CIFAR images are 32 px"):
        TrainConfig(data="cifar10", size=64)
    assert TrainConfig(arch="resnet18", data="cifar100").image_size == 32  # not the ImageNet nets' 64


def test_fine_tuning_the_shipped_net_on_a_folder_keeps_the_frozen_part_and_records_it(tmp_path, capsys):
    from safetensors.torch import load_file
    from test_datasets import write_folder

    for split in ("train", "val"):
        write_folder(tmp_path / split, {"h": 6, "v": 6}, bad=False)
    r = train(TrainConfig(arch="resnet20", data=f"folder:{tmp_path}", pretrained=str(SHIPPED), freeze="layer1",
                          epochs=1, batch_size=4, lr=0.05, workers=0, quiet=True, out=str(tmp_path / "ft")))
    src, ft = load_file(SHIPPED), load_file(r.path)
    assert all(torch.equal(ft[k], src[k]) for k in src if k.split(".")[0] in ("conv1", "bn1", "layer1"))
    assert not torch.equal(ft["layer3.0.conv1.weight"], src["layer3.0.conv1.weight"])
    assert r.meta["pretrained"]["head"] == "new" and r.meta["pretrained"]["freeze"] == "layer1"
    assert r.meta["pretrained"]["backbone_lr_scale"] == 0.1 and "--pretrained" in r.meta["command_full"]
    shipped = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert r.meta["mean"] == shipped["mean"] and r.meta["input_size"] == [3, 32, 32] and r.meta["classes"] == ["h", "v"]
    assert main(["train", "--freeze", "layer1", "--quiet"]) == 2
    assert main(["train", "--arch", "resnet32", "--pretrained", str(SHIPPED), "--data", f"folder:{tmp_path}",
                 "--quiet"]) == 2
    assert "holds a resnet20, not a resnet32; pass --arch resnet20" in capsys.readouterr().err


def test_a_compile_that_fails_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    """`--compile` where the compiler breaks (no toolchain, an unsupported op): compiling errors surface at the first
    call, and the run goes on eagerly with one log line, to the very weights an eager run gives."""
    calls = []

    def broken_compile(model, *a, **kw):
        def first_call(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("no C compiler")
        return first_call

    monkeypatch.setattr(torch, "compile", broken_compile)
    config = {**TINY, "epochs": 1, "quiet": False}
    compiled = train(TrainConfig(**config, compile=True))
    log = capsys.readouterr()
    assert calls and (log.out + log.err).count("torch.compile failed") == 1
    eager = train(TrainConfig(**config))
    assert compiled.history[0]["train_loss"] == eager.history[0]["train_loss"]
    for a, b in zip(compiled.model.state_dict().values(), eager.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:skipped")
def test_a_file_whose_body_is_corrupt_is_skipped_in_the_worker_and_listed_once(tmp_path):
    """The scan reads headers only; a JPEG cut off in its pixel data passes it, fails in a DataLoader worker, gives
    way to the next good sample (the epochs go on) and reaches the run's JSON once, however many epochs met it."""
    import io

    import numpy as np
    from PIL import Image
    from test_datasets import write_folder

    from resnet_lab.data.images import check_header

    write_folder(tmp_path / "imgs", {"horizontal": 12, "vertical": 12}, bad=False)
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    cut = tmp_path / "imgs" / "vertical" / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    assert check_header(cut) == (96, 96)  # the header is whole
    r = train(TrainConfig(data=f"folder:{tmp_path / 'imgs'}", epochs=2, batch_size=8, lr=0.05, workers=2,
                          quiet=True, out=str(tmp_path / "f"), folder_cache="off"))
    skipped = json.loads(r.path.with_suffix(".json").read_text())["data"]["skipped"]
    assert [s["path"] for s in skipped] == [str(cut)] and "truncated or corrupt" in skipped[0]["reason"]
    assert len(r.history) == 2
