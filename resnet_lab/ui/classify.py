"""Classify tab: top-5 for one image, a batched API endpoint, and the same image through every depth."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..data import ImageError, decode_image
from ..weights import WeightsUnavailable
from ..zoo import IMAGENET_MODELS, SHAPES_MODEL, Entry, ModelZoo
from .common import UploadImage, on_gpu, open_upload, user_errors, zoo


def _timed_predict(z: ModelZoo, model: str, tag: str | None, images: list) -> tuple[list, float, Entry]:
    """Top-5 dicts for decoded `images`, the forward pass in ms, and the model's entry."""
    entry = z.get(model, tag)
    clf = entry.classifier
    batch = torch.stack([clf.transform(im) for im in images])
    t = time.perf_counter()
    probs = clf.probabilities(batch)
    ms = (time.perf_counter() - t) * 1e3
    values, idx = probs.topk(min(5, probs.shape[1]), dim=1)
    labels = [{clf.labels[i]: float(p) for p, i in zip(v.tolist(), ix.tolist())} for v, ix in zip(values, idx)]
    return labels, ms, entry


def classify_batch(images: list, models: list[str], tags: list[str]) -> tuple[list, list[str]]:
    """Queue-batched endpoint: requests for the same model share one forward pass.

    A batch never fails as a whole for one bad upload: if every request in it
    is unusable the error is raised (the user sees it), otherwise the bad ones
    get an empty label and the reason in their info text.
    """
    z = zoo()
    labels: list[Any] = [None] * len(images)
    infos: list[str] = [""] * len(images)
    decoded: dict[int, Any] = {}
    for i, src in enumerate(images):
        if src is None:
            infos[i] = "❌ Upload an image first."
            continue
        try:
            decoded[i] = decode_image(src)
        except ImageError as e:
            infos[i] = f"❌ Cannot use this image: {e}."
    groups: dict[tuple[str, str], list[int]] = {}
    for i in decoded:
        groups.setdefault((models[i], tags[i]), []).append(i)
    for (model, tag), ids in groups.items():
        try:
            out, ms, entry = _timed_predict(z, model, tag, [decoded[i] for i in ids])
        except (ValueError, WeightsUnavailable) as e:  # an unknown model or tag fails its own requests only
            for i in ids:
                infos[i] = f"❌ {e}"
            continue
        for i, lab in zip(ids, out):
            labels[i] = lab
            infos[i] = f"{entry.status}  \n⏱️ forward pass **{ms:.1f} ms** (batch of {len(ids)})"
            if model == SHAPES_MODEL:
                infos[i] += "  \nℹ️ This model knows only 8 shapes; for photos pick a ResNet trained on ImageNet."
    if all(lab is None for lab in labels):
        raise gr.Error(infos[0].removeprefix("❌ "), title="Cannot classify")
    return labels, infos


def compare_depths(image: Any, progress: gr.Progress = gr.Progress()) -> tuple[pd.DataFrame, Any]:
    """The same image through ResNet-18/34/50/101/152 (default weights): top-1, probability, latency."""
    img = open_upload(image)
    rows = []
    for name in progress.tqdm(list(IMAGENET_MODELS), desc="depths"):
        out, ms, entry = _timed_predict(zoo(), name, None, [img])
        label, p = next(iter(out[0].items()))
        rows.append({"model": name, "top-1": label, "probability": round(p, 4), "latency ms": round(ms, 1),
                     "weights": "random ⚠️" if entry.weights.is_random else entry.weights.source.split(":", 1)[1]})
    df = pd.DataFrame(rows)
    return df, _depth_plot(df)


def _depth_plot(df: pd.DataFrame):
    fig = Figure(figsize=(9, 3.2))  # not pyplot: its global state is not safe in Gradio's worker threads
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(df["model"], df["probability"], color="#4c72b0")
    for x, (p, lab) in enumerate(zip(df["probability"], df["top-1"])):
        ax1.text(x, p, lab.split(",")[0][:14], ha="center", va="bottom", fontsize=7, rotation=15)
    ax1.set_ylim(0, 1.15)
    ax1.set_ylabel("top-1 probability")
    ax2.bar(df["model"], df["latency ms"], color="#dd8452")
    ax2.set_ylabel("forward pass, ms")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def build_tab(model: gr.Dropdown, tag: gr.Dropdown, examples: list[str]) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`."""
    with gr.Row():
        with gr.Column():
            image = UploadImage(label="Image", sources=["upload", "webcam", "clipboard"], height=320)
            gr.Examples(examples, inputs=image, label="Examples")
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            label = gr.Label(num_top_classes=5, label="Top-5")
            info = gr.Markdown()
    run.click(on_gpu(user_errors(classify_batch)), [image, model, tag], [label, info], batch=True, max_batch_size=16,
              api_name="classify")
    with gr.Accordion("Compare all depths: the same image through ResNet-18 ... 152", open=False):
        compare = gr.Button("Compare all depths")
        table = gr.Dataframe(label="Top-1 per depth", interactive=False)
        plot = gr.Plot(label="Probability and latency per depth")
    compare.click(on_gpu(user_errors(compare_depths)), image, [table, plot], api_name="compare_depths")
