"""The memory model's estimates against the peak resident memory of real runs, repeated: how far glibc moves it.

    python benchmarks/bench_memory.py [--repeats 8] [--parallel 2] [--cases landscape,degradation,gradflow]

Each case runs its work in a fresh Python process after a warm-up (`peak_memory.added_peak`: the rise of VmHWM
over VmRSS) and divides by the estimate the app and the CLIs refuse runs with. `--parallel 2` runs two copies at
once, as the test suite's two processes do. The peak of the same run varies from run to run (glibc keeps a varying
number of freed activation-sized blocks in its heap), so the minimum, median and maximum are printed; an estimate
is an upper bound where the maximum stays at or under 1. The tests run each case once (`CASES`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.peak_memory import added_peak  # noqa: E402

if TYPE_CHECKING:
    from resnet_lab.research.gradflow import GradFlowConfig


# Each case's settings, written once: its work and its estimate are both made from them.
LANDSCAPE = {"archs": ("plain20", "resnet20"), "grid": 5, "n": 512}
DEGRADATION = {"steps": 30, "batch_size": 64, "archs": ("plain20", "resnet32"), "train_size": 256, "val_size": 128}
GRADFLOW = {"archs": ("resnet18",), "input_size": 128, "batch_size": 16}


def _landscape() -> int:
    from resnet_lab.research import landscape

    return landscape.estimate_cost(list(LANDSCAPE["archs"]), LANDSCAPE["grid"], LANDSCAPE["n"]).bytes


def _degradation() -> int:
    from resnet_lab.research import degradation

    return degradation.estimate_memory(**DEGRADATION)


def gradflow_config() -> GradFlowConfig:
    """GRADFLOW as the study's config (resnet_lab is imported only when a case runs)."""
    from resnet_lab.research import gradflow

    return gradflow.GradFlowConfig(**GRADFLOW)


def _gradflow() -> int:
    from resnet_lab.research import gradflow

    return gradflow.estimate_memory(gradflow_config())


# name: (warm-up code, the work, its estimate in bytes)
CASES: dict[str, tuple[str, str, Callable[[], int]]] = {
    "landscape": (f"""
from resnet_lab.research import landscape as L
from resnet_lab.models.resnet import build
from resnet_lab.data.shapes import MEAN, STD
from resnet_lab.models.weights import LoadedWeights
def loaded(arch):
    net = build(arch, num_classes=8, seed=0).eval()
    cfg = {{**net.pretrained_cfg, "input_size": (3, 32, 32), "mean": MEAN, "std": STD}}
    return LoadedWeights(net, "random", cfg, {{"arch": arch, "data": {{"name": "shapes", "clutter": False}}}})
models = [loaded(a) for a in {LANDSCAPE["archs"]!r}]
L.compute_landscape(models, grid={LANDSCAPE["grid"]}, dims=1, n=8)
""", f"L.compute_landscape(models, grid={LANDSCAPE['grid']}, dims=1, n={LANDSCAPE['n']})", _landscape),
    "degradation": ('from resnet_lab.research import degradation\n'
                    'degradation.run_degradation(2, 2, ("plain20",), train_size=4, val_size=4, evals=1)',
                    f"degradation.run_degradation(**{DEGRADATION!r}, until=2)", _degradation),
    "gradflow": ('from resnet_lab.research import gradflow\n'
                 'gradflow.measure("resnet20", "residual", 0, gradflow.GradFlowConfig(archs=("resnet20",), '
                 'batch_size=2))',
                 f"gradflow.measure({GRADFLOW['archs'][0]!r}, 'residual', 0, gradflow.GradFlowConfig(**{GRADFLOW!r}))",
                 _gradflow),
}


def measure(name: str) -> int:
    """Bytes the case's work added to its process's peak (one fresh process)."""
    warmup, work, _ = CASES[name]
    return added_peak(warmup, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2, help="copies run at once")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    print("| case | estimate MiB | measured MiB min / median / max | measured / estimate max |")
    print("|---|---|---|---|")
    for name in args.cases.split(","):
        estimate = CASES[name][2]()
        with ThreadPoolExecutor(args.parallel) as pool:
            peaks = sorted(pool.map(measure, [name] * args.repeats))
        mib = [p / 2**20 for p in peaks]
        print(f"| {name} | {estimate / 2**20:.0f} | {mib[0]:.0f} / {statistics.median(mib):.0f} / {mib[-1]:.0f} | "
              f"{peaks[-1] / estimate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
