"""What every tab shares: the upload component that does not decode, the model picker, errors for people."""

from __future__ import annotations

import base64
import functools
import inspect
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

from ..data import ImageError, check_transformable, decode_image
from ..resources import cpu_count
from ..serving.zoo import ModelZoo
from ..weights import WeightsUnavailable

_ZOO: ModelZoo | None = None


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


def set_zoo(z: ModelZoo) -> None:
    global _ZOO
    _ZOO = z


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


def user_errors(fn: Callable) -> Callable:
    """Turn library errors a user can act on into `gr.Error`; anything else is a bug and propagates. A generator
    function (a streaming event) stays one, so Gradio still streams it."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except (ImageError, WeightsUnavailable, ValueError) as e:
                raise gr.Error(str(e)) from e

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, WeightsUnavailable, ValueError) as e:
            raise gr.Error(str(e)) from e

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
    model = gr.Dropdown(zoo().models, value=default, label="Model", scale=2)
    tag = gr.Dropdown(tags, value=tags[0], label="Weights (timm tag, or hf-hub:USER/NAME)", scale=3,
                      allow_custom_value=True)  # the API may name any model's tags; the zoo validates
    return model, tag


def on_model_change(model: str) -> dict:
    tags = zoo().tags_for(model)
    return gr.update(choices=tags, value=tags[0])


def status_text(model: str, tag: str | None) -> str:
    """Load (or fetch from the cache) the model and say where its weights came from (app.py wires it behind
    `user_errors`, so a typed unknown tag gets the zoo's message)."""
    return zoo().get(model, tag).status
