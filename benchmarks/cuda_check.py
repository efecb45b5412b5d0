"""What the app does on a CUDA machine, checked and timed in one run (the checks a CPU cannot make).

    python benchmarks/cuda_check.py [--faith-n 100] [--photos 16]

1. Precision: the autocast dtype the app picks (bf16 only where native, else
   fp16) and top-1 agreement of that dtype with fp32 on held-out Shapes images.
2. Phone photos end to end on the app's path (`Classifier.prepare`: draft-mode
   decode on the CPU, then transform; `predict_batch` on the GPU), batch 1 and
   16 of 12 MP JPEGs, beside the bare forward pass.
3. Grad-CAM for every stage from one pass (`explain.gradcam_stages`) against
   captum's `LayerGradCam`, on CUDA.
4. The faithfulness recompute on CUDA (it crashed there: a CPU generator for
   CUDA weights), its estimate beside the time it took, and the pointing game
   against the shipped CSV (measured on 500 images on the CPU).
5. The degradation re-run on CUDA against the same steps on the CPU.

The research sweep's CUDA checks live in `bench_gradflow.py --cuda-check`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.photos import phone_jpeg  # noqa: E402
from resnet_lab.data.shapes import ShapesDataset  # noqa: E402
from resnet_lab.explain.faithfulness import estimate_seconds, measure_faithfulness  # noqa: E402
from resnet_lab.explain.methods import METHODS, attribute, gradcam_stages  # noqa: E402
from resnet_lab.models.weights import load_checkpoint, load_weights  # noqa: E402
from resnet_lab.research import degradation  # noqa: E402
from resnet_lab.runtime.precision import cuda_half_dtype  # noqa: E402
from resnet_lab.serving.inference import Classifier  # noqa: E402
from resnet_lab.serving.zoo import ASSETS, SHAPES_CHECKPOINT  # noqa: E402

CUDA = torch.device("cuda")  # --device cpu tries the script out on a machine without a GPU


def sync() -> None:
    if CUDA.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def precision() -> None:
    dtype = cuda_half_dtype(CUDA)
    native = CUDA.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    print(f"## 1. precision: autocast dtype {dtype}; native bf16: {native}")
    weights = load_checkpoint(SHAPES_CHECKPOINT)
    data = ShapesDataset(2000, seed=999)
    x = data.normalized()
    fast = Classifier(weights, CUDA, fuse=True)
    with torch.inference_mode():
        ref = weights.model.float().eval().to(CUDA)(x.to(CUDA)).argmax(1).cpu()
    got = torch.cat([fast.logits(x[i:i + 500]) for i in range(0, len(x), 500)]).argmax(1)
    agree = (got == ref).float().mean().item()
    acc = (got == data.labels).float().mean().item()
    print(f"Shapes ResNet-20, 2000 held-out images: top-1 agreement {dtype} (fused) vs fp32 {agree:.2%}; "
          f"accuracy {acc:.2%}")
    weights.model.cpu()


def phone_photos(n: int) -> None:
    print(f"## 2. phone photos end to end ({n} JPEGs of 4032x3024)")
    raws = [phone_jpeg(4032, 3024, seed=i) for i in range(n)]
    rows = []
    for name, spec, arch in (("ResNet-50 (random weights)", None, "resnet50"),
                             ("Shapes ResNet-20", str(SHAPES_CHECKPOINT), None)):
        clf = Classifier(load_weights(spec, arch), CUDA, fuse=True)
        cpu = Classifier(load_weights(spec, arch), "cpu", fuse=True)
        for batch in (1, n):
            imgs = raws[:batch]
            x = clf.preprocess(imgs)
            e2e = median_ms(lambda imgs=imgs, clf=clf: clf.predict(imgs), 5)
            fwd = median_ms(lambda x=x, clf=clf: clf.logits(x), 20)
            same = (clf.logits(x).argmax(1) == cpu.logits(x).argmax(1)).float().mean().item()
            rows.append({"model": name, "batch": batch, "bytes->top5 ms": round(e2e, 1),
                         "forward ms": round(fwd, 2), "ratio": round(e2e / fwd, 1), "top-1 = CPU fp32": f"{same:.0%}"})
    print(pd.DataFrame(rows).to_string(index=False))


def gradcam() -> None:
    print("## 3. Grad-CAM, every stage from one pass vs captum LayerGradCam (CUDA)")
    for spec, arch in ((None, "resnet50"), (str(SHAPES_CHECKPOINT), None)):
        net = load_weights(spec, arch).model.to(CUDA).eval()
        size = net.pretrained_cfg["input_size"][-1]
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(CUDA)
        stages = list(net.stage_names)
        fast = gradcam_stages(net, x, 1, stages)
        worst = max((fast[s] - attribute(net, x, 1, "gradcam", s)).abs().max().item() /
                    max(fast[s].abs().max().item(), 1e-12) for s in stages)
        t_one = median_ms(lambda net=net, x=x, stages=stages: gradcam_stages(net, x, 1, stages), 10)
        t_captum = median_ms(lambda net=net, x=x, stages=stages: [attribute(net, x, 1, "gradcam", s) for s in stages],
                             10)
        print(f"{arch or 'shapes resnet20'}: max |one pass - captum| / max = {worst:.1e}; "
              f"one pass {t_one:.1f} ms, captum per stage {t_captum:.1f} ms")


def faithfulness(n: int) -> None:
    print(f"## 4. faithfulness recompute on CUDA, n={n}, every method and stage")
    net = copy.deepcopy(load_checkpoint(SHAPES_CHECKPOINT).model).to(CUDA)
    data = ShapesDataset(n, seed=424_242, size=net.pretrained_cfg["input_size"][-1])
    stages = list(net.stage_names)
    est = estimate_seconds(net, data, list(METHODS), stages, n=n, n_random=min(n, 50))
    t = time.perf_counter()
    df = measure_faithfulness(net, data, methods=list(METHODS), stages=stages, n=n, n_random=min(n, 50))
    took = time.perf_counter() - t
    print(f"estimated {est:.1f} s, took {took:.1f} s")
    shipped = pd.read_csv(ASSETS / "shapes_resnet20_faithfulness.csv")
    keys = ["method", "stage"]
    both = df[keys + ["pointing", "rand_full"]].merge(shipped[keys + ["pointing", "rand_full"]], on=keys,
                                                       suffixes=(f" cuda n={n}", " shipped cpu n=500"), how="left")
    print(both.to_string(index=False))


def degradation_rerun() -> None:
    q = degradation.QUICK
    print(f"## 5. degradation short re-run ({q['steps']} steps) on CUDA; the first 20 steps against the CPU")
    t = time.perf_counter()
    df = degradation.run_degradation(device=CUDA, **q)
    took = time.perf_counter() - t
    print(f"CUDA: {took:.1f} s")
    print(degradation.final_metrics(df).round(3).to_string(index=False))
    gpu = degradation.run_degradation(device=CUDA, until=20, **q)
    cpu = degradation.run_degradation(device="cpu", until=20, **q)
    merged = gpu.merge(cpu, on=["arch", "variant", "depth", "step", "metric"], suffixes=("_gpu", "_cpu"))
    loss = merged[merged.metric == "train_loss"]
    for arch, g in loss.groupby("arch", sort=False):
        rel = ((g.value_gpu - g.value_cpu).abs() / g.value_cpu.abs()).max()
        print(f"{arch}: train loss, steps 0-19, max relative CUDA-CPU difference {rel:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faith-n", type=int, default=100)
    p.add_argument("--photos", type=int, default=16)
    p.add_argument("--device", default="cuda", help="cpu only to try the script out")
    args = p.parse_args()
    global CUDA
    CUDA = torch.device(args.device)
    if CUDA.type == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_check: no CUDA device here")
    name = torch.cuda.get_device_name(0) if CUDA.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    for step in (precision, lambda: phone_photos(args.photos), gradcam, lambda: faithfulness(args.faith_n),
                 degradation_rerun):
        t = time.perf_counter()
        step()
        print(f"({time.perf_counter() - t:.1f} s)\n", flush=True)


if __name__ == "__main__":
    main()
