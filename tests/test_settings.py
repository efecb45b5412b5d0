"""Each setting declared once (`resnet_lab.settings`): a training option added in one place reaches `--help`, the
run JSON and the resume check; the augmentation, nested in the config, stays flat on the command line and in the
records, and the records written before it was nested still load."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from resnet_lab import settings
from resnet_lab.cli.args import Parser, add_options, int_in
from resnet_lab.cli.train import add_arguments
from resnet_lab.settings import option
from resnet_lab.training import resume
from resnet_lab.training.augment import Augment
from resnet_lab.training.config import DEFAULTS, FREEZE_PARTS, TrainConfig
from resnet_lab.training.train import train

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WithWarmup(TrainConfig):
    """A training run with one option more, declared here and nowhere else."""

    warmup: int = option(0, "linear warm-up steps (an option this test adds)", type=int_in(0, 1000))


def test_an_option_declared_in_one_place_is_in_the_help_the_run_json_and_the_resume_check(tmp_path, one_thread):
    parser = Parser(prog="train")
    add_options(parser, WithWarmup)
    assert "--warmup WARMUP linear warm-up steps (an option this test adds)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):  # its accepted range is checked while parsing, as every option's
        parser.parse_args(["--warmup", "-1"])
    out = tmp_path / "m"
    args = parser.parse_args(["--warmup", "3", "--n-train", "64", "--n-val", "32", "--n-test", "32", "--batch-size",
                              "32", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(out)])
    config = WithWarmup.from_options(vars(args))
    assert config.warmup == 3 and "--warmup 3" in config.cli()

    r = train(config)
    assert json.loads(r.path.with_suffix(".json").read_text())["config"]["warmup"] == 3  # the run JSON
    assert "warmup" in settings.must_match(WithWarmup)  # the resume check: a state must match it
    state = resume.latest(out)
    assert state is not None
    resume.read(state, config)  # the same settings
    other = WithWarmup.from_options(config.options(), warmup=4)
    with pytest.raises(resume.ResumeError, match=r"--warmup 3 \(now 4\)"):
        resume.read(state, other)
    assert resume.settings_key(other) != resume.settings_key(config)
    # the option at its default leaves the key of the same run without it alone (states written before it was added)
    assert resume.settings_key(WithWarmup()) == resume.settings_key(TrainConfig())


def test_the_augmentation_is_nested_in_the_config_and_flat_on_the_command_line_and_in_the_records():
    parser = Parser(prog="train")
    add_arguments(parser)
    args = parser.parse_args(["--mixup", "0.2", "--scale", "0.5", "1", "--data", "folder:x", "--freeze", "layer4",
                              "--pretrained", "x.safetensors", "--arch", "resnet18"])
    config = TrainConfig.from_options(vars(args))
    assert config.augment == Augment(mixup=0.2, scale=(0.5, 1.0)) and config.options()["scale"] == (0.5, 1.0)
    assert list(config.options()) == list(DEFAULTS) and "augment" not in config.options()
    assert TrainConfig.from_options(config.options()) == config
    again = TrainConfig.from_options(vars(parser.parse_args(shlex.split(config.cli())[4:])))  # the command repeats it
    assert again == config
    assert FREEZE_PARTS == ("nothing", "stem", "layer1", "layer2", "layer3", "layer4")
    with pytest.raises(TypeError, match="no option 'mixpu'"):  # a misspelt option is refused, as a keyword is
        TrainConfig.from_options(mixpu=0.2)
    with pytest.raises(ValueError, match="augmentation out of range: --hflip 2"):
        TrainConfig.from_options(hflip=2.0)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in [*ROOT.glob("assets/*.json"),
                                                                        *ROOT.glob("assets/twins/*.json")]
                                        if "config" in json.loads(p.read_text())), ids=str)
def test_the_shipped_run_records_flat_config_still_loads(path):
    """The shipped checkpoints' JSON keep the flat `config` of their day (some without the options added since):
    it loads, gives back what it holds, and a resume compares it with no difference."""
    old = json.loads((ROOT / path).read_text())["config"]
    config = TrainConfig.from_options(old)
    assert {k: config.options()[k] for k in old} == {k: tuple(v) if isinstance(v, list) else v for k, v in old.items()}
    assert resume.differences(old, config) == [] and resume.settings_key(old) == resume.settings_key(config)
