"""End-to-end latency of the served app through gradio_client, against the bare model and a no-op endpoint.

    python benchmarks/bench_app.py [--archs ResNet-18 ResNet-50] [--repeats 15] [--clients 8]

Everything runs in one process on this machine: the app is launched locally
with one extra endpoint, `noop`, that takes the same image through the same
upload component and returns at once; its round trip is Gradio's own cost.
Our overhead = classify round trip - bare forward pass - no-op round trip.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from resnet_lab.ui import common, gradcam  # noqa: E402
from resnet_lab.ui.common import UploadImage  # noqa: E402
from resnet_lab.zoo import ModelZoo  # noqa: E402

IMAGE = str(ROOT / "assets" / "chelsea.jpg")


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure(client: Client, upload, model: str, noop: float, repeats: int, clients: int) -> dict:
    """One model: bare forward, classify and gradcam round trips, and throughput under concurrent clients."""
    entry = common.zoo().get(model)
    clf = entry.classifier
    batch = clf.preprocess([IMAGE])
    forward = median_ms(lambda: clf.probabilities(batch), repeats)
    few = max(3, repeats // 3)

    def classify() -> object:
        return client.predict(upload, model, entry.tag, api_name="/classify")

    e2e = median_ms(classify, repeats)
    bare_cam = median_ms(lambda: gradcam.explain_image(IMAGE, model, entry.tag, "layer4"), few)
    cam = median_ms(lambda: client.predict(upload, model, entry.tag, "layer4", "top-1 prediction", "jet", 0.5,
                                           False, "Guided Grad-CAM", api_name="/gradcam"), few)
    n = clients * 4
    with ThreadPoolExecutor(clients) as pool:
        t = time.perf_counter()
        list(pool.map(lambda _: classify(), range(n)))
        throughput = n / (time.perf_counter() - t)
    return {
        "model": model, "bare forward ms": round(forward, 1), "classify e2e ms": round(e2e, 1),
        "no-op e2e ms": round(noop, 1), "overhead beyond model + no-op ms": round(e2e - forward - noop, 1),
        "explain (bare) ms": round(bare_cam, 1), "gradcam e2e ms": round(cam, 1),
        f"classify req/s, {clients} clients": round(throughput, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["ResNet-18", "ResNet-50"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()

    common.set_zoo(ModelZoo(weights_path="", device="cpu"))
    demo = app.build_demo()
    with demo:
        noop_in, noop_out = UploadImage(visible=False), gr.Textbox(visible=False)
        gr.Button(visible=False).click(lambda im: "ok", noop_in, noop_out, api_name="noop")
    demo.launch(prevent_thread_lock=True, server_port=7890, quiet=True, **app.LAUNCH)
    client = Client("http://127.0.0.1:7890/", verbose=False)
    upload = handle_file(IMAGE)
    noop = median_ms(lambda: client.predict(upload, api_name="/noop"), args.repeats)
    rows = [measure(client, upload, model, noop, args.repeats, args.clients) for model in args.archs]
    demo.close()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    print(pd.DataFrame(rows).T.to_string(header=False))


if __name__ == "__main__":
    main()
