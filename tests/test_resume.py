"""Resume: a run stopped after an epoch, or by a signal within one, and resumed ends bit-identical to a run that was
never stopped (on the CPU, one thread: the same arithmetic in the same order), for Shapes, CIFAR-format files and
an image folder read by DataLoader workers; states are written atomically, pruned, and refused with a reason."""

from __future__ import annotations

import os
import re
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
    whole = train(TrainConfig.from_options(**base, out=str(tmp_path / "whole" / "m"), keep=5),
                  progress=lambda f, d: calls.append(f))
    per_epoch = len(calls) // 3
    states = resume.states(tmp_path / "whole" / "m")
    assert len(states) == 3  # one per epoch, kept (keep=5)
    # resumed from the state after epoch 1: the remaining two epochs give the same weights, bit for bit
    after_one = train(TrainConfig.from_options(**base, resume=str(states[0])))
    assert _identical(after_one.model, whole.model) and after_one.history == whole.history[:1] + after_one.history[1:]
    assert [h["train_loss"] for h in after_one.history] == [h["train_loss"] for h in whole.history]
    # stopped by SIGTERM in the middle of epoch 2, then resumed with --resume auto
    out = str(tmp_path / "stopped" / "m")
    with pytest.raises(resume.Stopped) as stopped:
        train(TrainConfig.from_options(**base, out=out), progress=_stop_at(per_epoch + 2))
    assert stopped.value.epoch == 2 and stopped.value.step == 2 and stopped.value.path == resume.latest(out)
    assert not Path(out).with_suffix(".safetensors").exists()  # a stopped run writes its state, not a checkpoint
    again = train(TrainConfig.from_options(**base, out=out, resume="auto"))
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
    train(TrainConfig.from_options(**dict(TINY, n_train=64, epochs=1), out=str(out)))
    state = resume.latest(out)
    with pytest.raises(resume.ResumeError, match=r"--lr 0.05 \(now 0.1\)"):
        train(TrainConfig.from_options(**dict(TINY, n_train=64, epochs=1, lr=0.1), resume=str(state)))
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

    from resnet_lab.runtime.distributed import Dist
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


# ----------------------------------------------------------------------------- whose states (issue 24)


def test_a_second_run_into_the_same_out_neither_prunes_nor_picks_the_first_runs_states(tmp_path, capsys):
    """The user's case: a longer run (--seed 1) left states in --out; a second run (--seed 2) into the same --out
    keeps its own (the first's higher step numbers used to prune them away as they were written), says in one line
    what it found, is stopped by SIGTERM, and `--resume auto` continues it, not the other run."""
    out = str(tmp_path / "m")
    base = dict(TINY, n_train=128)  # 4 steps an epoch
    train(TrainConfig.from_options(**{**base, "seed": 1}, epochs=3, out=out))
    first = resume.states(out)
    assert len(first) == 2
    capsys.readouterr()
    with pytest.raises(resume.Stopped) as stopped:
        train(TrainConfig.from_options(**{**base, "quiet": False, "seed": 2}, epochs=2, out=out), progress=_stop_at(6))
    printed = capsys.readouterr().out.splitlines()
    said = [line for line in printed if "left as they are" in line]
    assert len(said) == 1 and "2 training states of 1 other run" in said[0], said
    assert "--epochs 3 (now 2)" in said[0] and "--seed 1 (now 2)" in said[0]
    # the first run's checkpoint is replaced when this one ends: said at the start, while it can still be moved
    told = [line for line in printed if "holds another run's checkpoint" in line]
    assert len(told) == 1 and told[0].startswith(f"{out}.safetensors") and "--seed 1 (now 2)" in told[0], printed
    assert stopped.value.path.is_file() and all(p.is_file() for p in first)
    again = train(TrainConfig.from_options(**{**base, "seed": 2}, epochs=2, out=out, resume="auto"))
    assert len(again.history) == 2 and again.meta["config"]["seed"] == 2
    assert all(p.is_file() for p in first)  # still the first run's, untouched
    assert len(resume.states(out)) == 4  # two of each run (--keep 2)
    # the checkpoint is now this run's own: resumed again, nothing to say about it
    assert resume.replaced(out, again.meta["run"], again.meta["config"]) is None
    assert resume.replaced(out, "0123abcd-456789", again.meta["config"]).endswith("give another --out to keep both")


def _fake_state(out: Path, run: str, step: int, config: dict, written: int) -> Path:
    """A state file of run `run` with `config`, its time of writing set to `written` (seconds)."""
    path = resume.write(resume.state_path(out, run, step), {"config": config})
    os.utime(path, (written, written))
    return path


def test_auto_picks_the_newest_run_of_this_commands_settings_and_prune_keeps_to_its_own_run(tmp_path):
    out = tmp_path / "exp"
    one, two = TrainConfig(seed=1, epochs=6).options(), TrainConfig(seed=2, epochs=3).options()
    a, b, c = (f"{resume.settings_key(cfg)}-{tail}" for cfg, tail in ((one, "aaaaaa"), (two, "bbbbbb"),
                                                                        (two, "cccccc")))
    assert a[:8] != b[:8] == c[:8]  # the key names the settings
    foreign = [_fake_state(out, a, s, one, 1_000 + s) for s in (80, 120)]
    _fake_state(out, b, 40, two, 2_000)  # an earlier run of the same settings, written last...
    mine = _fake_state(out, c, 20, two, 1_500)  # ...so auto continues it, not this one
    assert resume.resolve("auto", {**two, "out": str(out)}).name == f"exp.{b}.step000000040.state.pt"
    os.utime(mine, (3_000, 3_000))
    assert resume.resolve("auto", {**two, "out": str(out)}) == mine
    _fake_state(out, c, 30, two, 3_100)
    resume.prune(out, c, 1)
    assert resume.states(out, c) == [resume.state_path(out, c, 30)] and all(p.is_file() for p in foreign)
    assert len(resume.states(out)) == 4
    line = resume.others(out, c, two)
    assert line.startswith(f"{tmp_path}/ holds 3 training states of 2 other runs") and "the same settings" in line
    with pytest.raises(resume.ResumeError, match=r"no state of a run with these settings .*--seed 2 \(now 3\)"):
        resume.resolve("auto", {**TrainConfig(seed=3, epochs=6).options(), "out": str(out)})


def test_a_run_resumed_from_an_earlier_state_of_its_run_branches_off_under_a_new_id(tmp_path):
    """Its states would otherwise overwrite the later ones of the run it left, or be pruned by them."""

    config = {**TrainConfig().options(), "out": str(tmp_path / "m")}
    run = f"{resume.settings_key(config)}-abcdef"
    _fake_state(tmp_path / "m", run, 8, config, 1_000)
    assert resume.run_id(config, {"run": run, "scheduler": {"last_epoch": 8}}) == run  # the newest: goes on
    branch = resume.run_id(config, {"run": run, "scheduler": {"last_epoch": 4}})
    assert branch != run and branch.startswith(run[:8] + "-")
    assert resume.run_id(config) != resume.run_id(config)  # a new run: a new id


def test_every_option_must_match_on_resume_unless_the_config_declares_it_may_differ(tmp_path):
    """MUST_MATCH is derived from TrainConfig's declaration: a field is either declared `may_differ` with a reason
    or must match, so an option added later cannot be forgotten; a state from other settings is refused."""

    from resnet_lab.training.config import DEFAULTS, RESUME_MAY_DIFFER

    names = list(DEFAULTS)
    assert sorted(resume.MUST_MATCH + tuple(RESUME_MAY_DIFFER)) == sorted(names)
    assert not set(resume.MUST_MATCH) & set(RESUME_MAY_DIFFER) and all(RESUME_MAY_DIFFER.values())
    assert {"hflip", "mixup", "cutmix", "smoothing", "aa", "reprob", "scale", "ratio", "precision", "sync_bn",
            "n_test", "folder_cache", "epochs", "seed", "lr"} <= set(resume.MUST_MATCH)
    mixing = TrainConfig.from_options(mixup=0.2, smoothing=0.1)
    path = resume.write(tmp_path / "s.state.pt", {"config": mixing.options()})
    with pytest.raises(resume.ResumeError, match=r"--mixup 0.2 \(now 0.0\), --smoothing 0.1 \(now None\)"):
        resume.read(path, TrainConfig().options())
    default = TrainConfig().options()
    for name in names:  # each field changed alone: refused iff it must match, and the key follows it
        resume.write(path, {"config": {**default, name: "changed"}})
        if name in resume.MUST_MATCH:
            with pytest.raises(resume.ResumeError, match=f"--{name.replace('_', '-')} changed"):
                resume.read(path, default)
            assert resume.settings_key({**default, name: "changed"}) != resume.settings_key(default), name
        else:
            resume.read(path, default)
            assert resume.settings_key({**default, name: "changed"}) == resume.settings_key(default), name
    # a CLI list and a tuple, an int and a float, are the same setting; an option a state predates is its default
    assert resume.settings_key({**default, "scale": [0.5, 1]}) == resume.settings_key({**default, "scale": (0.5, 1.0)})
    assert resume.settings_key({k: v for k, v in default.items() if k != "mixup"}) == resume.settings_key(default)


def test_an_out_with_glob_characters_finds_its_states(tmp_path):
    out = tmp_path / "exp[1]" / "m[0]*"
    run = "0123abcd-456789"
    for step in (4, 8, 12):
        resume.write(resume.state_path(out, run, step), {"config": {}})
    assert [p.name[-22:] for p in resume.states(out)] == [f"step0000000{s:02d}.state.pt" for s in (4, 8, 12)]
    resume.prune(out, run, 2)
    assert len(resume.states(out, run)) == 2 and resume.latest(out, run) == resume.state_path(out, run, 12)


def test_the_final_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    """A save that fails midway (a full disk, a kill) leaves the previous checkpoint whole, and no temporary file."""
    import safetensors.torch

    from resnet_lab.models.resnet import build
    from resnet_lab.models.weights import load_checkpoint, save_checkpoint

    first = build("resnet20", num_classes=8, seed=1)
    path = save_checkpoint(first, tmp_path / "m", {"arch": "resnet20", "num_classes": 8})

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(build("resnet20", num_classes=8, seed=2), tmp_path / "m", {"arch": "resnet20"})
    assert _identical(load_checkpoint(path).model, first) and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.json", "m.safetensors"]


@pytest.mark.parametrize("when", ["an epoch's last step", "one step per epoch", "validation"])
def test_a_signal_in_an_epochs_last_step_or_during_validation_stops_the_run(when, tmp_path, monkeypatch):
    """Acted on at once (the run used to go on: the last step was never checked, so a run of one step per epoch
    never stopped), with a state that resumes to the uninterrupted run's result."""
    from resnet_lab.training import train as train_module

    base = dict(TINY, n_train=32 if when == "one step per epoch" else 128, epochs=3 if when == "one step per epoch"
                else 2)
    whole = train(TrainConfig.from_options(**base))
    out = str(tmp_path / "m")
    progress = None
    if when == "validation":
        accuracy = train_module.accuracy

        def signalled(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return accuracy(*args, **kwargs)

        monkeypatch.setattr(train_module, "accuracy", signalled)
    else:
        progress = _stop_at(2 if when == "one step per epoch" else 4)
    with pytest.raises(resume.Stopped) as stopped:
        train(TrainConfig.from_options(**base, out=out), progress=progress)
    monkeypatch.undo()
    expected = (2, 1) if when == "one step per epoch" else (1, 4)
    assert (stopped.value.epoch, stopped.value.step) == expected and stopped.value.path == resume.latest(out)
    again = train(TrainConfig.from_options(**base, out=out, resume="auto"))
    assert len(again.history) == len(whole.history)
    # the same trajectory (a wrong replay of the data draws differs by orders of magnitude more than this)
    sa, sb = again.model.state_dict(), whole.model.state_dict()
    assert all(torch.allclose(sa[k].double(), sb[k].double(), rtol=1e-4, atol=1e-6) for k in sa)


def test_an_out_with_a_dot_gets_its_checkpoint_beside_its_states(tmp_path):
    """`--out runs/x.v2` writes runs/x.v2.safetensors and .json (the suffix was swapped: runs/x.safetensors, which
    another run's `--out runs/x.v1` overwrote); an out already ending in .safetensors is kept."""
    from resnet_lab.models.checkpoints import checkpoint_path
    from resnet_lab.models.weights import load_checkpoint

    out = tmp_path / "runs" / "x.v2"
    assert main(["train", "--n-train", "32", "--n-val", "32", "--n-test", "32", "--batch-size", "32", "--epochs",
                 "1", "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(resume.SUFFIX)) == [
        "x.v2.json", "x.v2.safetensors"]
    assert resume.latest(out).name.startswith("x.v2.")
    assert load_checkpoint(checkpoint_path(out)).meta["config"]["out"] == str(out)
    assert checkpoint_path(tmp_path / "y.safetensors") == tmp_path / "y.safetensors"


@pytest.mark.parametrize("case", ["a file where its folder should be", "an existing folder", "a trailing slash",
                                  "empty"])
def test_an_out_that_cannot_take_files_is_refused_before_any_epoch(case, tmp_path, capsys):
    """One sentence naming --out and exit code 2 before any data is made, not a traceback after the first epoch
    (or, empty, a run that saves nothing)."""
    taken = tmp_path / "taken"
    taken.write_text("") if case.startswith("a file") else taken.mkdir() if case == "an existing folder" else None
    out = {"a file where its folder should be": str(taken / "m"), "an existing folder": str(taken),
           "a trailing slash": f"{tmp_path / 'new'}/", "empty": ""}[case]
    before = sorted(tmp_path.rglob("*"))
    calls = []
    with pytest.raises(ValueError, match="^--out "):
        train(TrainConfig(**dict(TINY, n_train=32, epochs=1), out=out), progress=lambda f, d: calls.append(f))
    assert not calls
    assert main(["train", "--n-train", "32", "--batch-size", "32", "--epochs", "1", "--quiet", "--device", "cpu",
                 "--out", out]) == 2
    err = capsys.readouterr().err
    # refused while parsing (cli_args.writable: "...train: argument --out: ...") or by train's own check
    assert re.match(r"(error: |\S+ -m resnet_lab train: argument )--out", err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before
