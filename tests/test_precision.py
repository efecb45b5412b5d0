"""precision.py: RESNET_LAB_PRECISION parsing, the CPU auto rule (native bf16 AND measured agreement), fp16 on a CPU,
and the measured training-precision choice (forced onto the CPU with a fake clock)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from resnet_lab.models.resnet import build
from resnet_lab.runtime import precision as P
from resnet_lab.training import precision_probe as probe

NATIVE = frozenset({"fpu", "avx512f", "avx512_bf16"})
AMX = frozenset({"fpu", "amx_bf16", "amx_tile"})
PLAIN = frozenset({"fpu", "avx2", "avx512f"})


def _agree(ok: bool):
    return lambda: (ok, "recorded" if ok else "below 99.5 %")


def choice(value: str | None, flags=NATIVE, ok: bool = True, device: str = "cpu"):
    env = {} if value is None else {P.ENV: value}
    return P.serving_choice(device, env, flags=lambda: flags, agreement=_agree(ok))


@pytest.mark.parametrize("value, dtype", [("fp32", None), ("bf16", torch.bfloat16), (" BF16 ", torch.bfloat16),
                                          ("FP32", None)])
def test_explicit_values_are_served_as_asked(value, dtype):
    assert choice(value, flags=PLAIN, ok=False)[0] == dtype


def test_unset_and_empty_mean_auto():
    assert P.parse_precision(None) == P.parse_precision("") == P.parse_precision("  ") == "auto"


@pytest.mark.parametrize("value", ["bfloat16", "half", "fp8", "32"])
def test_invalid_value_names_the_variable_and_the_allowed_ones(value):
    with pytest.raises(P.PrecisionError) as e:
        choice(value)
    msg = str(e.value)
    assert P.ENV in msg and repr(value) in msg
    assert all(p in msg for p in P.PRECISIONS)


def test_invalid_value_is_refused_on_cuda_too_before_touching_the_gpu():
    with pytest.raises(P.PrecisionError, match="one of auto, fp32, bf16, fp16"):
        P.serving_dtype("cuda", {P.ENV: "float16"})


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_auto_is_native_bf16_else_fp16(monkeypatch, native, expected):
    """A T4 reports bf16 "supported" through emulation; only native support may choose it."""
    asked = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert P.serving_dtype("cuda", {}) == expected and asked == [False]
    assert P.serving_dtype("cuda", {P.ENV: "fp32"}) is None
    assert P.serving_dtype("cuda", {P.ENV: "fp16"}) == torch.float16


def test_fp16_on_cpu_is_served_as_fp32_with_a_reason_and_a_warning():
    dtype, why = choice("fp16")
    assert dtype is None and "fp16" in why and "fp32" in why
    with pytest.warns(UserWarning, match="fp16 served as fp32"):
        assert P.serving_dtype("cpu", {P.ENV: "fp16"}, flags=lambda: NATIVE, agreement=_agree(True)) is None


@pytest.mark.parametrize("flags, ok, expected", [
    (NATIVE, True, torch.bfloat16),  # AVX512-BF16 and measured agreement
    (AMX, True, torch.bfloat16),  # AMX counts as native
    (PLAIN, True, None),  # agreement alone does not make emulated bf16 worth it
    (NATIVE, False, None),  # native, but the measurement does not show agreement
    (frozenset(), True, None),  # no /proc/cpuinfo: assume nothing
])
def test_cpu_auto_needs_native_bf16_and_agreement(flags, ok, expected):
    dtype, why = choice("auto", flags, ok)
    assert dtype == expected
    assert ("bf16" if expected else "fp32") in why


def test_cpu_auto_is_the_default():
    assert choice(None, NATIVE, True)[0] == torch.bfloat16
    assert choice(None, NATIVE, False)[0] is None


def test_cpu_flags_reader(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert P.cpu_native_bf16(P.cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not P.cpu_native_bf16(P.cpu_flags(info))
    assert P.cpu_flags(tmp_path / "absent") == frozenset()


def _record(tmp_path, **corpora):
    path = tmp_path / "agreement.json"
    path.write_text(json.dumps({"corpora": corpora, "command": "python benchmarks/bench_precision.py"}))
    return path


def _ok(n=2000, agreement=1.0):
    return {"measured": True, "n": n, "agreement": agreement}


def test_agreement_file_passes_only_when_every_required_corpus_agrees(tmp_path):
    assert P.cpu_bf16_agreement(_record(tmp_path, shapes=_ok(), photos=_ok(500, 0.996)))[0]
    ok, why = P.cpu_bf16_agreement(_record(tmp_path, shapes=_ok(), photos=_ok(500, 0.994)))
    assert not ok and "photos" in why and "99.40%" in why
    ok, why = P.cpu_bf16_agreement(_record(tmp_path, shapes=_ok(),
                                           photos={"measured": False, "why": "no ImageNet weights here"}))
    assert not ok and "no ImageNet weights here" in why
    ok, why = P.cpu_bf16_agreement(_record(tmp_path, shapes=_ok()))
    assert not ok and "photos" in why
    ok, why = P.cpu_bf16_agreement(_record(tmp_path, shapes=_ok(), photos=_ok(n=4)))
    assert not ok and "4 images" in why  # 4/4 agreeing shows nothing about 99.5 %


def test_agreement_file_missing_or_broken_is_a_no(tmp_path):
    ok, why = P.cpu_bf16_agreement(tmp_path / "nope.json")
    assert not ok and "missing" in why
    (tmp_path / "bad.json").write_text("{not json")
    ok, why = P.cpu_bf16_agreement(tmp_path / "bad.json")
    assert not ok and "unreadable" in why


def test_shipped_agreement_file_is_consistent_with_the_rule():
    """The recorded numbers and the verdict the library draws from them agree (whatever the verdict is)."""
    record = json.loads(P.AGREEMENT_FILE.read_text())
    c = record["corpora"]
    expect = all(c.get(k, {}).get("measured") and c[k]["n"] >= P.AGREEMENT_MIN_IMAGES
                 and c[k]["agreement"] >= P.AGREEMENT_MIN for k in P.REQUIRED_CORPORA)
    assert P.cpu_bf16_agreement()[0] == bool(expect)
    assert record["command"].startswith("python")


# ----------------------------------------------------------------------------- training precision


def fake_clock(fp32_s: float, half_s: float):
    """A timer for `time_train_steps`: rounds alternate fp32 then half, each read (start, end)."""
    deltas = itertools.cycle([0.0, fp32_s, 0.0, half_s])
    now = [0.0]

    def timer() -> float:
        now[0] += next(deltas)
        return now[0]

    return timer


@pytest.fixture(scope="module")
def tiny():
    return build("resnet20", num_classes=3, seed=0)


@pytest.mark.parametrize("fp32_s, half_s, expected", [(1.0, 0.5, torch.bfloat16), (0.5, 1.0, None),
                                                      (0.5, 0.5, None)])  # a tie goes to fp32
def test_measured_choice_picks_the_faster(tiny, fp32_s, half_s, expected):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    rng = torch.random.get_rng_state()
    dtype, record = probe.choose_train_precision(tiny, (3, 16, 16), 4, "cpu", steps=1, measure=True,
                                                 timer=fake_clock(fp32_s, half_s))
    assert dtype == expected
    assert record["measured"] and record["choice"] == P.dtype_name(expected)
    assert record["ms_per_step"] == {"fp32": fp32_s * 1e3, "bf16": half_s * 1e3}
    assert record["images_per_s"]["fp32"] == pytest.approx(4 / fp32_s, abs=0.1)
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert torch.equal(torch.random.get_rng_state(), rng)  # nothing drawn from the global RNG
    assert not torch.is_autocast_enabled("cpu")


def test_cpu_default_is_fp32_without_measuring(tiny):
    def timer() -> float:
        raise AssertionError("measured on the CPU")

    dtype, record = probe.choose_train_precision(tiny, (3, 16, 16), 4, "cpu", timer=timer)
    assert dtype is None and record == {**record, "measured": False, "choice": "fp32"}
    assert "--precision bf16" in record["reason"]


def test_time_train_steps_really_trains_a_copy(tiny):
    """The timed step is a real SGD step (forward, backward, update) on one copy shared by every dtype: the weights
    a forward sees change from step to step, one module object serves all dtypes (one copy at a time in memory),
    the caller's model is untouched, and the seconds are real."""
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    seen: list[tuple[int, torch.Tensor]] = []
    handle = tiny.fc.register_forward_hook(lambda m, i, o: seen.append((id(m), m.weight.detach().clone())))
    try:
        sec, steps = probe.time_train_steps(tiny, (3, 16, 16), 2, "cpu", [None, torch.bfloat16], steps=2,
                                            warmup=1, rounds=1, budget_s=1e9)
    finally:
        handle.remove()
    assert set(sec) == {"fp32", "bf16"} and all(v > 0 for v in sec.values()) and steps == 2
    assert len(seen) == 2 * (1 + 1 + 2)  # per dtype: warm-up, the sizing step, then one round of 2
    assert len({i for i, _ in seen}) == 1 and seen[0][0] != id(tiny.fc)  # one copy, never the caller's model
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(seen, seen[1:]))  # every step updated the weights
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_timed_steps_shrink_to_the_budget(tiny):
    counted = []

    def timer() -> float:
        counted.append(1)
        return float(len(counted))

    _, steps = probe.time_train_steps(tiny, (3, 16, 16), 2, "cpu", [None], steps=50, warmup=1, rounds=2, timer=timer,
                                      budget_s=1e-9)
    assert steps == 1 and len(counted) == 4  # 2 rounds x (start, end), one step each
    _, steps = probe.time_train_steps(tiny, (3, 16, 16), 2, "cpu", [None], steps=3, warmup=1, rounds=1, timer=timer,
                                      budget_s=1e9)
    assert steps == 3
    assert tiny.training  # the caller's mode is not changed either


# ----------------------------------------------------------------------------- bench_precision


def test_bench_photos_corpus_measures_with_local_imagenet_weights_and_records_broken_ones(tmp_path):
    """Where ImageNet-shaped weights exist (a file here), the photo corpus is measured through the app's Classifier;
    weights that cannot be loaded are recorded as not measured, with why."""
    from benchmarks import bench_precision as bench
    from resnet_lab.models.weights import save_checkpoint

    photos = sorted((bench.ROOT / "assets").glob("*.jpg"))
    path = save_checkpoint(build("resnet18", num_classes=1000, seed=0), tmp_path / "r18", {"arch": "resnet18"})
    c = bench.photos_corpus(photos, str(path))
    assert c["measured"] and c["n"] == len(photos) == 4 and 0 <= c["agreement"] <= 1
    assert "cannot show" in c["note"]  # 4 photos are too few to show 99.5 %
    (tmp_path / "broken.safetensors").write_bytes(b"nope")
    c = bench.photos_corpus(photos, str(tmp_path / "broken.safetensors"))
    assert not c["measured"] and "unavailable" in c["why"]
