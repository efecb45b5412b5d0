"""Resume: a run stopped after an epoch, or by a signal within one, and resumed ends bit-identical to a run that was
never stopped (on the CPU, one thread: the same arithmetic in the same order), for Shapes, CIFAR-format files and
an image folder read by DataLoader workers; states are written atomically, pruned, and refused with a reason."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from test_train import TINY, write_quadrant_cifar10

from resnet_lab.__main__ import main
from resnet_lab.training import resume
from resnet_lab.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _identical(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _stop_at(step: int):
    """A progress callback that sends this process SIGTERM after `step` steps of the run."""
    calls = []

    def progress(_fraction: float, _desc: str) -> None:
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return progress


def _data(kind: str, tmp_path: Path) -> dict:
    if kind == "shapes":
        return dict(TINY, n_train=128, epochs=3)
    if kind == "shapes+mixing":  # the batch-mixing generator is saved and restored too
        return dict(TINY, n_train=128, epochs=3, mixup=0.2, cutmix=1.0, smoothing=0.1)
    if kind == "cifar":
        write_quadrant_cifar10(tmp_path / "c", per_batch=40)
        return dict(data="cifar10", checksum=False, data_dir=str(tmp_path / "c"), epochs=3, batch_size=32,
                    lr=0.05, seed=1, quiet=True)
    from test_datasets import write_folder

    write_folder(tmp_path / "imgs", {"horizontal": 20, "vertical": 20})
    return dict(data=f"folder:{tmp_path / 'imgs'}", epochs=3, batch_size=8, lr=0.05, workers=2, quiet=True,
                folder_cache="on" if kind == "folder in memory" else "off")


@pytest.mark.filterwarnings("ignore:skipped")
@pytest.mark.parametrize("kind", ["shapes", "shapes+mixing", "cifar", "folder", "folder in memory"])
def test_a_run_stopped_after_an_epoch_or_by_a_signal_resumes_bit_identical(kind, tmp_path):
    base = _data(kind, tmp_path)
    calls = []
    whole = train(TrainConfig(**base, out=str(tmp_path / "whole" / "m"), keep=5),
                  progress=lambda f, d: calls.append(f))
    per_epoch = len(calls) // 3
    states = resume.states(tmp_path / "whole" / "m")
    assert len(states) == 3  # one per epoch, kept (keep=5)
    # resumed from the state after epoch 1: the remaining two epochs give the same weights, bit for bit
    after_one = train(TrainConfig(**base, resume=str(states[0])))
    assert _identical(after_one.model, whole.model) and after_one.history == whole.history[:1] + after_one.history[1:]
    assert [h["train_loss"] for h in after_one.history] == [h["train_loss"] for h in whole.history]
    # stopped by SIGTERM in the middle of epoch 2, then resumed with --resume auto
    out = str(tmp_path / "stopped" / "m")
    with pytest.raises(resume.Stopped) as stopped:
        train(TrainConfig(**base, out=out), progress=_stop_at(per_epoch + 2))
    assert stopped.value.epoch == 2 and stopped.value.step == 2 and stopped.value.path == resume.latest(out)
    assert not Path(out).with_suffix(".safetensors").exists()  # a stopped run writes its state, not a checkpoint
    again = train(TrainConfig(**base, out=out, resume="auto"))
    assert _identical(again.model, whole.model)
    assert [h["train_loss"] for h in again.history] == pytest.approx([h["train_loss"] for h in whole.history],
                                                                     rel=1e-12)
    assert again.best_acc == whole.best_acc and again.test_acc == whole.test_acc
    assert len(resume.states(out)) == 2  # the default keep: the newest two


def test_states_are_atomic_pruned_and_read_without_unpickling_code(tmp_path):
    out, run = tmp_path / "m", "0123abcd-456789"
    for step in (3, 10, 7):
        resume.write(resume.state_path(out, run, step), {"x": torch.tensor([step])})
    assert [p.name for p in resume.states(out)] == [f"m.{run}.step00000000{i}.state.pt" for i in (3, 7)] + [
        f"m.{run}.step000000010.state.pt"]
    assert resume.latest(out).name.endswith("000000010.state.pt") and not list(tmp_path.glob("*.tmp"))
    resume.prune(out, run, 2)
    assert len(resume.states(out)) == 2

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.state.pt"
    torch.save({"format": resume.FORMAT, "x": Evil()}, bad)
    with pytest.raises(resume.ResumeError, match="not a readable training state"):
        resume.read(bad, {})
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(resume.ResumeError, match="not a readable training state"):
        resume.read(bad, {})


def test_resume_refuses_another_runs_state_and_missing_states_with_a_message(tmp_path, capsys):
    out = tmp_path / "m"
    train(TrainConfig(**dict(TINY, n_train=64, epochs=1), out=str(out)))
    state = resume.latest(out)
    with pytest.raises(resume.ResumeError, match=r"--lr 0.05 \(now 0.1\)"):
        train(TrainConfig(**dict(TINY, n_train=64, epochs=1, lr=0.1), resume=str(state)))
    assert main(["train", "--resume", "auto", "--out", str(tmp_path / "none" / "m"), "--quiet", "--device",
                 "cpu"]) == 2
    assert "no state of a run with these settings (m." in capsys.readouterr().err
    assert main(["train", "--resume", "auto", "--quiet"]) == 2
    assert "give --out too" in capsys.readouterr().err


def _train_layout(root: Path, train: dict[str, int], val: dict[str, int]) -> None:
    """PATH/train/<class>/ and PATH/val/<class>/ with these many images each (a val class may be empty)."""
    from test_datasets import _image, write_folder

    write_folder(root / "train", train, bad=False)
    for c, (name, n) in enumerate(val.items()):
        (root / "val" / name).mkdir(parents=True)
        for i in range(n):
            _image(c, i).save(root / "val" / name / f"{i:03d}.png")


@pytest.mark.parametrize("case, message", [
    ("empty val", "the validation set is empty"),
    ("small train", "fewer than one batch of 16: lower --batch-size to 8 or less"),
    ("cifar small", "fewer than one batch of 64"),
])
def test_data_that_cannot_train_is_refused_before_any_epoch(case, message, tmp_path, capsys):
    """One clear sentence naming the folder and the fix, exit code 2, no epoch run (no state written)."""
    if case == "cifar small":
        write_quadrant_cifar10(tmp_path / "c", per_batch=10)
        args = ["--data", "cifar10", "--no-checksum", "--data-dir", str(tmp_path / "c"), "--batch-size", "64"]
    else:
        train_n, val_n = ({"a": 6, "b": 6}, {"a": 0, "b": 0}) if case == "empty val" else ({"a": 4, "b": 4},
                                                                                          {"a": 2, "b": 2})
        _train_layout(tmp_path / "f", train_n, val_n)
        args = ["--data", f"folder:{tmp_path / 'f'}", "--batch-size", "4" if case == "empty val" else "16",
                "--workers", "0"]
    out = tmp_path / "run" / "m"
    assert main(["train", *args, "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not resume.states(out) and not out.with_suffix(".safetensors").exists()


def test_only_rank_0_tells_of_skipped_files(tmp_path):
    """Every rank scans the folder; only rank 0 warns (the run's JSON lists the skipped files either way)."""
    import warnings

    from test_datasets import write_folder

    from resnet_lab.training.distributed import Dist
    from resnet_lab.training.run_data import make_data

    bad = write_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    config = TrainConfig(data=f"folder:{tmp_path / 'imgs'}", batch_size=4, workers=0)
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0,
           "interpolation": "bilinear"}
    told = {}
    for rank in (0, 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = make_data(config, cfg, torch.device("cpu"), torch.Generator().manual_seed(0), lambda s: None,
                             Dist(rank=rank, world_size=2))
        told[rank] = [str(w.message) for w in caught if "skipped" in str(w.message)]
        assert len(data.record["skipped"]) == len(bad)
    assert len(told[0]) >= 1 and told[1] == []
