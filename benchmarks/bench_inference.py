"""Inference speed: ours (fp32, half precision, BN-folded, compiled, CUDA-graphed) vs timm, and bytes -> top-5.

    python benchmarks/bench_inference.py --device cuda          # the GPU table (well under 10 min on one card)
    python benchmarks/bench_inference.py --device cpu --quick   # tiny settings: checks the script on a CPU

Part 1, the forward pass: every variant of one arch and batch size is timed in
interleaved rounds in one process (drift hits them alike); median ms, images/s and
the ratio to timm fp32. Weights are random (the hub is not needed) but identical:
timm's randomly initialized state dict, BN statistics randomized, loaded into ours
and torchvision's. On CUDA the half-precision dtype is `precision.cuda_half_dtype`'s choice
(bf16 where native, else fp16); "graphed" is the served model exactly
(`Classifier.use_cuda_graphs`: one CUDA graph per queue bucket); "compiled" is
`torch.compile(mode="reduce-overhead")`, ours and timm's, for `--compile-archs`.

Part 2, end to end as the app serves a queue batch: phone-size JPEGs
(benchmarks/photos.py; EXIF orientation 6 on every other one) as bytes ->
`Classifier.prepare_many` -> `predict_batch` (top-5), on the PIL path (draft decode
on the CPU) and on the device path (`decode_jpeg` + resize/crop/normalize on the
device), both with the served forward pass. Reported against that batch's forward
pass alone (`Classifier.logits` on the prepared batch, the `forward_ms` the app
shows). Targets (issue 10): e2e / forward <= 10 at batch 16, ResNet-50 batch 1 < 1.5 ms.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import timm
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.photos import phone_jpeg  # noqa: E402
from resnet_lab import build  # noqa: E402
from resnet_lab.models.blocks import set_inplace  # noqa: E402
from resnet_lab.models.verify import randomize_bn  # noqa: E402
from resnet_lab.models.weights import LoadedWeights  # noqa: E402
from resnet_lab.runtime.precision import cuda_half_dtype  # noqa: E402
from resnet_lab.serving.inference import Classifier, fuse_bn  # noqa: E402

Variant = tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t) * 1e3


def interleaved(calls: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
                ) -> dict[str, float]:
    """Median ms of each call over `repeats` rounds, the calls taking turns within each round."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            times[k].append(time_ms(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(model: Callable, device: torch.device, dtype: torch.dtype | None) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)

    return run


def compiled(model: Callable, device: torch.device, dtype: torch.dtype | None) -> Callable:
    """`torch.compile(mode="reduce-overhead")` (CUDA graphs via cudagraph trees), one static shape per batch."""
    fn = torch.compile(autocast(model, device, dtype), mode="reduce-overhead", dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return fn(x)

    return run


def models(arch: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, Classifier]:
    """timm's net (random init, BN statistics randomized), ours and torchvision's with its state dict, and the
    app's classifier for ours (BN folded, in-place, channels_last, autocast, CUDA graphs on CUDA)."""
    torch.manual_seed(0)  # timm draws its init from the global RNG; a benchmark script may seed it
    ref = timm.create_model(arch).eval()
    randomize_bn(ref)
    ours = build(arch).eval()
    ours.load_state_dict(ref.state_dict())
    tv = getattr(torchvision.models, arch)().eval()
    tv.load_state_dict(ref.state_dict())
    clf = Classifier(LoadedWeights(ours, "random", dict(ours.pretrained_cfg)), device, fuse=True)
    if device.type == "cuda":
        t = time.perf_counter()
        clf.use_cuda_graphs()
        print(f"{arch}: CUDA graphs {'captured' if clf.graphed else 'OFF'} in {time.perf_counter() - t:.1f} s")
    return ref.to(device), ours.to(device), tv.to(device), clf


def forward_rows(arch: str, batches: list[int], device: torch.device, repeats: int, compile_it: bool) -> list[dict]:
    ref, ours, tv, clf = models(arch, device)
    half = cuda_half_dtype(device)
    tag = str(half).removeprefix("torch.")
    folded = set_inplace(fuse_bn(ours), True).to(memory_format=torch.channels_last)
    nhwc_ours = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    nhwc_ref = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(batch))
        nhwc = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            gap = float((ours(x) - ref(x)).abs().max())
        variants: dict[str, Variant] = {
            "timm fp32": (ref, x), "torchvision fp32": (tv, x), "ours fp32": (ours, x),
            "ours folded fp32 (channels_last)": (folded, nhwc),
        }
        if device.type == "cuda":
            variants[f"ours {tag}"] = (autocast(nhwc_ours, device, half), nhwc)
            variants[f"ours folded {tag} (Classifier, eager)"] = (clf._forward, nhwc)
            if clf.graphed is not None:
                served = functools.partial(clf.graphed, eager=clf._forward)
                variants[f"ours folded {tag}, CUDA graphs (served)"] = (served, nhwc)
            if compile_it:
                t = time.perf_counter()
                variants[f"ours folded {tag}, compiled"] = (compiled(clf.model, device, half), nhwc)
                variants[f"timm {tag}, compiled"] = (compiled(nhwc_ref, device, half), nhwc)
                with torch.inference_mode():  # compile (and record) outside the timed rounds
                    for name in (f"ours folded {tag}, compiled", f"timm {tag}, compiled"):
                        for _ in range(3):
                            variants[name][0](nhwc)
                print(f"{arch} batch {batch}: compiled in {time.perf_counter() - t:.0f} s")
        with torch.inference_mode():
            ms = interleaved({k: (lambda f=f, i=i: f(i)) for k, (f, i) in variants.items()}, device, 3, repeats)
        base = ms["timm fp32"]
        rows += [{"arch": arch, "batch": batch, "variant": k, "median ms": round(v, 3),
                  "images/s": round(batch / v * 1e3), "vs timm fp32": round(v / base, 3)} for k, v in ms.items()]
        print(f"{arch} batch {batch}: ours fp32 vs timm fp32 max |logit diff| = {gap:.3g}")
    return rows


def e2e_rows(arch: str, batches: list[int], device: torch.device, size: tuple[int, int], repeats: int) -> list[dict]:
    """Bytes -> top-5 on the PIL path and on the device path, against the forward pass of that batch."""
    _, ours, _, _ = models(arch, torch.device("cpu"))
    weights = LoadedWeights(ours, "random", dict(ours.pretrained_cfg))
    paths = {"PIL decode (CPU)": Classifier(weights, device, fuse=True, device_decode=False),
             "device decode": Classifier(weights, device, fuse=True, device_decode=True)}
    for clf in paths.values():
        clf.use_cuda_graphs()
    photos = [phone_jpeg(*size, orientation=6 if i % 2 else 1, seed=i) for i in range(4)]
    rows = []
    for batch in batches:
        raws = [photos[i % len(photos)] for i in range(batch)]
        calls, top1 = {}, {}
        for name, clf in paths.items():
            x = torch.stack(clf.prepare_many(raws))
            top1[name] = [p.topk[0][0] for p in clf.predict_batch(x)]
            calls[f"{name}: bytes -> top-5"] = lambda c=clf, r=raws: c.predict_batch(torch.stack(c.prepare_many(r)))
            calls[f"{name}: forward"] = lambda c=clf, x=x: c.logits(x)
        ms = interleaved(calls, device, 1, repeats)
        same = sum(a == b for a, b in zip(*top1.values())) / batch
        for name in paths:
            e2e, fwd = ms[f"{name}: bytes -> top-5"], ms[f"{name}: forward"]
            rows.append({"arch": arch, "batch": batch, "photo": f"{size[0]}x{size[1]}", "path": name,
                         "e2e ms": round(e2e, 2), "forward ms": round(fwd, 3), "e2e / forward": round(e2e / fwd, 1),
                         "photos/s": round(batch / e2e * 1e3, 1), "same top-1 as PIL": same})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny settings (resnet18, batches 1 and 4, 1024x768 photos)")
    p.add_argument("--archs", nargs="+", help="default: resnet18 resnet50 (quick: resnet18)")
    p.add_argument("--batches", nargs="+", type=int, help="default: 1 16 (quick: 1 4)")
    p.add_argument("--repeats", type=int, help="rounds per timing (default 20, quick 3)")
    p.add_argument("--compile-archs", nargs="*", default=["resnet50"], help="archs timed under torch.compile (CUDA)")
    p.add_argument("--e2e-arch", default=None, help="arch of the end-to-end part (default resnet50; quick resnet18)")
    p.add_argument("--photo", default=None, help="phone photo size WxH (default 4032x3024; quick 1024x768)")
    args = p.parse_args()
    device = torch.empty(0, device=args.device).device
    archs = args.archs or (["resnet18"] if args.quick else ["resnet18", "resnet50"])
    batches = args.batches or ([1, 4] if args.quick else [1, 16])
    repeats = args.repeats or (3 if args.quick else 20)
    e2e_arch = args.e2e_arch or ("resnet18" if args.quick else "resnet50")
    size = tuple(int(v) for v in (args.photo or ("1024x768" if args.quick else "4032x3024")).split("x"))
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as Classifier sets it
        print(f"{torch.cuda.get_device_name(device)}, half dtype: {cuda_half_dtype(device)}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}")
    fwd = [r for a in archs for r in forward_rows(a, batches, device, repeats,
                                                    device.type == "cuda" and a in args.compile_archs)]
    print("\nForward pass (random weights, identical in all three nets; 224 px):")
    print(pd.DataFrame(fwd).to_string(index=False))
    e2e = e2e_rows(e2e_arch, batches, device, size, max(3, repeats // 4))
    print(f"\nEnd to end, {size[0]}x{size[1]} JPEGs -> top-5 ({e2e_arch}, the app's Classifier):")
    print(pd.DataFrame(e2e).to_string(index=False))
    served = [r for r in fwd if r["arch"] == "resnet50" and r["batch"] == 1 and "served" in r["variant"]]
    if served:
        print(f"\nResNet-50 batch 1, served (CUDA graphs): {served[0]['median ms']} ms (target < 1.5 ms)")
    best = [r for r in e2e if r["batch"] == max(batches) and r["path"] == "device decode"]
    if best:
        print(f"e2e / forward at batch {max(batches)}, device decode: {best[0]['e2e / forward']}x (target <= 10x)")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
