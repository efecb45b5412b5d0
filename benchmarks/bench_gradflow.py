"""Wall time of the gradient-flow sweeps the Research tab and `python -m resnet_lab gradnorms` run.

    python benchmarks/bench_gradflow.py [--repeats 3]
    python benchmarks/bench_gradflow.py --cuda-check     (on a CUDA machine)

Budget: the default sweep (ResNet-18/34/50/101/152 and their plain twins,
batch 8, one seed, 64 px) must take <= 15 s on a 2-core CPU. The first run of
each sweep is cold (allocator and oneDNN warm-up) and is what a CLI user waits
for; the median is over all runs.

`--cuda-check` runs what only a GPU can show: seeded init on CUDA weights (a
CPU generator used to crash there), `estimate_memory` against
`torch.cuda.max_memory_allocated` (exact, unlike a CPU's resident set), the
sweeps on CUDA against the CPU's, and in-place-vs-hooks on CUDA.

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

from resnet_lab.research import gradflow  # noqa: E402
from resnet_lab.research.gradflow import CIFAR_ARCHS, GradFlowConfig, run_sweep  # noqa: E402

SWEEPS = {
    "default (ImageNet-style 18-152, batch 8, 1 seed, 64 px)": GradFlowConfig(),
    "CIFAR-style 20-110, batch 8, 5 seeds, 32 px": GradFlowConfig(archs=CIFAR_ARCHS, seeds=5),
}


MEMORY_CASES = [("resnet18", 128, 16), ("resnet50", 128, 16), ("resnet110", 32, 64), ("resnet56", 32, 128),
                ("resnet50", 224, 32), ("resnet152", 224, 64)]


def cuda_check() -> None:
    """Print one line per check; every line says what was compared and the numbers."""
    import dataclasses

    from torch import nn

    from resnet_lab import build
    from resnet_lab.models.blocks import set_inplace
    from resnet_lab.models.resnet import init_module

    dev = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    # 1. seeded init on CUDA weights
    cpu_conv, cuda_conv = nn.Conv2d(16, 32, 3), nn.Conv2d(16, 32, 3).to(dev)
    init_module(cpu_conv, torch.Generator().manual_seed(7))
    init_module(cuda_conv, torch.Generator().manual_seed(7))  # a CPU generator: drawn there, copied
    print("init: CPU generator into CUDA conv equals the CPU init:",
          torch.equal(cpu_conv.weight, cuda_conv.weight.cpu()))
    init_module(cuda_conv, 7)
    print("init: a seed into a CUDA conv ran (generator on cuda); equals CPU numbers:",
          torch.equal(cpu_conv.weight, cuda_conv.weight.cpu()))
    with torch.device(dev):
        on_cuda = build("resnet20", seed=3)
    print("init: build under torch.device('cuda') ran:", on_cuda.conv1.weight.device)
    try:
        from resnet_lab.explain.faithfulness import reinitialize

        net = build("resnet20", seed=0).to(dev)
        reinitialize(net, torch.Generator().manual_seed(0))
        reinitialize(net, torch.Generator(device=dev).manual_seed(0))
        print("init: faithfulness.reinitialize on CUDA with CPU and CUDA generators ran")
    except Exception as e:  # noqa: BLE001 (another module's code: report, go on)
        print("init: faithfulness.reinitialize FAILED:", type(e).__name__, e)
    # 2. the memory estimate against the allocator's exact peak
    for arch, size, batch in MEMORY_CASES:
        cfg = GradFlowConfig(archs=(arch,), input_size=size, batch_size=batch, device="cuda")
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        gradflow.measure(arch, "residual", 0, cfg)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        tensors = gradflow.net_memory(arch, "residual", cfg) + batch * 3 * size * size * 4
        est = gradflow.estimate_memory(cfg)
        print(f"memory: {arch} {size}px batch {batch}: measured peak {peak / 2**20:.0f} MiB; tensor count "
              f"{tensors / 2**20:.0f} MiB (measured/count {peak / tensors:.3f}); estimate_memory {est / 2**20:.0f} MiB "
              f"(measured/estimate {peak / est:.3f})")
    # 3. the sweeps on CUDA against the CPU
    for name, cfg in SWEEPS.items():
        t0 = time.perf_counter()
        cpu = gradflow.summarize(run_sweep(cfg)).set_index(["arch", "variant"])
        t1 = time.perf_counter()
        gpu = gradflow.summarize(run_sweep(dataclasses.replace(cfg, device="cuda"))).set_index(["arch", "variant"])
        t2 = time.perf_counter()
        diff = (cpu[["log10_ratio_mean", "loss_mean"]] - gpu[["log10_ratio_mean", "loss_mean"]]).abs().max()
        print(f"sweep {name}: cpu {t1 - t0:.1f} s, cuda {t2 - t1:.1f} s; max |cpu - cuda| log10_ratio "
              f"{diff.log10_ratio_mean:.2e}, loss {diff.loss_mean:.2e}")
    cfg = GradFlowConfig(archs=("resnet50",), device="cuda")
    res, plain = (gradflow.build_net("resnet50", v, 5, cfg).state_dict() for v in ("residual", "plain"))
    print("twins on cuda share every common weight:", all(torch.equal(plain[k], res[k]) for k in plain))
    # 4. in place vs hooks on CUDA
    m = build("resnet50", seed=0).to(dev).eval()
    seen = {}
    m.layer1[0].bn2.register_forward_hook(lambda _m, _i, o: seen.__setitem__("bn2", o))
    x = torch.randn(2, 3, 64, 64, device=dev)
    ref = m(x).detach()
    ref_min = float(seen["bn2"].detach().min())
    with torch.no_grad():
        out = m(x)
    print(f"inplace: no_grad hook min {float(seen['bn2'].min()):.3f} vs graph {ref_min:.3f}; logits equal",
          torch.equal(out, ref))
    set_inplace(m, True)
    with torch.no_grad():
        fast = m(x)
    print(f"inplace: set_inplace(True) logits equal {torch.equal(fast, ref)}, max diff {(fast - ref).abs().max():.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cuda-check", action="store_true", help="the GPU-only checks (see the module docstring)")
    args = p.parse_args()
    if args.cuda_check:
        cuda_check()
        return
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
