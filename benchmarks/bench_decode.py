"""Phone photos: full-size decode vs decoding no larger than the transform needs (JPEG draft / `Image.reduce`).

    python benchmarks/bench_decode.py [--sizes 4032x3024 8000x6000] [--repeats 7]

For each synthetic phone JPEG (a smooth photo-like pattern plus sensor-like
noise, quality 90; once plain and once with EXIF orientation 6, as a phone held
upright writes it), both paths run in interleaved rounds in one process:

- full: `decode_image(raw)` then the model's eval transform (what the app did),
- reduced: `decode_image(raw, min_side=resize_side(cfg))` then the same transform
  (what `Classifier.prepare` does now).

We report the median time of each, their ratio, the decoded size, the largest
absolute difference between the two normalized network inputs, and whether the
top-1 class changes, for the shipped Shapes ResNet-20 and a random-weights
ResNet-50 (fused fast path, as the app runs it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.photos import phone_jpeg  # noqa: E402
from resnet_lab.data.images import decode_image, eval_transform, resize_side  # noqa: E402
from resnet_lab.models.weights import load_weights  # noqa: E402
from resnet_lab.serving.inference import Classifier  # noqa: E402
from resnet_lab.serving.zoo import SHAPES_CHECKPOINT  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1e3, out


def bench(raw: bytes, name: str, models: dict[str, Classifier], repeats: int) -> list[dict]:
    rows = []
    for model_name, clf in models.items():
        cfg = clf.weights.pretrained_cfg
        side = resize_side(cfg)
        transform = eval_transform(cfg)
        paths = {
            "full": lambda t=transform: t(decode_image(raw)),
            "reduced": lambda t=transform, s=side: t(decode_image(raw, min_side=s)),
        }
        times: dict[str, list[float]] = {k: [] for k in paths}
        outs: dict[str, torch.Tensor] = {}
        for k, fn in paths.items():  # warm-up, and the tensors we compare
            outs[k] = fn()
        for _ in range(repeats):
            for k, fn in paths.items():
                ms, _ = timed(fn)
                times[k].append(ms)
        full_ms, red_ms = statistics.median(times["full"]), statistics.median(times["reduced"])
        logits = clf.logits(torch.stack([outs["full"], outs["reduced"]]))
        top = logits.argmax(1).tolist()
        margin = logits[0].topk(2).values
        rows.append({
            "image": name, "model": model_name, "min_side": side,
            "decoded to": "x".join(map(str, decode_image(raw, min_side=side).size)),
            "full ms": round(full_ms, 1), "reduced ms": round(red_ms, 1), "speedup": round(full_ms / red_ms, 1),
            "max |dx|": round(float((outs["full"] - outs["reduced"]).abs().max()), 4),
            "mean |dx|": round(float((outs["full"] - outs["reduced"]).abs().mean()), 4),
            "max |dlogit| / scale": f"{float((logits[0] - logits[1]).abs().max() / logits[0].abs().max()):.1e}",
            "top-1 margin": f"{float(margin[0] - margin[1]):.2e}",
            "top-1 same": top[0] == top[1],
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["4032x3024", "8000x6000"])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, PIL {Image.__version__}")
    models = {
        "Shapes ResNet-20 (shipped)": Classifier(load_weights(str(SHAPES_CHECKPOINT), "resnet20"), "cpu", fuse=True),
        "ResNet-50 (random)": Classifier(load_weights(None, "resnet50"), "cpu", fuse=True),
    }
    rows = []
    for size in args.sizes:
        w, h = map(int, size.split("x"))
        for orientation in (1, 6):
            raw = phone_jpeg(w, h, orientation)
            name = f"{w}x{h} ({w * h / 1e6:.0f} MP, {len(raw) / 1e6:.1f} MB, EXIF orientation {orientation})"
            rows += bench(raw, name, models, args.repeats)
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
