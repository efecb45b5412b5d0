"""Inference speed: ours (unfused and BN-folded) vs timm vs torchvision, same weights, same threads.

    python benchmarks/bench_inference.py [--archs resnet18 resnet50] [--batches 1 16] [--repeats 15]

The three models are timed in interleaved rounds in one process, so drift of the
machine hits them alike; we report the median of the rounds and the ratio to timm.
On CUDA the fast path is also timed under autocast in the dtype `Classifier`
picks (`autocast_dtype`: bf16 where the GPU has it natively, else fp16) and in
the other half-precision dtype, so the choice is measured on the card at hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import timm
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from resnet_lab import build  # noqa: E402
from resnet_lab.blocks import set_inplace  # noqa: E402
from resnet_lab.inference import autocast_dtype, fuse_bn  # noqa: E402
from resnet_lab.verify import randomize_bn  # noqa: E402


def time_once(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e3


def bench(arch: str, batch: int, repeats: int, device: str) -> list[dict]:
    torch.manual_seed(0)
    ref = timm.create_model(arch).eval()
    randomize_bn(ref)
    ours = build(arch).eval()
    ours.load_state_dict(ref.state_dict())
    tv = getattr(torchvision.models, arch)().eval()
    tv.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 3, 224, 224, device=device)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    fast = set_inplace(fuse_bn(ours), True).to(memory_format=torch.channels_last)  # what Classifier(fuse=True) runs
    models = {"timm": (ref, x, None), "torchvision": (tv, x, None), "ours": (ours, x, None),
              "ours (BN folded)": (fuse_bn(ours), x, None),
              "ours fast path (folded + in-place + channels_last)": (fast, nhwc, None)}
    if torch.device(device).type == "cuda":
        chosen = autocast_dtype(device)
        for dtype in (torch.bfloat16, torch.float16):
            mark = " (Classifier's choice)" if dtype == chosen else ""
            models[f"ours fast path, autocast {str(dtype).removeprefix('torch.')}{mark}"] = (fast, nhwc, dtype)
    models = {k: (m.to(device), inp, dt) for k, (m, inp, dt) in models.items()}
    for m, inp, dt in models.values():  # warm-up (cudnn autotuning included)
        for _ in range(3):
            time_once(m, inp, dt)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, (m, inp, dt) in models.items():
            times[k].append(time_once(m, inp, dt))
    base = statistics.median(times["timm"])
    return [{"arch": arch, "batch": batch, "model": k, "median ms": round(statistics.median(v), 2),
             "ratio vs timm": round(statistics.median(v) / base, 3)} for k, v in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if torch.device(args.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # as Classifier sets it
        print(f"{torch.cuda.get_device_name(args.device)}, autocast_dtype: {autocast_dtype(args.device)}")
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    rows = [r for a in args.archs for b in args.batches for r in bench(a, b, args.repeats, args.device)]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
