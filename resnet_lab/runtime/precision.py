"""Which floating-point precision to serve in, chosen on evidence; and the names and dtypes both sides share.

Serving (`serving_dtype`): `RESNET_LAB_PRECISION=fp32|bf16|fp16|auto` (default auto). On CUDA, auto is bf16 where the
GPU has it natively (Ampere and later), else fp16 (a T4). On a CPU, auto is bf16 only where the CPU computes bf16
natively (AVX512-BF16 or AMX; emulated bf16 is slower than fp32) AND `assets/cpu_bf16_agreement.json`, written by
`benchmarks/bench_precision.py`, shows bf16's top-1 agreeing with fp32's on >= 99.5 % of every required corpus:
speed alone must not change what the app answers. fp16 on a CPU is served as fp32: CPU fp16 autocast has no fast
kernels on most x86 and no loss scaling to need; the reason is returned and warned, not silently dropped.

Training's choice (timed SGD steps on CUDA) is `training.precision_probe`: it builds on this module, never the
other way round, so serving code imports nothing of the trainer.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..paths import ASSETS

ENV = "RESNET_LAB_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AGREEMENT_FILE = ASSETS / "cpu_bf16_agreement.json"
AGREEMENT_MIN = 0.995
# One disagreement in fewer than 200 images is already more than 0.5 %: a smaller corpus cannot show 99.5 %.
AGREEMENT_MIN_IMAGES = 200
REQUIRED_CORPORA = ("shapes", "photos")  # issue 10: the Shapes test set and the photo corpus
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """A precision setting that cannot be used; the message names the allowed values."""


def dtype_name(dtype: torch.dtype | None) -> str:
    """"fp32" for None, else "bf16" / "fp16": how checkpoints and status lines spell a precision."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def parse_precision(value: str | None, source: str = ENV) -> str:
    """The precision named by `value` (case and spaces ignored; unset or empty: auto), or `PrecisionError`."""
    name = (value or "auto").strip().lower() or "auto"
    if name not in PRECISIONS:
        raise PrecisionError(f"{source}={value!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    return name


# ----------------------------------------------------------------------------- what the hardware does natively


def cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where there is no /proc/cpuinfo: we then assume nothing)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(rest.split())
    return frozenset()


def cpu_native_bf16(flags: Sequence[str] | frozenset[str]) -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower
    than fp32."""
    return any(f in flags for f in CPU_BF16_FLAGS)


def cuda_half_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where the GPU has it natively (Ampere and later), else fp16. `is_bf16_supported()` alone counts
    emulation: a T4 says True and then runs bf16 far slower than fp16."""
    device = torch.device(device)
    if device.index is not None:
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


# ----------------------------------------------------------------------------- the measured CPU bf16 agreement


def cpu_bf16_agreement(path: str | os.PathLike = AGREEMENT_FILE) -> tuple[bool, str]:
    """(True, why) when the recorded measurement shows bf16 agreeing with fp32 on >= `AGREEMENT_MIN` of the top-1
    answers of every corpus in `REQUIRED_CORPORA`, each of >= `AGREEMENT_MIN_IMAGES` images; else (False, why).
    A corpus that could not be measured counts as failing: no evidence is not agreement."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        corpora = record["corpora"]
    except FileNotFoundError:
        return False, f"no bf16 agreement measured ({path.name} missing; run python -m benchmarks.bench_precision)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"{path.name} unreadable ({type(e).__name__}: {e})"
    for name in REQUIRED_CORPORA:
        c = corpora.get(name) if isinstance(corpora, dict) else None
        if not isinstance(c, dict) or not c.get("measured"):
            why = c.get("why", "not measured") if isinstance(c, dict) else "not measured"
            return False, f"bf16 agreement on the {name} corpus not measured ({why})"
        agreement, n = float(c.get("agreement", 0.0)), int(c.get("n", 0))
        if n < AGREEMENT_MIN_IMAGES:
            return False, f"bf16 agreement on {name} measured on {n} images only (< {AGREEMENT_MIN_IMAGES})"
        if agreement < AGREEMENT_MIN:
            return False, f"bf16 top-1 agrees with fp32 on {agreement:.2%} of {name} (< {AGREEMENT_MIN:.1%})"
    return True, f"bf16 agrees with fp32 on >= {AGREEMENT_MIN:.1%} of {', '.join(REQUIRED_CORPORA)} ({path.name})"


# ----------------------------------------------------------------------------- serving


def serving_choice(
    device: str | torch.device,
    env: Mapping[str, str] = os.environ,
    *,
    flags: Callable[[], frozenset[str]] = cpu_flags,
    agreement: Callable[[], tuple[bool, str]] = cpu_bf16_agreement,
) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, the reason) for inference on `device` under `env[RESNET_LAB_PRECISION]`.

    `flags` and `agreement` are injectable so that tests can stand in for any CPU and any measurement.
    Raises `PrecisionError` for a value that is not a precision.
    """
    device = torch.device(device)
    asked = parse_precision(env.get(ENV))
    if device.type == "cuda":
        if asked == "auto":
            half = cuda_half_dtype(device)
            native = "native bf16" if half == torch.bfloat16 else "no native bf16"
            return half, f"auto on CUDA: {dtype_name(half)} ({native})"
        return DTYPES[asked], f"{ENV}={asked}"
    if device.type != "cpu":
        return None, f"{device.type}: fp32 (autocast is chosen for cuda and cpu only)"
    if asked == "fp16":
        return None, f"{ENV}=fp16 served as fp32 on the CPU: CPU fp16 autocast is slower than fp32 on most x86"
    if asked != "auto":
        native = cpu_native_bf16(flags())
        note = "" if asked == "fp32" or native else " (this CPU has no native bf16: emulated, expect it slower)"
        return DTYPES[asked], f"{ENV}={asked}{note}"
    if not cpu_native_bf16(flags()):
        return None, "auto on CPU: fp32 (no native bf16: neither " + " nor ".join(CPU_BF16_FLAGS) + " in cpu flags)"
    ok, why = agreement()
    return (torch.bfloat16, f"auto on CPU: bf16 ({why})") if ok else (None, f"auto on CPU: fp32 ({why})")


def serving_dtype(device: str | torch.device, env: Mapping[str, str] = os.environ, **inject: Any) -> torch.dtype | None:
    """The autocast dtype the app serves with on `device` (None: fp32); see `serving_choice`. Where the setting is
    overridden (fp16 on a CPU), the reason is warned once, so a deployment sees why it did not get what it asked."""
    dtype, why = serving_choice(device, env, **inject)
    asked = parse_precision(env.get(ENV))
    if asked != "auto" and dtype != DTYPES[asked]:
        warnings.warn(why, stacklevel=2)
    return dtype
