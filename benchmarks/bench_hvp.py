"""Hessian-vector products of the shipped Shapes twins: curvlinops' operator against this project's double backward.

    python benchmarks/bench_hvp.py [--models resnet20,plain20,resnet56,plain56] [--n 256] [--chunk 128] [--repeats 3]

Per net, in one process on the same images and vectors (the first n training images, BN in eval mode), seconds per
product, median of `--repeats`:

- `curvlinops`: `HessianLinearOperator` (forward-over-reverse by torch.func), the operator shipped before;
- `double backward`: `Hessian` rebuilding each chunk's gradient graph for every product (cache 0);
- `cached`: `Hessian` keeping every chunk's graph (what sequential Lanczos products pay once the cache is warm);
- `block of 8`: one product of a [dim, 8] block per column (Hutch++'s blocks: a chunk's graph serves 8 vectors).

The relative difference to curvlinops' product is printed beside each. Times are of this machine under its load
(printed): read the ratios, not the seconds.
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
from curvlinops import HessianLinearOperator  # noqa: E402

from resnet_lab.data.heldout import held_out_set  # noqa: E402
from resnet_lab.research.curvature.hessian import Hessian  # noqa: E402
from resnet_lab.research.study import load_models  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:  # noqa: ANN001
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def measure(w, n: int, chunk: int, repeats: int) -> str:  # noqa: ANN001
    """One net's line: each operator's seconds per product and its difference to curvlinops'."""
    net = w.model.eval()
    d = held_out_set(w, n, split="train")
    params = [q for q in net.parameters() if q.requires_grad]
    data = [(d.x[i:i + chunk], d.y[i:i + chunk]) for i in range(0, n, chunk)]
    op = HessianLinearOperator(net, torch.nn.CrossEntropyLoss(), params, data, check_deterministic=False, num_data=n)
    g = torch.Generator().manual_seed(0)
    dim = sum(q.numel() for q in params)
    v = torch.randn(dim, generator=g)
    block = torch.randn(dim, 8, generator=g)
    ref_t, ref = timed(lambda: op @ v, repeats)
    plain = Hessian(net, d.x, d.y, chunk)
    db_t, db = timed(lambda: plain @ v, repeats)
    cached = Hessian(net, d.x, d.y, chunk, cache_bytes=2**40)
    cached @ v  # fills the cache
    c_t, c = timed(lambda: cached @ v, repeats)
    b_t, _ = timed(lambda: plain @ block, repeats)
    rel = lambda x: float((x - ref).norm() / ref.norm())  # noqa: E731
    return (f"{w.meta.get('arch')}: curvlinops {ref_t:.2f} s; double backward {db_t:.2f} s ({ref_t / db_t:.2f}x, "
            f"diff {rel(db):.1e}); cached {c_t:.2f} s ({ref_t / c_t:.2f}x, diff {rel(c):.1e}, graphs "
            f"{cached.graph_bytes * len(cached.cache) / 2**30:.2f} GiB); block of 8 {b_t / 8:.2f} s a vector "
            f"({8 * ref_t / b_t:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,plain20,resnet56,plain56")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}, "
          f"n {a.n}, chunk {a.chunk}")
    for w in load_models(a.models.split(",")):
        print(measure(w, a.n, a.chunk, a.repeats))

if __name__ == "__main__":
    main()
