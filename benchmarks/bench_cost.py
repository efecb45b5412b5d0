"""The one cost model (`runtime/cost.py`) against measured runs: predicted / measured per kind, batch and net.

For each net and batch: a no-grad forward, a training step (forward, backward, SGD update, train-mode BN) and a
Hessian-vector product (double backward, the operator the curvature study uses) on one batch, timed (median of
`--repeats` after a warm-up; one more run only when a run takes seconds), each against `cost.seconds(...,
batch=...)` with the rates re-measured right before the row (`cost.remeasure`), so both see the same load. The nets:
the four shipped twins at 32 px and ResNet-50 (seeded init) at 64 and 224 px. A cell whose predicted seconds pass
`--max-seconds`, or whose tensors would not fit half the free memory, is skipped and says so. Then a full gradient
sweep (`gradflow.run_sweep`, each net built with its seeded init) against `gradflow.estimate_seconds`, estimated
right before and right after. Also printed: each kind as a multiple of the forward (what `cost.WORK` should be).

    OMP_NUM_THREADS=2 python -m benchmarks.bench_cost
    OMP_NUM_THREADS=2 python -m benchmarks.bench_cost --nets resnet20@32 --batches 8 --no-sweep
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

# Before torch loads (libgomp reads it once), as the package, the CLIs and the app have it: spinning OpenMP threads
# on a shared 2-core machine make a two-thread conv wait for a core, ~40 ms a call, for seconds at a time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from resnet_lab.models.resnet import REGISTRY, build, twin_name  # noqa: E402
from resnet_lab.research import gradflow  # noqa: E402
from resnet_lab.research.curvature.hessian import Hessian  # noqa: E402
from resnet_lab.research.study import load_models  # noqa: E402
from resnet_lab.runtime import cost, memory  # noqa: E402

KINDS = ("forward", "train_step", "hvp")
TWINS = ("plain20", "resnet20", "plain56", "resnet56")
DEFAULT_NETS = ",".join([f"{a}@32" for a in TWINS] + ["resnet50@64", "resnet50@224"])
SWEEP = gradflow.GradFlowConfig(archs=("resnet20", "resnet56", "resnet110"), batch_size=8, seeds=3, device="cpu")


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn` after a warm-up; a warm-up that takes over 2 s counts, with one more run."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = [first] if first > 2 else []
    for _ in range(1 if first > 2 else repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _net(spec: str) -> tuple[str, int, nn.Module]:
    """(arch, px, model) of `arch@px`: a shipped twin by its arch name, anything else built with seed 0."""
    arch, _, px = spec.partition("@")
    size = int(px or 32)
    if arch in TWINS:
        return arch, size, load_models([arch])[0].model
    return arch, size, build(arch, seed=0)


def _bytes(kind: str, arch: str, batch: int, size: int, num_classes: int) -> int:
    name, variant = (arch, "residual") if REGISTRY[arch].residual else (twin_name(arch), "plain")
    if kind == "hvp":
        return memory.hvp_memory(arch, batch, size, num_classes, krylov_vectors=2)  # one product, no eigensolver
    if kind == "forward":
        return memory.inference_memory([arch], batch, size, batch, weight_copies=0, num_classes=num_classes)
    params, saved, _, largest = memory.step_memory(name, variant, batch, size, "train", num_classes)
    return 3 * params + saved + memory.BACKWARD_WORKSPACE * largest


def _kinds(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weights stay put for the next kinds

    def forward() -> None:
        net.eval()
        with torch.inference_mode():
            net(x)

    def step() -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        net.eval()

    state: dict[str, object] = {}

    def hvp() -> None:
        if "h" not in state:  # built on first use: after the other kinds, in eval mode
            state["h"] = h = Hessian(net, x, y, chunk=len(x))
            state["v"] = torch.randn(h.dim, generator=torch.Generator().manual_seed(0))
        state["h"] @ state["v"]

    return {"forward": forward, "train_step": step, "hvp": hvp}


def _row(arch: str, size: int, net: nn.Module, batch: int, args: argparse.Namespace) -> dict[str, tuple]:
    """{kind: (predicted s, measured s or None, why skipped)} of one net at one batch."""
    g = torch.Generator().manual_seed(0)
    nc = int(net.num_classes)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, nc, (batch,), generator=g)
    free = memory.available_memory("cpu")
    cost.remeasure()
    out = {}
    for kind, fn in _kinds(net, x, y).items():
        predicted = cost.seconds([(arch, batch)], kind, "cpu", size, nc, batch=batch)
        if predicted > args.max_seconds:
            out[kind] = (predicted, None, "time")
        elif _bytes(kind, arch, batch, size, nc) > free / 2:
            out[kind] = (predicted, None, "memory")
        else:
            out[kind] = (predicted, _time(fn, args.repeats), "")
    return out


def _cell(p: float, m: float | None, why: str) -> str:
    if m is None:
        return f"skipped ({why}; predicted {p:.1f} s)"
    return f"{p:.3f} / {m:.3f} = **{p / m:.2f}**"


def sweep(cfg: gradflow.GradFlowConfig) -> tuple[float, float, float]:
    """(estimate before, measured, estimate after) seconds of a gradient sweep, rates re-measured around it."""
    cost.remeasure()
    before = gradflow.estimate_seconds(cfg)
    t = time.perf_counter()
    gradflow.run_sweep(cfg)
    measured = time.perf_counter() - t
    cost.remeasure()
    return before, measured, gradflow.estimate_seconds(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=DEFAULT_NETS, help="comma-separated arch@px (a twin's arch: the shipped twin)")
    p.add_argument("--batches", default="8,64,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0, help="skip a cell predicted to take longer")
    p.add_argument("--no-sweep", action="store_true", help="leave out the gradient sweep")
    args = p.parse_args()
    r, b = cost.rates("cpu"), cost.build_rates("cpu")
    print(f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average "
          f"{os.getloadavg()[0]:.1f}; first probe: {r.per_gmac:.4f} s per GMAC, {r.per_call * 1e3:.3f} ms "
          f"per layer call; builds {b.per_module * 1e3:.3f} ms per module, {b.per_param * 1e9:.2f} ns per parameter")
    print("\n| net | px | batch | forward: predicted / measured s | train step | HVP | step / fwd | HVP / fwd |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: list[float] = []
    for spec in args.nets.split(","):
        arch, size, net = _net(spec)
        for batch in (int(s) for s in args.batches.split(",")):
            row = _row(arch, size, net, batch, args)
            ratios += [pr / m for pr, m, _ in row.values() if m]
            fwd = row["forward"][1]
            multiple = [f"{row[k][1] / fwd:.2f}" if fwd and row[k][1] else "-" for k in ("train_step", "hvp")]
            print(f"| {arch} | {size} | {batch} | " + " | ".join(_cell(*row[k]) for k in KINDS)
                  + f" | {' | '.join(multiple)} |", flush=True)
    if ratios:
        print(f"\npredicted / measured over {len(ratios)} cells: {min(ratios):.2f} .. {max(ratios):.2f} "
              f"(median {statistics.median(ratios):.2f}); cost model: {cost.WORK}")
    if not args.no_sweep:
        before, measured, after = sweep(SWEEP)
        print(f"\ngradient sweep {', '.join(SWEEP.archs)}, batch {SWEEP.batch_size}, {SWEEP.seeds} seeds: measured "
              f"{measured:.1f} s; estimated {before:.1f} s before ({before / measured:.2f}), {after:.1f} s after "
              f"({after / measured:.2f})")


if __name__ == "__main__":
    main()
