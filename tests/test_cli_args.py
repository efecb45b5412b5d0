"""Every command checks every option while parsing: a bad value is one line naming the option, exit code 2, before
any work; a good one parses to its value. Property-based: arbitrary values through each command's real parser
(`__main__.parse`), against a plain statement of what each option accepts. Nothing here runs a command's work."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_lab.__main__ import main, parse
from resnet_lab.cli.args import SEED_MAX
from resnet_lab.models.resnet import REGISTRY

# --- what each option accepts, said plainly (the oracle the parser is held to) ---


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def ints(lo: int | None = None, hi: int | None = None):
    def accepts(text: str) -> bool:
        v = _int(text)
        return v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)

    return accepts, _int


def floats(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def accepts(text: str) -> bool:
        v = _float(text)
        return v is not None and (lo is None or (v > lo if lo_open else v >= lo)) and (
            hi is None or (v < hi if hi_open else v <= hi))

    return accepts, float


def one_of(*allowed: str, convert=str):
    return (lambda text: text in allowed), convert


def _items(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def listed(*allowed: str, convert=str):
    def accepts(text: str) -> bool:
        return bool(_items(text)) and all(s in allowed for s in _items(text))

    return accepts, convert


def odd_grid(zero: bool = False):
    def accepts(text: str) -> bool:
        v = _int(text)
        return v is not None and ((zero and v == 0) or (5 <= v <= 501 and v % 2 == 1))

    return accepts, _int


def positive_list(text: str) -> bool:
    items = [s.strip() for s in text.split(",") if s.strip()]
    return bool(items) and all((v := _float(s)) is not None and v > 0 for s in items)


SEED = ints(0, SEED_MAX)
COUNT = ints(1)
TOL = floats(0, 1, lo_open=True, hi_open=True)
RESNETS = [a for a in REGISTRY if REGISTRY[a].residual]  # the gradient study measures each with its plain twin

# command -> (arguments every parse gets, {option: (accepts, convert, extra arguments for this option)})
OPTIONS = {
    "curvature": (["--models", "resnet20"], {
        "--sizes": ((lambda t: bool(t.strip(", ")) and all((v := _int(x.strip())) is not None and v >= 2
                                                            for x in t.split(",") if x.strip())),
                    lambda t: tuple(sorted({int(x) for x in t.split(",") if x.strip()}))),
        "--sets": (*ints(0), ["--map-grid", "5"]), "--top-k": COUNT, "--density-n": ints(0),
        "--density-steps": ((lambda t: _int(t) is not None and (_int(t) == 0 or _int(t) >= 2)), _int),
        "--tol": TOL, "--min-tol": TOL,
        "--trace-matvecs": ints(6), "--density-runs": COUNT, "--seed": SEED, "--map-tol": TOL,
        "--direction-seed": SEED, "--chunk": COUNT, "--split": one_of("train", "test"),
        "--map-grid": odd_grid(zero=True),
        "--map-span": (*floats(0, lo_open=True), ["--map-grid", "5"]),
        "--map-n": (*ints(2), ["--map-grid", "5"]),
    }),
    "landscape": (["--models", "resnet20"], {
        "--grid": odd_grid(), "--span": floats(0, lo_open=True), "--n": COUNT, "--seed": SEED,
        "--seeds": ints(1, 1000), "--bn-images": COUNT, "--dims": one_of("1", "2", convert=int),
        "--split": one_of("test", "train"), "--radii": (positive_list, str),
        # the uncontrolled reading is always among them: a list without "none" is refused after parsing
        "--controls": ((lambda t: listed("none", "temperature", "bn", "bn+temperature")[0](t) and "none" in _items(t)),
                       str, None),
    }),
    "lesion": (["--model", "resnet20"], {
        "--n": COUNT, "--draws": ints(1, 1000), "--k-points": ints(2), "--seed": SEED, "--data-seed": SEED,
        "--batch-size": COUNT, "--workers": ints(1, 64),
    }),
    "degradation": ([], {
        "--steps": COUNT, "--batch-size": ints(2), "--seed": SEED, "--lr": floats(0, lo_open=True),
        "--train-size": COUNT, "--val-size": COUNT, "--evals": COUNT, "--archs": listed(*REGISTRY),
    }),
    "gradnorms": ([], {
        "--batch-size": (*COUNT, ["--bn", "eval"]), "--input-size": ints(8, 1024), "--seeds": ints(1, 1000),
        "--num-classes": ints(2, 100_000), "--bn": one_of("train", "eval", "none"),
        "--data": one_of("noise", "shapes"), "--archs": listed(*RESNETS, convert=_items),
    }),
    "evaluate": ([], {
        "--n": COUNT, "--seed": SEED, "--batch-size": COUNT, "--workers": ints(0, 64),
        "--data": ((lambda t: t in ("shapes", "cifar10", "cifar100") or (t.startswith("folder:") and t != "folder:")),
                   str),
    }),
    "faithfulness": ([], {
        "--n": COUNT, "--n-random": COUNT, "--steps": COUNT, "--data-seed": SEED, "--batch-size": COUNT,
        "--seed": SEED, "--methods": listed("gradcam", "guided_gradcam", "integrated_gradients", "occlusion"),
    }),
    "verify": ([], {"--image-size": ints(32, 512), "--batch": ints(2, 64), "--seed": SEED}),
    "train": ([], {
        "--epochs": COUNT, "--steps": COUNT, "--ema-decay": floats(0, 1, hi_open=True), "--n-train": COUNT,
        "--n-val": COUNT, "--n-test": COUNT, "--batch-size": COUNT,
        "--lr": floats(0, lo_open=True), "--wd": floats(0), "--patience": COUNT, "--seed": SEED,
        "--test-seed": SEED, "--size": ints(8, 1024), "--val-fraction": floats(0, 1, True, True),
        "--workers": ints(0, 64), "--backbone-lr-scale": floats(0), "--hflip": floats(0, 1),
        "--reprob": floats(0, 1), "--mixup": floats(0), "--cutmix": floats(0), "--smoothing": floats(0, 1),
        "--keep": ints(1, 1000), "--opt": one_of("sgd", "adamw", "adam"), "--sched": one_of("cosine", "onecycle"),
        "--precision": one_of("auto", "fp32", "bf16", "fp16"), "--folder-cache": one_of("auto", "on", "off"),
    }),
}
CASES = [(cmd, opt) for cmd, (_, opts) in OPTIONS.items() for opt in opts]

# values near every bound, numbers of every shape, and text that is no number at all
VALUES = st.one_of(
    st.integers(-10, 1100).map(str), st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.floats(-2, 2).map(str),
    st.sampled_from(["0", "1", "2", "3", "4", "5", "7", "501", "503", "2147483647", "2147483648", "-0", "0.0", "1.0",
                     "1e-3", "nan", "inf", "-inf", "NaN", " 5", "5 ", "+3", "1_000", "0x10", "", " ", "1,2", "0.5,1",
                     "none", "none,bn", "bn", "train", "test", "eval", "noise", "shapes", "cifar10", "folder:",
                     "folder:/d", "resnet20", "plain20,resnet20", "resnet20,plain56", "gradcam,occlusion",
                     "gradcam,nope", "sgd", "cosine", "fp16", "auto", "on", "a\nb", "é", "∞"]),
    st.text(max_size=6),
)


def _parse(argv: list[str]) -> tuple[object, str]:
    """(namespace, or the exit code of a refusal; what went to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse(argv), err.getvalue()
        except SystemExit as e:
            return e.code, err.getvalue()


@pytest.mark.parametrize("command, option", CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES)
def test_every_option_parses_what_it_accepts_and_refuses_the_rest_in_one_line(command, option, value):
    base, options = OPTIONS[command]
    accepts, convert, *extra = options[option]
    got, err = _parse([command, *base, *((extra[0] or []) if extra else []), f"{option}={value}"])
    if accepts(value):
        assert not isinstance(got, int), err
        dest = option.lstrip("-").replace("-", "_")
        assert getattr(got, dest) == convert(value)
    else:
        assert got == 2, f"{option}={value!r} was accepted"
        assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no usage block, no traceback
        assert f"argument {option}" in err or f": {option} " in err, err  # a value's check, or a joint one's


def test_each_reported_case_is_refused_while_parsing(monkeypatch, capsys):
    """The issue's cases: each used to start the work (37 s of spectrum, then a traceback, for --density-runs 0);
    now main returns 2 with one line before anything is loaded."""
    from resnet_lab.cli import curvature
    from resnet_lab.cli import lesion as cli_lesion

    def started(*_a, **_k):
        raise AssertionError("the work started")

    monkeypatch.setattr(curvature, "load_models", started)
    monkeypatch.setattr(cli_lesion, "study_all", started)
    for args, option in ((["--density-runs", "0"], "--density-runs"), (["--tol", "-1"], "--tol"),
                         (["--map-grid", "5", "--map-span", "0"], "--map-span"),
                         (["--map-grid", "5", "--map-span", "nan"], "--map-span"),
                         (["--map-grid", "5", "--map-n=-1"], "--map-n"), (["--min-tol", "0"], "--min-tol"),
                         (["--chunk", "0"], "--chunk"), (["--sizes=--"], "--sizes"), (["--tol="], "--tol")):
        assert main(["curvature", "--models", "resnet20", "--quiet", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"argument {option}" in err and "Traceback" not in err, err
    assert main(["lesion", "--model", "resnet20", "--k-points", "1"]) == 2
    assert "argument --k-points: must be an integer >= 2 (got 1)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["curvature"], "give --models (or --from-csv)"),
    (["curvature", "--models", "resnet20", "--sets", "0"], "nothing to compute"),
    (["curvature", "--models", "resnet20", "--map-n", "8"], "--map-n sets the images of the map: add --map-grid"),
    (["curvature", "--models", "resnet20", "--density-steps", "1"], "--density-steps 1 gives no density"),
    (["landscape"], "give --models (or --from-csv)"),
    (["landscape", "--models", "resnet20", "--controls", "bn"], "--controls takes none (always)"),
    (["landscape", "--models", "resnet20", "--seed", str(SEED_MAX), "--seeds", "2"], "goes past the largest seed"),
    (["lesion"], "give --model"),
    (["gradnorms", "--batch-size", "1"], "--batch-size must be at least 2 with --bn train"),
])
def test_options_that_join_are_checked_right_after_parsing(argv, said):
    got, err = _parse(argv)
    assert got == 2 and said in err and err.count("\n") == 1, err


@pytest.mark.parametrize("repo, ok", [("someone/model-1", True), ("a/b.c", True), ("x_y/z", True), ("a/b/c", False),
                                      ("bad--name", False), ("", False), ("x/", False), ("a b/c", False),
                                      ("someone/model.git", False)])
def test_push_takes_a_hub_repo_id(repo, ok):
    got, err = _parse(["export", "--model", "m.safetensors", "--out", "x", f"--push={repo}"])
    if ok:
        assert got.push == repo
    else:
        assert got == 2 and err.count("\n") == 1 and "argument --push: not a Hub repo id" in err, err


def test_defaults_and_a_from_csv_rereading_parse():
    for command, (base, _) in [*OPTIONS.items(), ("export", (["--model", "m", "--out", "x"], {}))]:
        got, err = _parse([command, *base])
        assert not isinstance(got, int), (command, err)
    for command in ("curvature", "landscape", "lesion"):
        got, err = _parse([command, "--from-csv", "saved"])
        assert not isinstance(got, int), (command, err)


@pytest.mark.parametrize("argv, work", [
    (["landscape", "--models", "resnet20", "--grid", "5", "--n", "64", "--quiet", "--device", "cpu"],
     "resnet_lab.cli.landscape.compute_landscape"),
    (["curvature", "--models", "resnet20", "--sizes", "64", "--quiet", "--device", "cpu"],
     "resnet_lab.cli.curvature.compute_curvature"),
    (["lesion", "--model", "resnet20", "--n", "64", "--device", "cpu"], "resnet_lab.cli.lesion.study_all"),
])
def test_landscape_curvature_and_lesion_refuse_what_does_not_fit_before_starting(argv, work, monkeypatch, capsys):
    """As the degradation run and the gradient study do: one sentence with the need and what is free, exit 2,
    and the work never started."""
    from resnet_lab.runtime import resources

    monkeypatch.setattr(work, lambda *a, **k: pytest.fail("the work started"))
    monkeypatch.setattr(resources, "memory_available", lambda: 2**20)  # 1 MiB free
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this run needs about" in err and "0.0 GiB free for it now" in err, err


@pytest.mark.parametrize("command, option, base", [
    ("train", "--out", []), ("evaluate", "--out", []), ("faithfulness", "--out", []),
    ("gradnorms", "--out", []), ("gradnorms", "--plot", []), ("degradation", "--out", []),
    ("degradation", "--plot", []), ("landscape", "--out", ["--models", "resnet20"]),
    ("curvature", "--out", ["--models", "resnet20"]), ("lesion", "--out", ["--model", "resnet20"]),
    ("export", "--out", ["--model", "m"]),
])
def test_a_place_nothing_can_be_written_is_refused_while_parsing(command, option, base, tmp_path):
    """`degradation --out /proc/x.csv` ran the whole study, then ended in a FileNotFoundError traceback (train,
    gradnorms --plot, faithfulness: the same after their work). Every output path is tried while parsing: empty,
    a file where a folder goes (or the reverse), or a folder that takes no new file is one line naming the option."""
    (tmp_path / "file").write_text("x")
    for bad in ("", "/proc/x/y", str(tmp_path / "file" / "under")):
        got, err = _parse([command, *base, f"{option}={bad}"])
        assert got == 2 and err.count("\n") == 1 and f"argument {option}" in err, (bad, err)
    makes_folders = option != "--plot" and command != "faithfulness"  # savefig and to_csv make none
    got, err = _parse([command, *base, f"{option}={tmp_path / 'new' / 'place'}"])
    assert not isinstance(got, int) if makes_folders else "does not exist; make it first" in err, err
    got, err = _parse([command, *base, f"{option}={tmp_path / 'place'}"])
    assert not isinstance(got, int), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the check leaves nothing behind


def test_train_refuses_shapes_that_do_not_fit_in_memory_before_rendering(monkeypatch, capsys):
    """`train --n-train 999999999999` (or `--size 1024`: 58.6 GiB) ended in numpy's ArrayMemoryError traceback."""
    from resnet_lab.runtime import resources
    from resnet_lab.training import run_data

    monkeypatch.setattr(run_data, "ShapesDataset", lambda *a, **k: pytest.fail("the work started"))
    monkeypatch.setattr(resources, "memory_available", lambda: 2**20)  # 1 MiB free
    assert main(["train", "--n-train", "1000", "--n-val", "100", "--n-test", "100", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this run needs about" in err and "--n-train" in err, err


def test_faithfulness_refuses_a_checkpoint_or_stage_it_cannot_use_before_the_work(monkeypatch, capsys, tmp_path):
    """`faithfulness --model /etc/passwd` ended in a WeightsUnavailable traceback; `--stages 9` rendered the images
    and scored the net before the stage was looked up."""
    from resnet_lab.cli import faithfulness

    monkeypatch.setattr(faithfulness, "measure_faithfulness", lambda *a, **k: pytest.fail("the work started"))
    (tmp_path / "junk").write_text("not weights")
    assert main(["faithfulness", "--model", str(tmp_path / "junk"), "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "junk" in err, err
    assert main(["faithfulness", "--stages", "layer1,9", "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--stages" in err and "'9'" in err, err


@pytest.mark.parametrize("argv", [["train", "--epoch", "3"],
                                  ["curvature", "--models", "resnet20", "--density-run", "0"],
                                  ["lesion", "--model", "resnet20", "--draw", "5"]])
def test_a_shortened_option_is_a_typo_not_a_prefix(argv):
    """argparse took any unique prefix (`--epoch 3` ran as `--epochs 3`): a typo must be refused like any other."""
    got, err = _parse(argv)
    assert got == 2 and "unrecognized arguments" in err and err.count("\n") == 1, err
