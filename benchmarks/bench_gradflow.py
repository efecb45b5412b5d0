"""Wall time of the gradient-flow sweeps the Research tab and `python -m resnet_lab gradnorms` run.

    python benchmarks/bench_gradflow.py [--repeats 3]

Budget: the default sweep (ResNet-18/34/50/101/152 and their plain twins,
batch 8, one seed, 64 px) must take <= 15 s on a 2-core CPU. The first run of
each sweep is cold (allocator and oneDNN warm-up) and is what a CLI user waits
for; the median is over all runs.

On a CPU shared with other jobs, libgomp's default spin-waiting can make a
2-thread torch many times slower; `OMP_WAIT_POLICY=PASSIVE` (set before Python
starts) avoids that. The load average and the policy are printed with the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from resnet_lab.gradflow import CIFAR_ARCHS, GradFlowConfig, run_sweep  # noqa: E402

SWEEPS = {
    "default (ImageNet-style 18-152, batch 8, 1 seed, 64 px)": GradFlowConfig(),
    "CIFAR-style 20-110, batch 8, 5 seeds, 32 px": GradFlowConfig(archs=CIFAR_ARCHS, seeds=5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, cfg in SWEEPS.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run_sweep(cfg)
            times.append(time.perf_counter() - t0)
        print(f"{name}: median {statistics.median(times):.2f} s, cold {times[0]:.2f} s, "
              f"runs {', '.join(f'{t:.2f}' for t in times)}")


if __name__ == "__main__":
    main()
