"""Grad-CAM tab: where did the network look? Grad-CAM on any stage, a second captum method beside it,
and, for Shapes images, the true box with the pointing-game verdict and the measured faithfulness table."""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.heldout import RECOMPUTE_SEED, SAMPLE_SEED_BASE
from ..data.images import crop_box, resize_side
from ..data.shapes import CLASSES, ShapesDataset
from ..explain.faithfulness import estimate_seconds, measure_faithfulness
from ..explain.methods import METHODS, attribute, draw_box, layer_cams, overlay, upsample_cam
from ..serving.zoo import ASSETS, SHAPES_MODEL, Entry
from .common import (
    LONG,
    QUICK,
    UploadImage,
    example_sets,
    on_gpu,
    open_upload,
    result_note,
    shown_examples,
    tmp_file,
    user_errors,
    zoo,
)

RANKS = [f"top-{k} prediction" for k in range(1, 6)]
CMAPS = ["jet", "inferno", "viridis", "magma", "turbo", "gray"]
SECOND = {v: k for k, v in METHODS.items() if k != "gradcam"}
FAITHFULNESS_CSV = ASSETS / "shapes_resnet20_faithfulness.csv"
MIN_DISPLAY = 320  # tiny inputs (Shapes: 32 px) are shown enlarged, pixels kept sharp
DISPLAY = 1024  # overlays are drawn with the longest side at most this, whatever the upload's size
# Uploads are decoded (JPEG draft mode, else `Image.reduce`) with the shorter side no smaller than this (nor than the
# network's resize): a 4032x3024 phone photo decodes at 1/4, 1008x756, and is shown as decoded; 8000x6000 at 1/8.
DISPLAY_SHORT = 720
THUMB = 512  # the every-stage gallery shows small tiles: drawn at most this size
PNG_LEVEL = 1  # zlib level of the PNGs we write: on a photo 4-5x faster than PIL's default 6, ~15 % larger
MAX_RECOMPUTE = 200  # images for "Recompute": a few minutes on a CPU; the CLI takes more


@dataclass
class Explanation:
    """Everything the tab shows, also what the `gradcam` API returns first: overlay and raw map."""

    overlay: Image.Image
    heatmap: np.ndarray  # Grad-CAM over the network input, [H, W]
    stages: list[tuple[Image.Image, str]]
    second: Image.Image | None
    info: str


@dataclass
class View:
    """An upload as the network sees it and as the overlays show it."""

    image: Image.Image  # decoded, no larger than the display and the network need
    x: torch.Tensor  # the network input, [1, 3, H, W], on the model's device
    display: Image.Image  # what overlays are drawn on: longest side <= DISPLAY, tiny inputs enlarged
    box: tuple[float, float, float, float]  # where `x` lies on `display` (left, top, right, bottom)


def _display(img: Image.Image, largest: int = DISPLAY) -> Image.Image:
    """At most `largest` px on the longest side (drawing at a phone photo's 12 MP costs seconds and a GB); tiny
    inputs enlarged with sharp pixels."""
    longest = max(img.size)
    if MIN_DISPLAY <= longest <= largest:
        return img
    scale = (MIN_DISPLAY if longest < MIN_DISPLAY else largest) / longest
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    return img.resize(size, resample)


def _rescale(box: tuple[float, float, float, float], old: Image.Image, new: Image.Image) -> tuple[float, ...]:
    sx, sy = new.width / old.width, new.height / old.height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def view(image: Any, entry: Entry) -> View:
    """Decode the upload once, no larger than needed, and tie the network input to its place on the display."""
    clf, cfg = entry.classifier, entry.weights.pretrained_cfg
    img = open_upload(image, min_side=max(resize_side(cfg), DISPLAY_SHORT), cfg=cfg)
    disp = _display(img)
    box = _rescale(crop_box(img.size, cfg), img, disp)  # crop_box is proportional: holds for the reduced decode too
    return View(img, clf.transform(img)[None].to(clf.device), disp, box)


def _digest(img: Image.Image) -> str:
    """Identifies a drawn Shapes sample by its pixels, so its true box is never drawn over another image."""
    return hashlib.sha1(np.asarray(img).tobytes()).hexdigest()


def _target(choice: str, top: list[int], labels: list[str]) -> int:
    if choice in RANKS:
        return top[RANKS.index(choice)]
    if choice in labels:
        return labels.index(choice)
    raise gr.Error(f"unknown target class {choice!r}")


def explain_image(
    image: Any, model: str, tag: str | None, stage: str, target: str = RANKS[0], cmap: str = "jet",
    alpha: float = 0.5, signed: bool = False, second: str = "Guided Grad-CAM", true_box: Any = None,
) -> Explanation:
    """Grad-CAM on `stage` for `target`, laid over the upload at display size; plus every stage and a second method.

    Grad-CAM for all stages comes from one forward and one backward pass.
    """
    entry = zoo().get(model, tag)
    clf, net = entry.classifier, entry.weights.model
    v = view(image, entry)
    img, x, disp, box = v.image, v.x, v.display, v.box
    probs = clf.probabilities(x)[0]
    top = probs.topk(min(5, len(probs))).indices.tolist()
    labels = list(clf.labels)
    cls = _target(target, top, labels)
    stages = list(net.stage_names)
    if stage not in stages:
        raise gr.Error(f"{model} has no stage {stage!r}; choose one of {', '.join(stages)}")

    def lay(heat: np.ndarray, signed_: bool = False, bar: bool = True, on: Image.Image = disp) -> Image.Image:
        return overlay(on, heat, _rescale(box, disp, on), cmap, alpha, signed_, colorbar=bar)

    with entry.lock:  # captum's guided backprop hooks this shared model's ReLUs: one explanation at a time
        cams = layer_cams(net, x, cls, stages)
        second_map = attribute(net, x, cls, SECOND[second], stage)[0].cpu().numpy() if second in SECOND else None
    size = x.shape[-2:]
    heat = upsample_cam(cams[stage], size, relu=not signed)[0].cpu().numpy()
    maps = {s: upsample_cam(cam, size)[0].cpu().numpy() for s, cam in cams.items()}
    main = lay(heat, signed)
    info = [f"Target: **{labels[cls]}** (p = {float(probs[cls]):.3f}) · Grad-CAM on `{stage}` · colour bar: share of "
            f"the map's largest value ({float(np.abs(heat).max()):.3g})", result_note(entry)]
    if true_box and model == SHAPES_MODEL and true_box["digest"] == _digest(img):
        peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        x0, y0, x1, y1 = true_box["box"]
        hit = bool(x0 <= peak_x < x1 and y0 <= peak_y < y1)
        sx, sy = (box[2] - box[0]) / heat.shape[1], (box[3] - box[1]) / heat.shape[0]
        main = draw_box(main, (box[0] + x0 * sx, box[1] + y0 * sy, box[0] + x1 * sx - 1, box[1] + y1 * sy - 1),
                        hit, (box[0] + (peak_x + 0.5) * sx, box[1] + (peak_y + 0.5) * sy))
        info.append(f"Pointing game: the map's peak is **{'inside' if hit else 'outside'}** the true box "
                    f"(a **{'hit' if hit else 'miss'}**)")
    thumb = _display(disp, THUMB)
    all_stages = [(lay(maps[s], bar=False, on=thumb), s) for s in stages]
    second_img = lay(second_map) if second_map is not None else None
    return Explanation(main, heat, all_stages, second_img, "  \n".join(filter(None, info)))


def explain_event(image, model, tag, stage, target, cmap, alpha, signed, second, true_box):
    """The UI/API event: overlay, raw map (.npy), stages, second method, PNG download, info.

    The overlays go out as the PNG files written here (fast zlib), so Gradio does not encode them again.
    """
    ex = explain_image(image, model, tag, stage, target, cmap, alpha, signed, second, true_box)
    png, npy = tmp_file(".png", "gradcam_"), tmp_file(".npy", "gradcam_")
    ex.overlay.save(png, compress_level=PNG_LEVEL)
    np.save(npy, ex.heatmap.astype(np.float32))
    other = None
    if ex.second is not None:  # shown only, never downloaded: a photo-sized one goes as JPEG, 10x faster to encode
        photo = max(ex.second.size) > THUMB
        other = tmp_file(".jpg" if photo else ".png", "second_")
        ex.second.save(other, **({"quality": 90} if photo else {"compress_level": PNG_LEVEL}))
    return str(png), str(npy), ex.stages, other and str(other), str(png), ex.info


def on_model_change(model: str) -> tuple[dict, dict]:
    """Stages and target classes follow the model (no weights are loaded for that)."""
    stages, labels = zoo().describe(model)
    return gr.update(choices=stages, value=stages[-1]), gr.update(choices=RANKS + labels, value=RANKS[0])


def faithfulness_note(model: str) -> str:
    """The panel measures the shipped Shapes model only: the pointing game and deletion need true boxes."""
    if model == SHAPES_MODEL:
        return ""
    return (f"These numbers are for {SHAPES_MODEL}, not for {model}: measuring faithfulness needs each object's "
            "true box, which only the Shapes data has.")


def shapes_sample(seed: float) -> tuple[str, dict, str]:
    """A held-out Shapes image (its file) and its true box with the pixels' digest, for the pointing game."""
    seed = int(seed)
    s = ShapesDataset(1, seed=SAMPLE_SEED_BASE + seed).sample(0)
    path = tmp_file(".png", "shapes_")
    img = Image.fromarray((s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    img.save(path)
    note = f"Shapes sample #{seed}: a **{CLASSES[s.label]}**; its true box is drawn."
    return str(path), {"box": list(s.box), "digest": _digest(img)}, note


# The measures as the panel shows them, each under a name a reader knows (its meaning is in the panel's text)
SHOWN = {"pointing": "Pointing game", "mass_in_mask": "Mass in box", "deletion_auc": "Deletion AUC",
         "insertion_auc": "Insertion AUC", "rand_full": "Randomized net"}
ANY_STAGE = "any (uses no layer)"
CHANCE = "Random map (chance level)"


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """`measure_faithfulness`'s table for people: named columns, one row for each method that uses no layer (the
    measurement repeats it on every stage's row), and the random map's scores, the same for every method, as one
    last row (the chance level) instead of a column beside each measure."""
    if df.empty:
        return df
    rows = df.drop_duplicates("method", keep="first").copy()
    layered = df[df["uses_layer"].astype(bool)]
    rows = pd.concat([layered, rows[~rows["uses_layer"].astype(bool)].assign(stage=ANY_STAGE)])
    table = rows[["label", "stage", *SHOWN]].rename(columns={"label": "Method", "stage": "Stage", **SHOWN})
    chance = {SHOWN[c]: df[f"{c.removesuffix('_auc')}_random"].iloc[0] for c in SHOWN if c != "rand_full"}
    chance = {"Method": CHANCE, "Stage": "", **chance}
    return pd.concat([table, pd.DataFrame([chance])], ignore_index=True).round(3).fillna("")


def faithfulness_table() -> pd.DataFrame:
    """The numbers measured for the shipped model (see the README for the command), as the panel shows them."""
    return readable(pd.read_csv(FAITHFULNESS_CSV)) if FAITHFULNESS_CSV.is_file() else pd.DataFrame()


def recompute_faithfulness(n: float, progress: gr.Progress = gr.Progress()) -> tuple[pd.DataFrame, str]:
    """Re-measure on `n` fresh held-out Shapes images: the table, and how long it took against the estimate.

    A long job (minutes): it runs on its own copy of the small Shapes net, so Grad-CAM
    requests on the shared model never wait behind it; the estimate, made before it
    starts from timing each piece on a few images, shows in the progress bar.
    """
    n = int(n)
    if not 1 <= n <= MAX_RECOMPUTE:
        raise gr.Error(f"Recompute takes 1 to {MAX_RECOMPUTE} images here, not {n} ({MAX_RECOMPUTE} take minutes on a "
                       "CPU). For more, run `python -m resnet_lab faithfulness --n 500` (see the README).",
                       title="Number of images out of range")
    entry = zoo().get(SHAPES_MODEL)
    with entry.lock:  # only while copying: no explanation's hooks are on the model then
        net = copy.deepcopy(entry.weights.model).eval()
    data = ShapesDataset(n, seed=RECOMPUTE_SEED, size=net.pretrained_cfg["input_size"][-1])
    settings = {"methods": list(METHODS), "stages": list(net.stage_names), "n": n, "n_random": min(n, 50),
                "batch_size": 50}
    progress(0, desc=f"Timing a few images to estimate the run on {n} images...")
    estimate = estimate_seconds(net, data, **settings)
    start = time.perf_counter()

    def report(frac: float, desc: str = "") -> None:
        progress(frac, desc=f"{desc} · {time.perf_counter() - start:.0f} s of about {estimate:.0f} s")

    report(0, f"Estimated about {estimate:.0f} s for {n} images")
    df = measure_faithfulness(net, data, progress=report, **settings)
    took = time.perf_counter() - start
    return readable(df), (f"Recomputed on {n} fresh Shapes images in {took:.0f} s (estimated {estimate:.0f} s before "
                          "it started).")


def build_tab(model: gr.Dropdown, tag: gr.Dropdown, default_model: str) -> None:
    """The tab's components and events, inside the caller's `gr.Tab`."""
    stages, labels = zoo().describe(default_model)
    true_box = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            image = UploadImage(label="Image", sources=["upload", "webcam", "clipboard"], height=300,
                                elem_classes="pixelated")
            examples = example_sets(image, default_model)
            with gr.Row():
                seed = gr.Number(0, label="Shapes sample #", precision=0, minimum=0, scale=1)
                draw = gr.Button("Draw a Shapes sample (true box known)", scale=2)
            stage = gr.Dropdown(stages, value=stages[-1], label="Stage (output of its last block)",
                                allow_custom_value=True)
            target = gr.Dropdown(RANKS + labels, value=RANKS[0], filterable=True,
                                 label="Target class (type to search)", allow_custom_value=True)
            with gr.Row():
                cmap = gr.Dropdown(CMAPS, value="jet", label="Colormap")
                alpha = gr.Slider(0, 1, 0.5, step=0.05, label="Opacity")
            signed = gr.Checkbox(False, label="Signed map (before Grad-CAM's ReLU; blue = against the class)")
            second = gr.Dropdown(list(SECOND), value="Guided Grad-CAM",
                                 label="Second method (IG and occlusion take seconds on a CPU)")
            run = gr.Button("Explain", variant="primary")
        with gr.Column(scale=3):
            info = gr.Markdown()
            # The captions are text above the maps, and the maps carry no badge or toolbar: Gradio's drew over the
            # picture and the colour bar's top. Not "pixelated": the overlay comes enlarged already, and pixelated
            # shrinking to the column's width dropped the colour bar's glyph columns ("0" read "C").
            gr.Markdown("**Grad-CAM** (left) and the **second method** chosen below (right), each with its colour "
                        "bar; the overlay PNG and the raw map are downloads below.", elem_classes="figure-caption")
            with gr.Row():
                main = gr.Image(show_label=False, type="pil", format="png", interactive=False, buttons=[],
                                elem_id="gradcam-overlay")
                other = gr.Image(show_label=False, type="pil", format="png", interactive=False, buttons=[],
                                 elem_id="gradcam-second")
            # whole tiles (contain, not cropped), each captioned with its stage below it
            stages_gallery = gr.Gallery(label="Grad-CAM at every stage", columns=4, height="auto",
                                        object_fit="contain", elem_id="gradcam-stages")
            with gr.Row():
                png = gr.File(label="Overlay (PNG)")
                raw = gr.File(label="Raw Grad-CAM map (.npy, float32, network input resolution)")
    with gr.Accordion("How faithful are these maps? (measured on Shapes, where the truth is known)", open=False):
        gr.Markdown("**Pointing game**: share of images whose map peaks inside the object's box. **Mass in box**: "
                    "share of the map on the object. **Deletion / Insertion AUC** (Petsiuk et al. 2018): removing "
                    "(adding) pixels in the map's order, lower / higher is better. **Randomized net** (Adebayo et al. "
                    "2018): rank correlation with the map once the network is re-initialized; a faithful method "
                    "gets near 0. The last row is a random map: the chance level. Integrated Gradients and "
                    "Occlusion use no layer: one row each.")
        note = gr.Markdown(faithfulness_note(default_model))
        table = gr.Dataframe(faithfulness_table(), interactive=False, wrap=True, elem_id="faithfulness-table",
                             label="Shipped model, precomputed on held-out Shapes images")
        with gr.Row():
            n = gr.Slider(20, MAX_RECOMPUTE, 20, step=20, label="Images (the run says how long it will take)")
            recompute = gr.Button("Recompute")
        recompute_note = gr.Markdown()
    inputs = [image, model, tag, stage, target, cmap, alpha, signed, second, true_box]
    outputs = [main, raw, stages_gallery, other, png, info]
    explain = {"fn": on_gpu(user_errors(explain_event)), "inputs": inputs, "outputs": outputs, **QUICK}
    run.click(**explain, api_name="gradcam")
    # A new image clears the old maps (and the true box, which belongs to a drawn sample only); an example, once
    # it has filled the image, is explained at once.
    gr.on([image.upload, image.clear], clear_result, None, [*outputs, true_box], queue=False, api_visibility="private")
    for ex in examples:
        ex.picked.then(clear_result, None, [*outputs, true_box], queue=False,
                                 api_visibility="private").then(**explain, api_visibility="private")
    model.change(shown_examples, model, [ex.gallery for ex in examples], queue=False, api_visibility="private")
    draw.click(clear_result, None, [*outputs, true_box], queue=False, api_visibility="private").then(
        shapes_sample, seed, [image, true_box, info], api_visibility="private").then(
        lambda: gr.update(value=SHAPES_MODEL), None, model, api_visibility="private")
    model.change(on_model_change, model, [stage, target], api_visibility="private")
    # a lambda: tests/test_app.py lists the cheap UI updates by function name, and this is one
    model.change(lambda m: faithfulness_note(m), model, note, api_visibility="private", queue=False)
    recompute.click(on_gpu(user_errors(recompute_faithfulness)), n, [table, recompute_note], api_name="faithfulness",
                    **LONG)


def clear_result() -> tuple:
    """No maps shown, no true box: the input changed."""
    return None, None, None, None, None, "", None
