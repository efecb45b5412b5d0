"""The Playground tab: a plain net and its ResNet twin train side by side, live (`research.playground`).

Train streams an update a second: loss and accuracy curves, each net's layers x steps map of gradient norms and
per-stage update ratios (Vega-Lite specs drawn in the browser, `playground_plots`, so the server renders nothing).
When the run ends, and after Stop, a verdict says what it showed against chance (`research.playground_verdict`),
the referee's detail one click away. Stop ends the run after the step in flight and keeps what was trained (and so
does `TIME_LIMIT_S` of wall clock: the page's time policy, not the library's); a Stop while the run waits for its
turn means it never starts; Train both is disabled while the run is queued or in flight. The run's curves and both
checkpoints then download. The run is sized by the one cost model before it starts and refused (with what fits)
when it would take longer than `TIME_LIMIT_S` or more memory than the server can spare; it runs in the app's one
long-job group, on the app's device. Nothing of one user's run is visible to another: the run is found by a key
held in that user's session only, and its trained nets are offered in that session's pickers only (`session_nets`).
Instead of Shapes it trains on an uploaded zip of `<class>/<image>` folders (`training.zipdata`: checked from its
headers on upload, read in memory, refused whole when unsafe, bad images skipped and listed; reading it is in the
estimate and Stop ends it). The controls are built from `PlaygroundConfig`'s declaration (`settings.control`:
label, choices or range, default), in its order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.shapes import CLASSES
from ..data.zipdata import ReadStopped, ZipImages, ZipScan, load_zip, scan_zip
from ..research import playground as pg
from ..research.playground_verdict import Verdict, from_curves
from ..settings import Control, controls
from . import playground_files
from . import playground_plots as plots
from .common import LONG, user_errors, zoo
from .research._common import duration, memory_budget, refuse_if_too_big

LONG_FREE = {"queue": False}  # an estimate never waits behind a long job
TIME_LIMIT_S = 600.0  # the longest estimated run a click may start (it holds the app's one long-job slot), and the
# longest a run may go on, whatever the estimate said (it then ends after the step in flight, keeping what was
# trained); the estimate of the defaults ranged 92-250 s on a shared 2-core machine for runs of 118-126 s
CONTROLS = controls(pg.PlaygroundConfig)  # (name, default, control), in the order `config` takes their values
ELEM_IDS = {"depth": "playground-depth", "steps": "playground-steps"}  # what the browser tests find them by
# Seconds between live updates. Each redraws five Vega charts in the browser: at 0.4 s a loaded 2-core CI
# machine's renderer fell behind for over 30 s (Stop could not be clicked); once a second stays live.
UPDATE_S = 1.0
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


def config(*values: Any) -> pg.PlaygroundConfig:
    """The run the controls' values describe (in `CONTROLS` order, each as its default's type: a slider gives
    floats), on the app's device (ValueError, shown to the user, for what cannot run)."""
    chosen = {name: type(default)(v) for (name, default, _), v in zip(CONTROLS, values)}
    return pg.PlaygroundConfig(**chosen, device=str(zoo().device))


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
    plain, residual = (pg.net_label(a) for a in cfg.archs)
    data = "your zip's images" if scan else "Shapes"
    text = (f"{plain} and {residual} on {data}, {cfg.steps} steps of {cfg.batch_size} images of {cfg.image_size} px: "
            "about "
            f"**{duration(seconds)}** on this server (`{cfg.device}`)"
            + (f", reading your images {duration(read_s)} of it." if scan else "."))
    if seconds > TIME_LIMIT_S:
        fits = pg.what_fits(cfg, TIME_LIMIT_S - read_s)
        text += (f" Longer than a live run may take ({duration(TIME_LIMIT_S)}): "
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
    if seconds > TIME_LIMIT_S:
        fits = pg.what_fits(cfg, TIME_LIMIT_S - read_s)
        hint = f"{fits.steps} steps with these settings fit." if fits else "Choose a smaller depth or batch size."
        raise gr.Error(f"These settings take about {duration(seconds)} here"
                       + (f" (reading your images {duration(read_s)})" if read_s else "")
                       + f"; a live run may take {duration(TIME_LIMIT_S)}. {hint}", title="Too long for a live run")
    refuse_if_too_big(cost.bytes, memory_budget(cfg.device), "This run", "Choose a smaller depth or batch size.")


def status(snap: pg.Snapshot) -> str:
    if snap.error:
        return f"⚠️ The run failed: {snap.error}"
    last = snap.curves[snap.curves.metric == "val_acc"].groupby("net", sort=False).value.last()
    held = ", ".join(f"{net} {acc:.1%}" for net, acc in last.items())
    state = ("stopped" if snap.done else "stopping after this step") if snap.stopped else (
        "done" if snap.done else "training")
    limit = (f" · it reached the live-run limit of {duration(TIME_LIMIT_S)}; what was trained is kept"
             if snap.timed_out else "")
    return (f"**{state}**: step {snap.step} of {snap.steps} in {duration(snap.seconds)}{limit}"
            + (f" · held-out accuracy: {held}" if held else ""))


def views(snap: pg.Snapshot, files: list[str] | None = None, note: str = "", classes: int = len(CLASSES),
          held_out: int = 0) -> tuple:
    """What the page shows of `snap`: the status line, the loss and accuracy figures (chance: 1/`classes`), both
    gradient maps, the verdict (at the end only: `held_out`, the run's held-out images, is then given), the update
    ratios and the run's files."""
    plain_map, res_map = plots.map_plots(snap)
    return (status(snap) + (f"  \n{note}" if note else ""), plots.curve_plot(snap, "loss", classes),
            plots.curve_plot(snap, "acc", classes), plain_map, res_map, verdict(snap, classes, held_out),
            plots.ratio_plot(snap), files)


def _found(snap: pg.Snapshot, classes: int, held_out: int) -> Verdict | None:
    """The run's verdict once it has ended (done, stopped or out of time) with both nets checked, else None."""
    if not snap.done or snap.error or held_out < 1:
        return None
    return from_curves(snap.curves, classes, held_out, snap.step, snap.steps)


def verdict(snap: pg.Snapshot, classes: int, held_out: int) -> str:
    """The verdict's sentences, "" before there is one."""
    found = _found(snap, classes, held_out)
    return f"**What this run showed.** {found.headline}" if found else ""


def referee(snap: pg.Snapshot, classes: int, held_out: int) -> tuple[dict, str]:
    """The referee's detail behind the verdict: its accordion shown (closed) with the detail, hidden before."""
    found = _found(snap, classes, held_out)
    return gr.update(visible=found is not None, open=False), found.detail if found else ""


STOPPED_QUEUED = "**stopped** before it started: Stop was pressed while the run waited for its turn; nothing trained."


STARTING = "**starting**… (while another long job holds the server, the run waits here for its turn)"


def queue_run(key: str) -> tuple:
    """On the click, before the run waits in the long-job queue: its Stop is remembered from now on (`stop`), Train
    both is disabled until the run has ended (`ready`), so a second click is not silently dropped, and an earlier
    run's status, figures and verdict are cleared (a refused run left them showing, as if they were its own)."""
    with _runs_lock:
        _queued.setdefault(key, []).append(threading.Event())
        while len(_queued) > MAX_QUEUED:
            _queued.pop(next(iter(_queued)))
    return gr.update(interactive=False), *cleared(STARTING)


def ready() -> dict:
    """Train both enabled again, after the run has ended whichever way (done, stopped, refused, failed)."""
    return gr.update(interactive=True)


def train(*args: Any) -> Iterator[tuple]:
    """Start the run and stream its views until it ends (Stop, the last step, the time limit, or an error); at the
    end, the session's list of runs with this one added (its nets are then offered in this session's pickers)."""
    *controls, upload, key, runs = args
    try:
        cfg = config(*controls)
    except ValueError as e:
        with _runs_lock:  # a queued click that cannot run leaves no Stop behind for a later run
            _dequeue(key)
        yield refused(e)
        raise
    watch = pg.LiveWatch(cfg.steps, cfg.ratio_every, time_limit_s=TIME_LIMIT_S)
    with _runs_lock:  # registered first: a Stop while the run is sized or the zip read ends it after its first step
        queued = _dequeue(key)
        if queued is None or not queued.is_set():
            _runs[key] = watch
    if queued is not None and queued.is_set():  # stopped while it waited in the queue: it never starts
        yield said(STOPPED_QUEUED)
        return
    try:
        asked = cfg
        try:
            cfg, scan, read_s, _ = sized(asked, upload)  # checked again: what the page said on upload is not trusted
            refuse(cfg, read_s)
        except (ValueError, gr.Error) as e:
            yield refused(e)
            raise
        images, note = None, ""
        if upload:
            yield said(f"Reading your {len(scan.images)} images (about {duration(read_s)})…")
            try:
                images = load_zip(upload, size=cfg.image_size, seed=cfg.seed, stop=lambda: watch.stopped)
            except ReadStopped as e:
                yield said(f"**stopped** while reading your zip ({e}): nothing was trained.")
                return
            cfg, batch = pg.on_images(asked, len(images.y_train), len(images.y_val))  # as decoded
            note = skipped_note(images) + (f" {batch}" if batch else "")
        classes = len(images.classes) if images is not None else len(CLASSES)
        if not _training.acquire(timeout=JOIN_S):
            busy = gr.Error("The previous Playground run is still ending its last step; try again in a minute.",
                            title="The Playground is busy")
            yield refused(busy)
            raise busy
        thread = threading.Thread(target=_run, args=(cfg, watch, images), daemon=True, name="playground")
        try:
            thread.start()
        except BaseException:
            _training.release()
            raise
        hidden = (gr.update(visible=False), "")
        while thread.is_alive():
            thread.join(UPDATE_S)
            yield (*views(watch.snapshot(), note=note, classes=classes), *hidden, gr.skip())
        if watch.error:
            yield (*views(watch.snapshot(), note=note, classes=classes), *hidden, gr.skip())
            raise gr.Error(watch.error, title="The Playground run failed")
        files, token = playground_files.save(watch, cfg, images, Path(upload).name if upload else "")
        snap = watch.snapshot()
        yield (*views(snap, files, note, classes, cfg.val_size), *referee(snap, classes, cfg.val_size),
               [*(runs or []), token])
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


def cleared(text: str) -> tuple:
    """`text` in the status line with an earlier run's figures, verdict and detail cleared: the outputs of `train`
    from the status line to the detail, less the files (an earlier run's downloads stay)."""
    return text, None, None, None, None, "", None, gr.update(visible=False), ""


def said(text: str) -> tuple:
    """All of `train`'s outputs for a run with nothing to draw (yet): `cleared`, the files and runs left as they are."""
    text, *figures, box, detail = cleared(text)
    return (text, *figures, gr.skip(), box, detail, gr.skip())


def refused(e: Exception) -> tuple:
    """All of `train`'s outputs for a run that did not start, its status line saying why: the click's "starting…
    waits here for its turn" stayed there beside Gradio's Error badge, as if the refused run still waited."""
    return said(f"**not started**: {e.message if isinstance(e, gr.Error) else e}")


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
        "degradation), and how the gradients reach its first layers, or do not. To train on your own images "
        "instead of Shapes, upload a .zip of `<class>/<image>` folders.")
    key = gr.State(lambda: uuid.uuid4().hex)  # this session's run, and only this session's
    rows = [CONTROLS[:4], CONTROLS[4:]]  # the net, then the run: from "lr" on
    controls = []
    for row in rows:
        with gr.Row():
            controls += [_control(name, default, c) for name, default, c in row]
    upload = gr.File(label="Or your own images: a .zip of class folders",  # one line on a phone
                     file_types=[".zip"], type="filepath", height=150, elem_id="playground-zip")
    runs = gr.State([])  # this session's finished runs (tokens), newest last
    estimate = gr.Markdown("Estimating how long these settings take here… (change a setting to re-estimate)",
                           elem_id="playground-estimate")
    with gr.Row():
        start = gr.Button("Train both", variant="primary", elem_id="playground-train")
        halt = gr.Button("Stop", elem_id="playground-stop")
    state = gr.Markdown(elem_id="playground-status")
    found = gr.Markdown(elem_id="playground-verdict")
    with gr.Accordion("The referee's detail: chance, noise, every number", open=False,
                      visible=False, elem_id="playground-referee-box") as referee_box:
        detail = gr.Markdown(elem_id="playground-referee")
    # Two figures a row, each at least `FIGURE_MIN_PX` wide: on a phone they stack in one column.
    with gr.Row():
        loss = _figure("playground-loss")
        acc = _figure("playground-acc")
    with gr.Row():
        plain_map = _figure("playground-map-plain")
        res_map = _figure("playground-map-resnet")
    update = _figure("playground-ratios")
    files = gr.File(label="The run's curves and both trained nets", file_count="multiple", interactive=False,
                    elem_id="playground-files")
    outputs = [state, loss, acc, plain_map, res_map, found, update, files, referee_box, detail, runs]
    # On page load and on every change, not while the page is built: the first estimate times this server (the
    # cost model's probe), which must not delay serving the app.
    # The zip too: an upload is checked from its headers at once (classes, counts, or why it is refused).
    gr.on(None, _estimate, [*controls, upload], estimate, api_visibility="private", **LONG_FREE)
    # Progress and errors show on the status line only: a red "Error" badge stayed on every figure until the next run.
    run = start.click(queue_run, key, [start, *outputs[:7], referee_box, detail], queue=False,
                      api_visibility="private").then(
        user_errors(train), [*controls, upload, key, runs], outputs, api_name="playground", show_progress_on=state,
        **LONG)
    # Train both enabled again whichever way the run ended. Not `.then`: Gradio 6.31's frontend runs a `.then` only
    # after a success (despite its docs), and a refused run left the button disabled until the page was reloaded.
    for ended in (run.success, run.failure):
        ended(ready, None, start, queue=False, api_visibility="private")
    halt.click(stop, key, None, queue=False, api_visibility="private")
    return runs


FIGURE_MIN_PX = 340  # a figure narrower than this is unreadable: below it, a row's figures stack


def _control(name: str, default: Any, c: Control) -> gr.components.Component:
    """The widget `settings.control` declares for a setting, at its default."""
    elem_id = ELEM_IDS.get(name)
    if c.kind == "choice":
        widget = gr.Dropdown if c.dropdown else gr.Radio
        return widget(list(c.choices), value=default, label=c.label, elem_id=elem_id)
    if c.kind == "check":
        return gr.Checkbox(default, label=c.label, elem_id=elem_id)
    if c.kind == "slider":
        return gr.Slider(c.minimum, c.maximum, value=default, step=c.step, label=c.label, elem_id=elem_id)
    return gr.Number(default, label=c.label, minimum=c.minimum, maximum=c.maximum, precision=c.precision,
                     elem_id=elem_id)


def _figure(elem_id: str) -> gr.Plot:
    """A live figure: its title and legends are drawn inside it (a label badge would sit on the drawing)."""
    return gr.Plot(show_label=False, elem_id=elem_id, min_width=FIGURE_MIN_PX)
