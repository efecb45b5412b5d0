"""Classify tab: top-5 for one image, a batched API endpoint, and the same image through every depth."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..data.images import ImageError
from ..models.weights import WeightsUnavailable
from ..serving.zoo import IMAGENET_MODELS, Entry
from .common import (
    LONG,
    QUICK,
    UploadImage,
    example_sets,
    on_gpu,
    result_note,
    shown_examples,
    status_line,
    user_errors,
    zoo,
)

log = logging.getLogger(__name__)
RANDOM = "random (meaningless)"
DEPTH_COLUMNS = ["model", "top-1", "probability", "latency ms", "weights"]
FAILED = "Failed: "  # a request's own failure, in its info text (plain text: emoji are boxes in some fonts)


def _unexpected(what: str, e: Exception) -> str:
    """Log a bug with its traceback; the user gets a message that names no internals but says it is on us."""
    log.error("classify: unexpected error while %s", what, exc_info=e)  # e's traceback, inside except or not
    return f"{FAILED}Something went wrong on our side while {what} ({type(e).__name__}); it has been logged."


def _classify_group(entry: Entry, images: list, ids: list[int], n: int, labels: list, infos: list[str]) -> None:
    """One model's requests: decoded together (on a GPU, one batched JPEG decode) but each failing alone, then one
    batched forward pass."""
    clf = entry.classifier
    inputs: dict[int, torch.Tensor] = {}
    try:
        prepared = clf.prepare_many([images[i] for i in ids])
    except Exception as e:  # prepare_many returns per-image errors; anything raised here is ours, for every request
        prepared = [e] * len(ids)
    for i, x in zip(ids, prepared):
        if isinstance(x, torch.Tensor):
            inputs[i] = x
        elif isinstance(x, ImageError):
            infos[i] = f"{FAILED}Cannot use this image: {x}."
        else:  # a bug, or a failure we did not foresee: this request's own, never its neighbours'
            infos[i] = _unexpected("reading this image", x)
    if not inputs:
        return
    try:
        preds = clf.predict_batch(torch.stack(list(inputs.values())), topk=5)
    except Exception as e:
        for i in inputs:
            infos[i] = _unexpected(f"running {entry.model}", e)
        return
    note = result_note(entry)
    # where the weights came from, for API users too; random weights are said once, at the top of the page
    source = "" if entry.weights.is_random else status_line(entry)
    for i, pred in zip(inputs, preds):
        labels[i] = pred.as_dict()
        timing = (f"Time: forward pass **{pred.forward_ms:.1f} ms** (batch of {pred.batch_size}; {n} request"
                  f"{'s' if n > 1 else ''} in this queue batch)")
        infos[i] = "  \n".join(filter(None, [note, source, timing]))


def classify_batch(images: list, models: list[str], tags: list[str]) -> tuple[list, list[str]]:
    """Queue-batched endpoint: requests for the same model share one forward pass (`Classifier.predict_batch`).

    A request never fails because of another one in its batch, whatever goes
    wrong: an unusable upload, an unknown tag or an unexpected error gives that
    request an empty label and its own reason in the info text. Only when every
    request failed for the same reason is it raised as `gr.Error` (a batched event
    that raises shows that one message to every request in it).
    """
    z = zoo()
    n = len(images)
    labels: list[Any] = [None] * n
    infos: list[str] = [""] * n
    groups: dict[tuple[str, str], list[int]] = {}
    for i, src in enumerate(images):
        if src is None:
            infos[i] = f"{FAILED}Upload an image first."
        else:
            groups.setdefault((models[i], tags[i]), []).append(i)
    for (model, tag), ids in groups.items():
        try:
            entry = z.get(model, tag)
        except (ValueError, WeightsUnavailable) as e:  # an unknown model or tag fails its own requests only
            for i in ids:
                infos[i] = f"{FAILED}{e}"
            continue
        except Exception as e:
            message = _unexpected(f"loading {model}", e)
            for i in ids:
                infos[i] = message
            continue
        _classify_group(entry, images, ids, n, labels, infos)
    if all(lab is None for lab in labels) and len(set(infos)) == 1:
        raise gr.Error(infos[0].removeprefix(FAILED), title="Cannot classify")
    return labels, infos


def compare_depths(image: Any, progress: gr.Progress = gr.Progress()) -> tuple[pd.DataFrame, Any]:
    """The same image through ResNet-18/34/50/101/152 (default weights): top-1, probability, latency."""
    if image is None:
        raise gr.Error("Upload an image first (or pick an example).", title="No image")
    rows = []
    for name in progress.tqdm(list(IMAGENET_MODELS), desc="depths"):
        entry = zoo().get(name)
        try:
            pred = entry.classifier.predict([image], topk=1)[0]
        except ImageError as e:
            raise gr.Error(f"Cannot use this image: {e}.", title="Cannot use this image") from e
        label, p = pred.topk[0]
        rows.append({"model": name, "top-1": label, "probability": round(p, 4), "latency ms": round(pred.forward_ms, 1),
                     "weights": RANDOM if entry.weights.is_random else entry.weights.source.split(":", 1)[1]})
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


def build_tab(model: gr.Dropdown, tag: gr.Dropdown, default_model: str) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`."""
    with gr.Row():
        with gr.Column():
            image = UploadImage(label="Image", sources=["upload", "webcam", "clipboard"], height=320,
                                elem_id="classify-image")
            examples = example_sets(image, default_model)
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            label = gr.Label(num_top_classes=5, label="Top-5", elem_id="classify-label")
            info = gr.Markdown(elem_id="classify-info")
    classify = {"fn": on_gpu(user_errors(classify_batch)), "inputs": [image, model, tag], "outputs": [label, info],
                "batch": True, "max_batch_size": 16, **QUICK}
    run.click(**classify, api_name="classify")
    # A new image clears the old answer: it never stands beside an image it is not about. An example, once it has
    # filled the image, runs at once.
    gr.on([image.upload, image.clear], clear_result, None, [label, info], queue=False, api_visibility="private")
    for ex in examples:
        ex.picked.then(clear_result, None, [label, info], queue=False, api_visibility="private").then(
            **classify, api_visibility="private")
    model.change(shown_examples, model, [ex.gallery for ex in examples], queue=False, api_visibility="private")
    with gr.Accordion("Compare all depths: the same image through ResNet-18 ... 152", open=False):
        compare = gr.Button("Compare all depths")
        # shown once there is an image to run: an empty table headed "1 2 3" says nothing
        table = gr.Dataframe(headers=DEPTH_COLUMNS, label="Top-1 per depth", interactive=False, visible=False,
                             elem_id="depths-table")
        plot = gr.Plot(label="Probability and latency per depth", visible=False)
    compare.click(lambda im: [gr.update(visible=im is not None)] * 2, image, [table, plot], queue=False,
                  api_visibility="private").then(
        on_gpu(user_errors(compare_depths)), image, [table, plot], api_name="compare_depths", **LONG)


def clear_result() -> tuple[None, str]:
    """No answer shown: the input changed."""
    return None, ""
