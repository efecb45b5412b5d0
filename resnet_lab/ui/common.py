"""What every tab shares: the upload component that does not decode, the model picker, errors for people."""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..data.images import ImageError, check_transformable, decode_image
from ..data.shapes import CLASSES
from ..models.weights import WeightsUnavailable
from ..paths import ASSETS
from ..runtime.resources import cpu_count
from ..serving.zoo import SHAPES_MODEL, Entry, ModelZoo

_ZOO: ModelZoo | None = None
log = logging.getLogger(__name__)
USER_ERRORS = (gr.Error, ImageError, WeightsUnavailable, ValueError)  # what a user can act on: no traceback


def _quick_limit() -> int:
    """Interactive jobs at once: 2 on a GPU (decode overlaps the forward), else one per two granted cores."""
    import torch

    return 2 if torch.cuda.is_available() else max(1, cpu_count() // 2)


# One concurrency model for the whole app. Gradio (6, queueing.py) keys an event's queue by its `concurrency_id`,
# else by its function's id, so without shared ids every event has its own slots. Events sharing an id share
# one queue, limited by the lowest limit any of them sets. These two groups cap what runs at once across all
# tabs and users together: QUICK for what people wait on (classify, Grad-CAM, the status line's model load),
# LONG for runs of seconds to minutes (faithfulness recompute, research sweeps, degradation, all depths), so a
# long run never blocks a Grad-CAM request. tests/test_concurrency.py checks both limits across tabs.
QUICK = {"concurrency_id": "quick", "concurrency_limit": _quick_limit()}
LONG = {"concurrency_id": "long", "concurrency_limit": 1}


def zoo() -> ModelZoo:
    """The app's one model cache, created on first use (never at import time)."""
    global _ZOO
    if _ZOO is None:
        _ZOO = ModelZoo()
    return _ZOO


class UploadImage(gr.Image):
    """`gr.Image` that hands the upload over undecoded (a path, or bytes for a data URL).

    Gradio's own preprocessing opens every upload with PIL before our function
    runs: a broken file then gets Gradio's generic error instead of ours, and its
    mode conversion turns 16-bit images almost white. Our `decode_image` does it right.
    """

    is_template = True  # the frontend renders it as a plain Image

    def preprocess(self, payload: Any) -> str | bytes | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path


def open_upload(src: Any, min_side: int | None = None, cfg: dict[str, Any] | None = None) -> Image.Image:
    """Our decoder behind a `gr.Error` that tells the user what is wrong with the file.

    `min_side` decodes no larger than needed (see `decode_image`); `cfg`, the model's
    data config, also refuses what its eval transform could not resize within bounds.
    """
    if src is None:
        raise gr.Error("Upload an image first (or pick an example).", title="No image")
    try:
        img = decode_image(src, min_side=min_side)
        if cfg is not None:
            check_transformable(img.size, cfg)
        return img
    except ImageError as e:
        raise gr.Error(str(e)[0].upper() + str(e)[1:] + ".", title="Cannot use this image") from e


def _for_the_user(e: Exception, fn: Callable) -> gr.Error:
    """An error the user can act on, as `gr.Error`, logged as ONE line: Gradio prints a full traceback for every
    error it is not told otherwise about, and a visitor's broken upload is no fault of the app's."""
    err = e if isinstance(e, gr.Error) else gr.Error(str(e))
    err.print_exception = False
    log.warning("user error in %s: %s", getattr(fn, "__name__", "?"), " ".join(str(err.message).split()))
    return err


def user_errors(fn: Callable) -> Callable:
    """Turn library errors a user can act on into `gr.Error`, logged in one line without a traceback; anything
    else is a bug and propagates with its traceback. A generator function (a streaming event) stays one, so
    Gradio still streams it."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as e:
                raise _for_the_user(e, fn) from e.__cause__ if isinstance(e, gr.Error) else e

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise _for_the_user(e, fn) from e.__cause__ if isinstance(e, gr.Error) else e

    return wrapper


def on_gpu(fn: Callable) -> Callable:
    """`spaces.GPU(fn)` on a ZeroGPU Space (app.py imported `spaces` before torch), `fn` itself elsewhere."""
    if os.environ.get("SPACES_ZERO_GPU") and "spaces" in sys.modules:
        return sys.modules["spaces"].GPU(fn)
    return fn


OUTPUTS = Path(tempfile.gettempdir()) / "resnet_lab_outputs"
KEEP_OUTPUTS_S = 3600  # downloads older than this are pruned, so a long-running server does not fill the disk


PRUNE_EVERY_S = 60  # a scan per request would stat every output of the last hour: thousands on a busy server
_last_prune = 0.0


def prune_outputs(now: float | None = None) -> None:
    """Delete outputs older than `KEEP_OUTPUTS_S`, so a long-running server does not fill its disk."""
    global _last_prune
    now = time.time() if now is None else now
    _last_prune = now
    for old in OUTPUTS.iterdir():
        try:
            if now - old.stat().st_mtime > KEEP_OUTPUTS_S:
                old.unlink() if old.is_file() else shutil.rmtree(old)
        except OSError:
            pass  # another worker got there first


def tmp_file(suffix: str, prefix: str = "resnet_lab_", name: str | None = None) -> Path:
    """A fresh output file (never a user-chosen path); old outputs are pruned on the way, once a minute at most."""
    OUTPUTS.mkdir(exist_ok=True)
    if time.time() - _last_prune > PRUNE_EVERY_S:
        prune_outputs()
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=OUTPUTS))
    return folder / (name or f"{prefix.rstrip('_')}{suffix}")


def model_picker(default: str) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Model and weight-tag dropdowns; the tags follow the model. The user's own checkpoints come after the
    built-in models (their one tag is "local")."""
    tags = zoo().tags_for(default)
    # min_width: on a phone each gets a row of its own, rather than both squeezed until the name runs under the arrow
    model = gr.Dropdown(zoo().models, value=default, label="Model", scale=2, min_width=240)
    tag = gr.Dropdown(tags, value=tags[0], label="Weights (timm tag, or hf-hub:USER/NAME)", scale=3, min_width=240,
                      allow_custom_value=True)  # the API may name any model's tags; the zoo validates
    return model, tag


def on_model_change(model: str) -> dict:
    tags = zoo().tags_for(model)
    return gr.update(choices=tags, value=tags[0])


def status_text(model: str, tag: str | None) -> str:
    """Load (or fetch from the cache) the model and say where its weights came from (app.py wires it behind
    `user_errors`, so a typed unknown tag gets the zoo's message)."""
    return status_line(zoo().get(model, tag))


def status_line(entry: Entry) -> str:
    """The status line, for a visitor: where the weights came from. Random weights are said in one plain
    sentence; the technical reason (for whoever runs the server) is folded away under "Details"."""
    extras = entry.classifier.runs()
    device = f"device: `{entry.classifier.device}`" + (f" ({', '.join(extras)})" if extras else "")
    if entry.weights.is_random:
        why = "downloaded (this server may be offline)" if "Hugging Face Hub" in entry.warning else "read"
        return (f"**{entry.model} has random weights here: its answers and heatmaps mean nothing, however "
                f"confident they look.** Its trained weights could not be {why}. Choose **{SHAPES_MODEL}**, "
                "which ships with the app, for answers that mean something.\n\n"
                f"<details><summary>Details</summary>\n\n{entry.warning} · {device}\n\n</details>")
    src = entry.weights.source
    where = {"hub": "Hugging Face Hub", "file": "local file"}.get(src.split(":")[0], "")
    return f"**{entry.model}** · weights: {where} `{src.split(':', 1)[-1]}` · {device}"


# Examples, captioned with what they show; each model is offered those it was trained for (see `shown_examples`)
PHOTO_EXAMPLES = {"chelsea.jpg": "cat", "coffee.jpg": "coffee", "astronaut.jpg": "astronaut", "rocket.jpg": "rocket"}
IMAGENET_CLASSES = 1000
SHAPE_CAPTIONS = {"square": "square (turned)", "diamond": "diamond (flat)"}  # both can look alike


class ExampleGallery:
    """Example images as captioned thumbnails (a `gr.Gallery`: Gradio's own examples show either the pictures or
    their captions, never both). `picked` is the event that fills the image; the tab chains its run on it."""

    def __init__(self, image: gr.Image, files: dict[str, str], label: str, visible: bool):
        paths = [str(ASSETS / f) for f in files]
        self.gallery = gr.Gallery([(p, caption) for p, caption in zip(paths, files.values())], label=label,
                                  columns=4, height="auto", allow_preview=False, object_fit="contain",
                                  interactive=False, visible=visible, elem_classes="examples")

        def pick_example(evt: gr.SelectData) -> str:
            return paths[evt.index]

        self.picked = self.gallery.select(pick_example, None, image, queue=False, api_visibility="private")


def example_sets(image: gr.Image, model: str) -> tuple[ExampleGallery, ExampleGallery]:
    """Photos and Shapes samples for `image`, captioned, only the set `model` was trained for visible."""
    show_photos, show_shapes = (u["visible"] for u in shown_examples(model))
    photos = ExampleGallery(image, PHOTO_EXAMPLES, "Example photos: click one to run it", show_photos)
    shapes = ExampleGallery(image, {f"shapes_{c}.png": SHAPE_CAPTIONS.get(c, c) for c in CLASSES},
                      "Example shapes: click one to run it", show_shapes)
    return photos, shapes


def shown_examples(model: str) -> tuple[dict, dict]:
    """Photos for ImageNet nets, Shapes samples for nets of the Shapes classes, both for a net of other classes
    (no weights are loaded: the classes come from the model's description)."""
    labels = zoo().describe(model)[1]
    shapes = list(labels) == list(CLASSES)
    return gr.update(visible=not shapes), gr.update(visible=shapes or len(labels) < IMAGENET_CLASSES)


def result_note(entry: Entry) -> str:
    """What a visitor must read beside a result: a random net's confidence means nothing, and a net of a few
    classes names one of them whatever the image shows (a photo given to the Shapes net comes back a shape)."""
    if entry.weights.is_random:
        return ("**This net has random weights: its confidence means nothing.** It was never trained (see the "
                "notice at the top).")
    labels = list(entry.classifier.labels)
    if len(labels) >= IMAGENET_CLASSES:
        return ""
    what = "shapes" if entry.model == SHAPES_MODEL else "classes"
    names = f" ({', '.join(labels)})" if len(labels) <= 10 else ""
    advice = ": for photos, choose a ResNet trained on ImageNet" if entry.model == SHAPES_MODEL else ""
    return (f"This net only knows {len(labels)} {what}{names}; whatever the image shows, its answer is one of "
            f"them{advice}.")
