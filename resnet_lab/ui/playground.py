"""The Playground tab: a plain net and its ResNet twin train side by side, live (`research.playground`).

Train streams a few updates a second: loss and accuracy curves (drawn in the browser, `gr.LinePlot`, so the server
renders nothing), each net's layers x steps map of gradient norms (a colormapped array, no matplotlib figure per
update) and per-stage update ratios. Stop ends the run after the step in flight and keeps what was trained (and so does
`playground.TIME_LIMIT_S` of wall clock); a Stop while the run waits for its turn means it never starts; Train both
is disabled while the run is queued or in flight. The run's curves and both checkpoints then download. The run is
sized by the one cost model before it starts and refused (with what fits) when it would take longer than
`playground.TIME_LIMIT_S` or more memory than the server can spare; it runs in the app's one long-job group, on the
app's device. Nothing of one user's run is visible to
another: the run is found by a key held in that user's session only, and its trained nets are offered in that
session's pickers only (`session_nets`). Instead of Shapes it trains on an uploaded zip of `<class>/<image>`
folders (`training.zipdata`: checked from its headers on upload, read in memory, refused whole when unsafe, bad
images skipped and listed; reading it is in the estimate and Stop ends it).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from ..checkpoints import save_checkpoint
from ..research import playground as pg
from ..research.degradation.compute import VAL_SEED_OFFSET
from ..resnet import REGISTRY
from ..shapes import CLASSES
from ..training.run_data import shapes_data_config
from ..training.zipdata import ReadStopped, ZipImages, ZipScan, load_zip, scan_zip
from . import session_nets
from .common import LONG, tmp_file, user_errors, zoo
from .research._common import duration, memory_budget, refuse_if_too_big

LONG_FREE = {"queue": False}  # an estimate never waits behind a long job
# Seconds between live updates. Each redraws three Vega charts and two images in the browser: at 0.4 s a loaded
# 2-core CI machine's renderer fell behind for over 30 s (Stop could not be clicked); once a second stays live.
UPDATE_S = 1.0
LOSS_CAP = 1.5  # a loss curve is drawn up to this times the largest training loss seen (see `curves`)
MAP_HEIGHT = 240  # pixels of a gradient map (layers stretched to it)
_runs: dict[str, pg.LiveWatch] = {}  # session key -> its running watch (only while it runs)
# session key -> a Stop per run clicked and waiting for its turn, oldest first (a double click that reached the
# server queues two: one Stop must end both)
_queued: dict[str, list[threading.Event]] = {}
MAX_QUEUED = 256  # sessions with queued runs remembered (a session closed while queued never collects its entry)
_runs_lock = threading.Lock()
# Held by a run's training thread from before it starts until it has ended. Gradio frees the long-job slot of a
# closed page before it closes the stream, and closes it on its event loop (where no join may block): the closed
# run is stopped there and ends after its step in flight, and the next run waits here for that, in its slot.
_training = threading.Lock()
JOIN_S = 60.0  # the longest a run waits for a closed run's last step and validation (depth 110: ~10 s)


def config(depth: float, batchnorm: bool, init: str, optimizer: str, lr: float, batch_size: float, steps: float,
           seed: float, image_size: float = 32) -> pg.PlaygroundConfig:
    """The run the controls describe, on the app's device (ValueError, shown to the user, for what cannot run)."""
    return pg.PlaygroundConfig(depth=int(depth), batchnorm=bool(batchnorm), init=init, optimizer=optimizer,
                               lr=float(lr), batch_size=int(batch_size), steps=int(steps), seed=int(seed),
                               image_size=int(image_size), device=str(zoo().device))


def sized(cfg: pg.PlaygroundConfig, upload: str | None) -> tuple[pg.PlaygroundConfig, ZipScan | None, float, str]:
    """The run `cfg` becomes on the uploaded zip, which is checked from its headers (`DatasetError`, shown to the
    user, for one that cannot be used): the run, the zip's scan, the seconds reading it takes, the batch's note."""
    if not upload:
        return cfg, None, 0.0, ""
    scan = scan_zip(upload)
    cfg, note = pg.on_images(cfg, scan.n_train, scan.n_val)
    return cfg, scan, pg.read_seconds(scan), note


def estimate_text(*controls: Any, upload: str | None = None) -> str:
    """How long these settings take on this server now (the cost model, reading the zip included), or why they
    cannot run; with what the uploaded zip holds (its check on upload)."""
    try:
        cfg, scan, read_s, note = sized(config(*controls), upload)
    except ValueError as e:
        return f"⚠️ {e}"
    seconds = cfg.cost().seconds + read_s
    plain, residual = (pg.LiveWatch.label(a) for a in cfg.archs)
    text = (f"{plain} and {residual}, {cfg.steps} steps of {cfg.batch_size} images of {cfg.image_size} px: about "
            f"**{duration(seconds)}** on this server (`{cfg.device}`)"
            + (f", reading your images {duration(read_s)} of it." if scan else "."))
    if seconds > pg.TIME_LIMIT_S:
        fits = pg.what_fits(cfg, pg.TIME_LIMIT_S - read_s)
        text += (f" Longer than a live run may take ({duration(pg.TIME_LIMIT_S)}): "
                 + (f"{fits.steps} steps fit." if fits else "choose a smaller depth or batch."))
    if scan is None:
        return text
    classes = ", ".join(f"{name} {n}" for name, n in list(scan.counts.items())[:8])
    return (f"Your zip: {len(scan.counts)} classes (images: {classes}{' …' if len(scan.counts) > 8 else ''}), "
            f"{scan.n_train} to train on, {scan.n_val} held out{_skips(scan.skipped)}." + (f" {note}" if note else "")
            + f"  \n{text}")


def _estimate(*inputs: Any) -> str:
    """`estimate_text` of the controls and the zip (the last input): on page load and every change, an upload's."""
    return estimate_text(*inputs[:-1], upload=inputs[-1])


def refuse(cfg: pg.PlaygroundConfig, read_s: float = 0.0) -> None:
    """A `gr.Error` for a run that would not fit in time (reading its zip, `read_s`, included) or memory, saying
    what fits."""
    cost = cfg.cost()
    seconds = cost.seconds + read_s
    if seconds > pg.TIME_LIMIT_S:
        fits = pg.what_fits(cfg, pg.TIME_LIMIT_S - read_s)
        hint = f"{fits.steps} steps with these settings fit." if fits else "Choose a smaller depth or batch size."
        raise gr.Error(f"These settings take about {duration(seconds)} here"
                       + (f" (reading your images {duration(read_s)})" if read_s else "")
                       + f"; a live run may take {duration(pg.TIME_LIMIT_S)}. {hint}", title="Too long for a live run")
    refuse_if_too_big(cost.bytes, memory_budget(cfg.device), "This run", "Choose a smaller depth or batch size.")


def curves(snap: pg.Snapshot, metric: str) -> pd.DataFrame:
    """Long-form rows for a `gr.LinePlot`: each net's training `metric` (a trailing mean over ~1/25 of the run, the
    per-step value is one batch's) and its held-out value, one series each. A loss is capped at `LOSS_CAP` times
    the largest training value so far: a held-out loss of thousands (BatchNorm's running statistics before they
    settle) would flatten every other curve to the floor; the cap is said in the plot's label."""
    df = snap.curves
    out = []
    for net, rows in df[df.metric == f"train_{metric}"].groupby("net", sort=False):
        window = max(1, snap.steps // 25)
        out.append(pd.DataFrame({"step": rows.step, "value": rows.value.rolling(window, min_periods=1).mean(),
                                 "series": f"{net} train"}))
    for net, rows in df[df.metric == f"val_{metric}"].groupby("net", sort=False):
        out.append(pd.DataFrame({"step": rows.step, "value": rows.value, "series": f"{net} held-out"}))
    if not out:
        return pd.DataFrame({"step": pd.Series(dtype=int), "value": pd.Series(dtype=float),
                             "series": pd.Series(dtype=object)})  # typed: `[]` would make the names numbers
    frame = pd.concat(out, ignore_index=True)
    if metric == "loss":
        train = df[df.metric == "train_loss"].value
        cap = LOSS_CAP * float(train.max()) if len(train) else math.inf
        frame["value"] = frame.value.clip(upper=cap)
    return frame


def ratios(snap: pg.Snapshot) -> pd.DataFrame:
    df = snap.ratios.dropna()
    return pd.DataFrame({"step": df.step, "value": np.log10(df.ratio.clip(lower=1e-12)),
                         "series": df.net + " " + df.stage})


def gradient_maps(snap: pg.Snapshot) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Both nets' maps as RGB images on one shared color scale (viridis: dark small, bright large), and the scale."""
    from matplotlib import colormaps

    maps = [m for net, m in sorted(snap.grad_maps.items(), key=lambda kv: not kv[0].startswith("plain"))]
    finite = np.concatenate([m[np.isfinite(m)] for m in maps if m.size]) if maps else np.array([])
    if not finite.size:
        return None, None, ""
    lo, hi = float(finite.min()), float(finite.max())
    images = []
    for m in maps:
        width = m.shape[1]
        norm = np.clip((m - lo) / max(hi - lo, 1e-9), 0, 1)
        rgb = (colormaps["viridis"](np.nan_to_num(norm, nan=0.0))[..., :3] * 255).astype(np.uint8)
        rows = np.linspace(0, m.shape[0] - 1, MAP_HEIGHT).round().astype(int)  # layers stretched to the height
        cols = np.repeat(np.arange(width), max(1, 400 // max(width, 1)))
        images.append(rgb[rows][:, cols])
    images += [None] * (2 - len(images))
    return images[0], images[1], f"log10 ‖∂L/∂W‖ per conv (rows: first layer at the top), from {lo:.1f} to {hi:.1f}"


def status(snap: pg.Snapshot) -> str:
    if snap.error:
        return f"⚠️ The run failed: {snap.error}"
    last = snap.curves[snap.curves.metric == "val_acc"].groupby("net", sort=False).value.last()
    held = ", ".join(f"{net} {acc:.1%}" for net, acc in last.items())
    state = ("stopped" if snap.done else "stopping after this step") if snap.stopped else (
        "done" if snap.done else "training")
    limit = (f" · it reached the live-run limit of {duration(pg.TIME_LIMIT_S)}; what was trained is kept"
             if snap.timed_out else "")
    return (f"**{state}**: step {snap.step} of {snap.steps} in {duration(snap.seconds)}{limit}"
            + (f" · held-out accuracy: {held}" if held else ""))


def views(snap: pg.Snapshot, files: list[str] | None = None, note: str = "") -> tuple:
    plain_map, res_map, scale = gradient_maps(snap)
    return (status(snap) + (f"  \n{note}" if note else ""), curves(snap, "loss"), curves(snap, "acc"), plain_map,
            res_map, scale, ratios(snap), files)


class Legends:
    """Gradio's LinePlot draws its chart from the first data it gets and then only swaps the data: the columns'
    types and the colour scale's series, so the legend's entries, stay those of that first frame. An empty first
    frame (whose text column pandas types as numbers) gave lines without colour and a legend from -Infinity to
    Infinity. So a plot gets nothing until all its series have arrived, then a frame that names them
    (`colors_in_legend`: a new setting makes the plot draw its chart anew, also over an earlier run's), then frames
    as they come."""

    PLOTS = (1, 2, 6)  # the LinePlots among `views`'s outputs: loss, accuracy, update ratios

    def __init__(self, cfg: pg.PlaygroundConfig) -> None:
        nets = [pg.LiveWatch.label(a) for a in cfg.archs]  # plain first
        curves = [f"{net} {kind}" for kind in ("train", "held-out") for net in nets]
        stages = [f"{net} {stage}" for net in nets for stage in REGISTRY[cfg.archs[0]].stage_names]
        self._waiting = {1: curves, 2: curves, 6: stages}  # the plots not drawn yet, and their series
        self._cleared = False

    def __call__(self, outputs: tuple, final: bool = False) -> tuple:
        """`outputs` (`views`'s) as this plot is to get them; at the `final` update a plot still waiting is drawn
        with the series it has (a series that never came, e.g. a ratio that was NaN, is then left out)."""
        out = list(outputs)
        for i, series in list(self._waiting.items()):
            present = list(dict.fromkeys(out[i].series))
            if set(series) <= set(present) or (final and present):
                out[i] = gr.update(value=out[i], colors_in_legend=[s for s in series if s in present])
                del self._waiting[i]
            else:  # an earlier run's chart is cleared first: the next frame then draws a new one
                out[i] = gr.skip() if self._cleared else None
        self._cleared = True
        return tuple(out)


def save(watch: pg.LiveWatch, cfg: pg.PlaygroundConfig, images: ZipImages | None = None,
         zip_name: str = "") -> tuple[list[str], str]:
    """The run's curves (CSV) and both trained nets (`.safetensors` + JSON, loadable by `load_checkpoint`), the
    nets registered as this session's own (`session_nets`); the files and the run's token."""
    snap = watch.snapshot()
    csv = tmp_file(".csv", name="playground_curves.csv")
    snap.curves.to_csv(csv, index=False)
    files, token = [str(csv)], session_nets.new_token()
    if images is None:
        data = {"name": "shapes", "clutter": False, "train_seed": cfg.seed,
                "test_seed": cfg.seed + VAL_SEED_OFFSET, "n_train": cfg.steps * cfg.batch_size}
        meta = {"classes": list(CLASSES), **shapes_data_config(cfg.image_size)}
    else:
        data = images.record(zip_name)
        meta = {"classes": images.classes, **shapes_data_config(cfg.image_size), "mean": list(images.mean),
                "std": list(images.std)}
    for arch in cfg.archs:
        net = watch.nets.get(pg.LiveWatch.label(arch))
        if net is None:
            continue
        meta.update({"arch": arch, "num_classes": len(meta["classes"]), "norm": "bn" if cfg.batchnorm else "none",
                     "data": data, "playground": asdict(cfg), "steps_trained": snap.step})
        path = save_checkpoint(net.cpu().eval(), csv.parent / session_nets.stem(token, arch), meta)
        zoo().add_private(path)
        files += [str(path), str(path.with_suffix(".json"))]
    return files, token


STOPPED_QUEUED = "**stopped** before it started: Stop was pressed while the run waited for its turn; nothing trained."


def queue_run(key: str) -> dict:
    """On the click, before the run waits in the long-job queue: its Stop is remembered from now on (`stop`), and
    Train both is disabled until the run has ended (`ready`), so a second click is not silently dropped."""
    with _runs_lock:
        _queued.setdefault(key, []).append(threading.Event())
        while len(_queued) > MAX_QUEUED:
            _queued.pop(next(iter(_queued)))
    return gr.update(interactive=False)


def ready() -> dict:
    """Train both enabled again, after the run has ended whichever way (done, stopped, refused, failed)."""
    return gr.update(interactive=True)


def train(*args: Any) -> Iterator[tuple]:
    """Start the run and stream its views until it ends (Stop, the last step, the time limit, or an error); at the
    end, the session's list of runs with this one added (its nets are then offered in this session's pickers)."""
    *controls, upload, key, runs = args
    try:
        cfg = config(*controls)
    except ValueError:
        with _runs_lock:  # a queued click that cannot run leaves no Stop behind for a later run
            _dequeue(key)
        raise
    watch = pg.LiveWatch(cfg.steps, cfg.ratio_every)
    with _runs_lock:  # registered first: a Stop while the run is sized or the zip read ends it after its first step
        queued = _dequeue(key)
        if queued is None or not queued.is_set():
            _runs[key] = watch
    if queued is not None and queued.is_set():  # stopped while it waited in the queue: it never starts
        yield (STOPPED_QUEUED, *[gr.skip()] * 8)
        return
    try:
        asked = cfg
        cfg, scan, read_s, _ = sized(asked, upload)  # checked again: what the page said on upload is not trusted
        refuse(cfg, read_s)
        images, note = None, ""
        if upload:
            yield (f"Reading your {len(scan.images)} images (about {duration(read_s)})…", *[gr.skip()] * 8)
            try:
                images = load_zip(upload, size=cfg.image_size, seed=cfg.seed, stop=lambda: watch.stopped)
            except ReadStopped as e:
                yield (f"**stopped** while reading your zip ({e}): nothing was trained.", *[gr.skip()] * 8)
                return
            cfg, batch = pg.on_images(asked, len(images.y_train), len(images.y_val))  # as decoded
            note = skipped_note(images) + (f" {batch}" if batch else "")
        if not _training.acquire(timeout=JOIN_S):
            raise gr.Error("The previous Playground run is still ending its last step; try again in a minute.",
                           title="The Playground is busy")
        thread = threading.Thread(target=_run, args=(cfg, watch, images), daemon=True, name="playground")
        try:
            thread.start()
        except BaseException:
            _training.release()
            raise
        legends = Legends(cfg)
        while thread.is_alive():
            thread.join(UPDATE_S)
            yield (*legends(views(watch.snapshot(), note=note)), gr.skip())
        if watch.error:
            raise gr.Error(watch.error, title="The Playground run failed")
        files, token = save(watch, cfg, images, Path(upload).name if upload else "")
        yield (*legends(views(watch.snapshot(), files, note), final=True), [*(runs or []), token])
    finally:
        # A closed tab (the generator closed, on Gradio's event loop) stops its run after the step in flight;
        # joining here would block that loop, so the next run waits for it instead (`_training`).
        watch.stop()
        with _runs_lock:
            _runs.pop(key, None)


def _dequeue(key: str) -> threading.Event | None:
    """The Stop of this session's oldest queued click, forgotten (call with `_runs_lock` held)."""
    waiting = _queued.get(key)
    if not waiting:
        return None
    queued = waiting.pop(0)
    if not waiting:
        del _queued[key]
    return queued


def skipped_note(images: ZipImages) -> str:
    """What the uploaded zip gave: images per split and class, and the files skipped, each with its reason."""
    return (f"Your images: {len(images.y_train)} to train on, {len(images.y_val)} held out, "
            f"{len(images.classes)} classes ({', '.join(images.classes[:8])}{' …' if len(images.classes) > 8 else ''})"
            f"{_skips(images.skipped)}.")


def _skips(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"`{name}`: {why}" for name, why in skipped[:5])
    return f". Skipped {len(skipped)} file(s): {shown}{' …' if len(skipped) > 5 else ''}"


def _run(cfg: pg.PlaygroundConfig, watch: pg.LiveWatch, images: ZipImages | None = None) -> None:
    """The training thread: `_training` (taken by `train`) is released when it has really ended."""
    try:
        pg.run_playground(cfg, watch, images)
    except Exception:  # kept in watch.error, shown by the stream
        pass
    finally:
        _training.release()


def stop(key: str) -> None:
    """Stop this session's run (nobody else's) after the step in flight, or before it starts when it still waits
    for its turn. It writes nothing itself: the run's stream owns the status line and says "stopping", then
    "stopped" (a second writer raced the stream: on a busy server its reply came after the stream's last update and
    left "Stopping…" showing for good)."""
    with _runs_lock:
        watch = _runs.get(key)
        for queued in _queued.get(key, ()):  # every click of this page still waiting: a click after this is new
            queued.set()
    if watch is not None:
        watch.stop()


def build_tab() -> gr.State:
    """The Playground's components and events, inside the caller's `gr.Tab`; the session's finished runs (a
    `gr.State` of tokens, see `session_nets`), for the app to offer their nets in the other tabs."""
    gr.Markdown(
        "### Train a plain net and its ResNet twin, side by side\n"
        "Both start from the same weights (the ResNet only adds the shortcuts), see the same Shapes batches in the "
        "same order, and follow the same schedule. Watch the deeper plain net fall behind (He et al. 2015's "
        "degradation), and how the gradients reach its first layers, or do not.")
    key = gr.State(lambda: uuid.uuid4().hex)  # this session's run, and only this session's
    defaults = pg.PlaygroundConfig()
    with gr.Row():
        depth = gr.Dropdown(list(pg.DEPTHS), value=defaults.depth, label="Depth (6n+2 layers)",
                            elem_id="playground-depth")
        batchnorm = gr.Checkbox(defaults.batchnorm, label="BatchNorm")
        init = gr.Radio(list(pg.INITS), value=defaults.init, label="Init")
        optimizer = gr.Radio(list(pg.OPTIMIZERS), value=defaults.optimizer, label="Optimizer")
    with gr.Row():
        lr = gr.Number(defaults.lr, label="Learning rate", minimum=1e-5, maximum=10)
        batch_size = gr.Slider(2, 128, value=defaults.batch_size, step=2, label="Batch size")
        steps = gr.Slider(20, 2000, value=defaults.steps, step=10, label="Steps", elem_id="playground-steps")
        seed = gr.Number(defaults.seed, label="Seed", precision=0)
        image_size = gr.Radio(list(pg.IMAGE_SIZES), value=defaults.image_size, label="Image size (px)")
    controls = [depth, batchnorm, init, optimizer, lr, batch_size, steps, seed, image_size]
    upload = gr.File(label="Or train on your own images: a .zip of <class>/<image> folders (empty: Shapes)",
                     file_types=[".zip"], type="filepath", height=90, elem_id="playground-zip")
    runs = gr.State([])  # this session's finished runs (tokens), newest last
    estimate = gr.Markdown("Estimating how long these settings take here… (change a setting to re-estimate)",
                           elem_id="playground-estimate")
    with gr.Row():
        start = gr.Button("Train both", variant="primary", elem_id="playground-train")
        halt = gr.Button("Stop", elem_id="playground-stop")
    state = gr.Markdown(elem_id="playground-status")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="value", color="series", color_title="net",
                           label=f"Loss (train: trailing mean; held-out at checkpoints; drawn up to {LOSS_CAP:g}x the "
                                 "largest training loss)", elem_id="playground-loss")
        acc = gr.LinePlot(x="step", y="value", color="series", color_title="net", label="Accuracy",
                          elem_id="playground-acc", y_lim=[0, 1])
    scale = gr.Markdown(elem_id="playground-scale")
    with gr.Row():
        plain_map = gr.Image(label="Plain net: gradient norm, layers x steps", type="numpy", interactive=False,
                             elem_id="playground-map-plain", elem_classes="pixelated")
        res_map = gr.Image(label="ResNet: gradient norm, layers x steps", type="numpy", interactive=False,
                           elem_id="playground-map-resnet", elem_classes="pixelated")
    update = gr.LinePlot(x="step", y="value", color="series", color_title="net and stage",
                         label="log10 update ratio ‖ΔW‖/‖W‖ per stage",
                         elem_id="playground-ratios")
    files = gr.File(label="The run's curves and both trained nets", file_count="multiple", interactive=False,
                    elem_id="playground-files")
    outputs = [state, loss, acc, plain_map, res_map, scale, update, files, runs]
    # On page load and on every change, not while the page is built: the first estimate times this server (the
    # cost model's probe), which must not delay serving the app.
    # The zip too: an upload is checked from its headers at once (classes, counts, or why it is refused).
    gr.on(None, _estimate, [*controls, upload], estimate, api_visibility="private", **LONG_FREE)
    start.click(queue_run, key, start, queue=False, api_visibility="private").then(
        user_errors(train), [*controls, upload, key, runs], outputs, api_name="playground", **LONG).then(
        ready, None, start, queue=False, api_visibility="private")
    halt.click(stop, key, None, queue=False, api_visibility="private")
    return runs

