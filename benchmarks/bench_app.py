"""End-to-end latency of the served app through gradio_client, against the bare model and a no-op endpoint;
Grad-CAM under phone photos; Grad-CAM for all stages in one pass against captum's call per stage.

    python benchmarks/bench_app.py [--archs ResNet-18 ResNet-50] [--repeats 15] [--clients 8]
    python benchmarks/bench_app.py --phone [--phone-models "Shapes ResNet-20" ResNet-50] [--repeats 5]

Without --phone everything runs in one process on this machine: the app is
launched locally with one extra endpoint, `noop`, that takes the same image
through the same upload component and returns at once; its round trip is
Gradio's own cost. Our overhead = classify round trip - bare forward pass -
no-op round trip. Then all four stages' Grad-CAM on ResNet-50 (224 px, CPU):
four captum `LayerGradCam` calls against `explain.gradcam_stages`, interleaved.

With --phone, each (model, image) case gets a fresh server process (this script
with --serve), and this process is its client. The images: an example photo
(assets/chelsea.jpg, 451x300) and two JPEGs made here, 12 MP (4032x3024) and
48 MP (8000x6000), a smooth photo-like pattern plus noise at quality 90. Per
case: one Grad-CAM request on the example photo warms the server (model loaded,
Gradio warmed), then the server's RSS high-water mark is reset (writing 5 to
/proc/PID/clear_refs), its RSS read, one request of the case made, and its
high-water mark read again: "added peak MB" is that rise, the memory this image
needed beyond a warm server, counted the first time the server sees such a
photo (a fresh process, so no memory kept from an earlier big one). Then the
round trip (upload, decode, Grad-CAM at every stage, Guided Grad-CAM, overlays,
PNG and .npy written, results downloaded) is timed as the median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from benchmarks.photos import phone_jpeg  # noqa: E402
from resnet_lab.serving.zoo import ModelZoo  # noqa: E402
from resnet_lab.ui import common, gradcam  # noqa: E402
from resnet_lab.ui.common import UploadImage  # noqa: E402

IMAGE = str(ROOT / "assets" / "chelsea.jpg")
PHONE_SIZES = {"12 MP": (4032, 3024), "48 MP": (8000, 6000)}


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


def stages_in_one_pass(repeats: int) -> dict:
    """ResNet-50, 224 px, CPU: Grad-CAM of all four stages, one captum call each against one pass (interleaved)."""
    from captum.attr import LayerGradCam

    from resnet_lab import build
    from resnet_lab.explain.methods import gradcam_stages

    net = build("resnet50", seed=0).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def captum() -> None:
        for s in net.stage_names:
            LayerGradCam(net, net.get_submodule(s)).attribute(x.clone().requires_grad_(True), target=3,
                                                              relu_attributions=True)

    def one_pass() -> None:
        gradcam_stages(net, x, 3, net.stage_names)

    times: dict[str, list[float]] = {"captum": [], "one pass": []}
    captum(), one_pass()  # warm-up
    for _ in range(repeats):
        for name, fn in (("captum", captum), ("one pass", one_pass)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ResNet-50 Grad-CAM, 4 stages: captum per stage ms": round(med["captum"], 1),
            "one forward + one backward ms": round(med["one pass"], 1),
            "speed-up": round(med["captum"] / med["one pass"], 2)}


# ----------------------------------------------------------------------------- phone photos


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> None:
    """The app as the benchmark's server process (offline zoo: random ImageNet weights, the shipped Shapes net)."""
    common._ZOO = ModelZoo(weights_path="", device="cpu")
    app.build_demo().launch(server_name="127.0.0.1", server_port=port, quiet=True, **app.LAUNCH)


class _Server:
    """A fresh app server process (this script with --serve) and a gradio_client for it."""

    def __init__(self) -> None:
        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        self.client = Client(url, verbose=False)

    def gradcam(self, model: str, path: str) -> tuple:
        """One Grad-CAM request as the tab sends it: last stage, top-1, Guided Grad-CAM beside it."""
        from resnet_lab.serving.zoo import describe, tags_for

        return self.client.predict(handle_file(path), model, tags_for(model)[0], describe(model)[0][-1],
                                   "top-1 prediction", "jet", 0.5, False, "Guided Grad-CAM", api_name="/gradcam")

    def status_mb(self, key: str) -> float:
        return _status_kb(self.proc.pid, key) / 1024

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def added_peak(model: str, image: str) -> tuple[float, tuple]:
    """MB the server's RSS high-water mark rises by for its first request with `image`, once warm; and the result."""
    server = _Server()
    try:
        server.gradcam(model, IMAGE)  # warm: the model is loaded, Gradio has served one request
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # high-water mark := current RSS
        base = server.status_mb("VmRSS")
        out = server.gradcam(model, image)
        return server.status_mb("VmHWM") - base, out
    finally:
        server.close()


def round_trips(model: str, images: dict[str, str], repeats: int) -> dict[str, float]:
    """Median Grad-CAM round trip per image, the images taken in turn on one warm server (side by side in time)."""
    server = _Server()
    try:
        times: dict[str, list[float]] = {name: [] for name in images}
        for path in images.values():
            server.gradcam(model, path)  # warm-up
        for _ in range(repeats):
            for name, path in images.items():
                t = time.perf_counter()
                server.gradcam(model, path)
                times[name].append((time.perf_counter() - t) * 1e3)
        return {name: statistics.median(v) for name, v in times.items()}
    finally:
        server.close()


def phone(models: list[str], repeats: int) -> pd.DataFrame:
    """Round trip and added peak memory for the example photo and the 12 MP and 48 MP JPEGs, per model."""
    folder = Path(tempfile.mkdtemp(prefix="bench_phone_"))
    images = {"example": IMAGE}
    for k, (w, h) in PHONE_SIZES.items():
        path = folder / f"phone_{k[:2]}mp.jpg"
        path.write_bytes(phone_jpeg(w, h))
        images[k] = str(path)
    rows = []
    for model in models:
        e2e = round_trips(model, images, repeats)
        for name, path in images.items():
            added, out = added_peak(model, path)
            with Image.open(path) as im, Image.open(out[0]) as overlay:
                rows.append({"model": model, "case": name, "upload": f"{im.width}x{im.height}",
                             "MB": round(os.path.getsize(path) / 1e6, 1), "gradcam e2e ms": round(e2e[name], 1),
                             "x example": round(e2e[name] / e2e["example"], 2), "added peak MB": round(added, 1),
                             "overlay": f"{overlay.width}x{overlay.height}",
                             "PNG MB": round(os.path.getsize(out[4]) / 1e6, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["ResNet-18", "ResNet-50"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--phone", action="store_true", help="Grad-CAM round trip and added peak memory under phone photos")
    p.add_argument("--phone-models", nargs="+", default=["Shapes ResNet-20", "ResNet-50"])
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the --phone server process
    args = p.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.phone:
        df = phone(args.phone_models, args.repeats)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
        print(df.to_string(index=False))
        return None

    common._ZOO = ModelZoo(weights_path="", device="cpu")
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
    print(pd.Series(stages_in_one_pass(args.repeats)).to_string())


if __name__ == "__main__":
    main()
