"""Which precision a training run computes in: `--precision` resolved, and on CUDA measured rather than guessed.

Half precision does not always train faster. ResNet-20 at 32 px trains at ~19,900 images/s in fp32/TF32 on an
H100 and ~10,600 under bf16 autocast (its tiny convs are launch- and cast-bound), while ResNet-50 at 224 px goes
from ~2,400 to ~3,700. So `--precision auto` on CUDA times a few SGD steps of the run's own model on one copy
(`choose_train_precision`); on the CPU it is fp32 without measuring. The serving side (the app's dtype) stays in
`resnet_lab.runtime.precision`, which needs nothing from training. The timed step is `optimizer_step`, the one the
training loop takes, so what is measured is what runs.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.devices import synchronize
from ..runtime.precision import cuda_half_dtype, dtype_name


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). auto: fp32 on CPU; on CUDA bf16 where the GPU does it natively, else fp16
    (with a GradScaler). fp16 on CPU is refused: CPU autocast to fp16 is slower than fp32 and has no scaler."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (it uses a GradScaler); on CPU use fp32 or bf16")
    if precision == "auto":
        return cuda_half_dtype(device)  # bf16 where native, else fp16; the run may then measure fp32 against it
    return torch.bfloat16 if precision == "bf16" else torch.float16


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One backward and update; through the GradScaler when fp16 needs one (bf16 and fp32 do not)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def time_train_steps(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: str | torch.device,
    dtypes: Sequence[torch.dtype | None],
    steps: int = 5,
    warmup: int = 3,
    rounds: int = 3,
    channels_last: bool = False,
    timer: Callable[[], float] = time.perf_counter,
    budget_s: float = 1.5,
) -> tuple[dict[str, float], int]:
    """({dtype_name: seconds per SGD step (forward, backward, update)} of `model` at each of `dtypes`, steps timed).

    All dtypes train one deep copy with one optimizer, taking turns (the caller's model, its BN statistics and any
    optimizer are untouched): one copy beside the live model, not one per dtype, so near the memory limit the
    choice is still made by speed (a second copy that does not fit would have ruled a dtype out by memory). The
    batch is drawn from a local generator (torch's global RNG is not used). After `warmup` steps each (cudnn
    autotuning, lazy init), `rounds` rounds of `steps` steps alternate between the dtypes so that clock or
    neighbour drift hits all alike; the median round counts. `steps` shrinks (to 1 at least) where one more
    untimed step per dtype says the rounds would take longer than `budget_s`: a big net at a big batch stays cheap.
    A dtype whose steps fail (no kernel, out of memory) is left out of the result.
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, *input_shape, generator=g).to(device).contiguous(memory_format=fmt)
    m = copy.deepcopy(model).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    state: dict[str, torch.Tensor] = {}
    runs: dict[str, Callable[[int], None]] = {}
    estimate = 0.0
    for dtype in dict.fromkeys(dtypes):
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

        def run(n: int, scaler=scaler, dtype=dtype) -> None:
            for _ in range(n):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = m(x).float()
                if "y" not in state:
                    state["y"] = torch.randint(0, out.shape[1], (batch_size,), generator=g).to(device)
                optimizer_step(F.cross_entropy(out, state["y"]), opt, scaler)
            synchronize(device)

        try:
            run(max(warmup, 1))
            t = time.perf_counter()  # the real clock, whatever `timer` is: this only sizes the rounds
            run(1)
            estimate += time.perf_counter() - t
        except (RuntimeError, NotImplementedError) as e:
            opt.zero_grad(set_to_none=True)
            warnings.warn(f"{dtype_name(dtype)} training steps failed ({type(e).__name__}: {e}); not a candidate",
                          stacklevel=2)
            continue
        runs[dtype_name(dtype)] = run
    steps = max(1, min(steps, int(budget_s / (rounds * estimate)) if estimate > 0 else steps))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = timer()
            run(steps)
            times[name].append((timer() - t) / steps)
    return {k: statistics.median(v) for k, v in times.items()}, steps


def choose_train_precision(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: str | torch.device,
    steps: int = 5,
    log: Callable[[str], None] | None = None,
    *,
    measure: bool | None = None,
    channels_last: bool = False,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[torch.dtype | None, dict[str, Any]]:
    """(autocast dtype or None for fp32, a record for the checkpoint JSON) for `--precision auto`.

    On CUDA (or with `measure=True`) it times up to `steps` SGD steps x 3 rounds, after 4 untimed steps, at fp32 and the
    device's half dtype (CUDA: `cuda_half_dtype`; CPU: bf16) on one copy of `model` (see `time_train_steps`) and picks
    the faster; a tie goes to fp32, the safer numerics. The rounds are sized to ~1.5 s (see `time_train_steps`).
    Eager steps: under --compile half precision gains more (casts fuse), so a choice of fp32 is the cautious one.
    On a CPU it returns fp32 without measuring: CPU bf16 autocast trains slower than fp32 on CPUs without AMX, and
    even where it is faster it trades accuracy for speed in a run that takes hours, which should be asked for
    (`--precision bf16`), not guessed from a few steps.
    """
    device = torch.device(device)
    measure = device.type == "cuda" if measure is None else measure
    record: dict[str, Any] = {"policy": "auto", "device": str(device), "input_shape": list(input_shape),
                              "batch_size": batch_size}
    if not measure:
        record.update(choice="fp32", measured=False,
                      reason="CPU: fp32 without measuring (bf16 training on a CPU is opt-in: --precision bf16)")
        return None, record
    half = cuda_half_dtype(device) if device.type == "cuda" else torch.bfloat16
    t0 = time.perf_counter()
    sec, steps = time_train_steps(model, input_shape, batch_size, device, [None, half], steps=steps,
                                  channels_last=channels_last, timer=timer)
    fp32_s, half_s = sec.get("fp32", float("inf")), sec.get(dtype_name(half), float("inf"))
    dtype = half if half_s < fp32_s else None
    record.update(
        choice=dtype_name(dtype), measured=True, steps=steps, rounds=3, warmup=4,
        ms_per_step={k: round(v * 1e3, 3) for k, v in sec.items()},
        images_per_s={k: round(batch_size / v, 1) for k, v in sec.items() if v > 0},
        measure_time_s=round(time.perf_counter() - t0, 2),
        reason=f"faster of {', '.join(sec)} over {steps} timed SGD steps x 3 rounds (eager, synthetic batch)",
    )
    if log is not None:
        rates = ", ".join(f"{k} {v:,.0f} images/s" for k, v in record["images_per_s"].items())
        log(f"precision auto: {rates} -> {record['choice']}")
    return dtype, record
