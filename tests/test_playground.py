"""The Playground (research/playground.py, ui/playground.py): the twins train exactly as the degradation study
trains them, what the live view shows is what an independent computation gives, Stop keeps what was trained, and
building the page trains and times nothing."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resnet_lab.data.shapes import CLASSES, ShapesDataset
from resnet_lab.models.resnet import build, init_seed
from resnet_lab.paths import ASSETS
from resnet_lab.research import playground as pg
from resnet_lab.research.degradation.compute import run_degradation

SMALL = {"depth": 20, "steps": 6, "batch_size": 8, "evals": 2, "val_size": 32, "ratio_every": 1, "optimizer": "sgd",
         "lr": 0.05, "image_size": 32}  # SGD at 32 px: the study's loop as the shipped runs use it


def test_watching_changes_nothing_the_nets_learn():
    """The live view only looks: the same curves as the study's loop without it, bit for bit."""
    cfg = pg.PlaygroundConfig(**SMALL)
    watch = pg.run_playground(cfg)
    alone = run_degradation(cfg.steps, cfg.batch_size, cfg.archs, cfg.seed, lr=cfg.lr, train_size=48,
                            val_size=cfg.val_size, evals=cfg.evals)
    seen = watch.snapshot().curves
    for arch, label in zip(cfg.archs, ("plain-20", "ResNet-20")):
        for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
            want = alone[(alone.arch == arch) & (alone.metric == metric)].value.tolist()
            got = seen[(seen.net == label) & (seen.metric == metric)].value.tolist()
            assert got == want, (label, metric)
    assert set(watch.nets) == {"plain-20", "ResNet-20"} and watch.done and not watch.error


def test_the_gradient_map_and_update_ratio_match_an_independent_first_step():
    """Column 0 of each map is log10 of every main-path conv's gradient norm on the first batch, recomputed here
    from a fresh net; the stage update ratio of step 0 is SGD's first step, lr_0 * ||g + wd W|| / ||W||."""
    cfg = pg.PlaygroundConfig(**SMALL)
    snap = pg.run_playground(cfg).snapshot()
    data = ShapesDataset(cfg.steps * cfg.batch_size, cfg.seed, 32, clutter=False)  # as the study renders them
    x, y = data.normalized(), data.labels
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.batch_size]
    lr0 = cfg.lr * 0.1  # the warm-up's first step
    for arch, label in zip(cfg.archs, ("plain-20", "ResNet-20")):
        net = build(arch, num_classes=8, seed=init_seed(cfg.seed)).train()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        convs = [m for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and ".downsample." not in n]
        want = torch.stack([c.weight.grad.norm() for c in convs]).log10().numpy()
        got = snap.grad_maps[label][:, 0]
        assert got.shape == want.shape and abs(got - want).max() < 1e-4, label
        for name, stage in net.stages():
            num = sum(float((lr0 * (p.grad + 5e-4 * p.detach())).pow(2).sum()) for p in stage.parameters())
            den = sum(float(p.detach().pow(2).sum()) for p in stage.parameters())
            row = snap.ratios[(snap.ratios.net == label) & (snap.ratios.step == 0) & (snap.ratios.stage == name)]
            assert row.ratio.item() == pytest.approx(math.sqrt(num / den), rel=1e-3), (label, name)


def test_stop_ends_after_the_step_in_flight_and_keeps_what_was_trained():
    cfg = pg.PlaygroundConfig(**{**SMALL, "steps": 50})

    class StopAt3(pg.LiveWatch):
        def keep_going(self, step: int) -> bool:
            if step == 2:
                self.stop()
            return super().keep_going(step)

    watch = pg.run_playground(cfg, StopAt3(cfg.steps, cfg.ratio_every))
    snap = watch.snapshot()
    assert snap.step == 3 and snap.stopped and snap.done
    assert snap.curves[snap.curves.metric == "train_loss"].step.max() == 2
    assert sorted(snap.curves[snap.curves.metric == "val_acc"].step.unique()) == [0, 3]  # validated where it stopped
    assert all(m.shape[1] == 3 for m in snap.grad_maps.values()) and len(watch.nets) == 2


def test_the_time_limit_ends_a_run_after_the_step_in_flight_and_keeps_what_was_trained(monkeypatch):
    """Whatever the estimate said, a run ends once the page's `TIME_LIMIT_S` of wall clock have passed, as Stop ends
    it, and says why. The run's clock is the module's (`pg._clock`, a fake here), never the process's."""
    from resnet_lab.ui import playground as ui

    now = [0.0]
    monkeypatch.setattr(pg, "_clock", lambda: now[0])
    cfg = pg.PlaygroundConfig(**{**SMALL, "steps": 50})

    class LateAfter3(pg.LiveWatch):
        def keep_going(self, step: int) -> bool:
            now[0] = {1: ui.TIME_LIMIT_S - 1, 2: ui.TIME_LIMIT_S}.get(step, now[0])  # the third step ends at it
            return super().keep_going(step)

    watch = pg.run_playground(cfg, LateAfter3(cfg.steps, cfg.ratio_every, time_limit_s=ui.TIME_LIMIT_S))
    snap = watch.snapshot()
    assert snap.step == 3 and snap.stopped and snap.timed_out and snap.done and len(watch.nets) == 2
    assert sorted(snap.curves[snap.curves.metric == "val_acc"].step.unique()) == [0, 3]  # validated where it ended
    text = ui.status(snap)
    assert "**stopped**: step 3 of 50" in text and "live-run limit of 10.0 min; what was trained is kept" in text


@pytest.mark.parametrize("bad, message", [
    ({"depth": 21}, "depth must be one of"), ({"init": "zero-gamma", "batchnorm": False}, "needs BatchNorm"),
    ({"optimizer": "lbfgs"}, "optimizer must be"), ({"lr": 0.0}, "learning rate"), ({"batch_size": 1}, "batch"),
])
def test_settings_that_cannot_run_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        pg.PlaygroundConfig(**{**SMALL, **bad})


def test_without_batchnorm_and_with_adam_and_zero_gamma_it_trains():
    for extra in ({"batchnorm": False, "batch_size": 1}, {"optimizer": "adam", "lr": 1e-3}, {"init": "zero-gamma"}):
        watch = pg.run_playground(pg.PlaygroundConfig(**{**SMALL, "steps": 2, **extra}))
        assert not watch.error and watch.snapshot().step == 2, extra
    net = watch.nets["ResNet-20"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and float(m.weight.detach().abs().max()) > 0.1
                   for n, m in net.named_modules() if n.endswith("bn2"))  # the last BN of each block started at 0


def test_what_fits_cuts_the_steps_to_the_time_limit():
    """The most steps whose estimate fits (the cost model's rates are measured once per process, so the estimates
    compared here are exact functions of the steps, whatever the machine's speed)."""
    cfg = pg.PlaygroundConfig(depth=56, steps=2000, batch_size=64, evals=2, val_size=64)
    limit = pg.PlaygroundConfig(**{**vars(cfg), "steps": 200}).cost().seconds
    assert cfg.cost().seconds > limit
    fits = pg.what_fits(cfg, limit)
    assert fits is not None and fits.steps == 200 and fits.cost().seconds <= limit
    assert pg.what_fits(cfg, cfg.cost().seconds) == cfg  # what fits as it is stays as it is
    assert pg.what_fits(cfg, 1e-3) is None  # not even 10 steps


# ----------------------------------------------------------------------------- the tab


def test_the_tab_streams_views_saves_the_pair_and_stops_only_its_own_run(monkeypatch):
    import gradio as gr

    from resnet_lab.models.checkpoints import load_checkpoint
    from resnet_lab.ui import playground as ui
    from resnet_lab.ui import playground_plots as plots

    controls = (20, True, "he", "sgd", 0.05, 8, 30, 0, 32)
    assert "on Shapes" in ui.estimate_text(*controls) and "⚠️" in ui.estimate_text(21, *controls[1:])
    monkeypatch.setattr(ui, "UPDATE_S", 0.05)
    stream = ui.train(*controls, None, "me", ["an-earlier-run"])
    first = next(stream)
    watch = ui._runs.get("me")
    ui.stop("someone else")
    assert watch is not None and not watch.stopped
    ui.stop("me")
    assert watch.stopped
    views = [first, *stream]
    for view in views[:-1]:  # while it runs: no verdict, its detail hidden, the session's runs untouched
        assert view[5] == "" and view[8] == {"__type__": "update", "visible": False} and view[10] == gr.skip()
    status, loss, acc, plain_map, res_map, verdict, ratios, files, box, detail, runs = views[-1]
    assert "stopped" in status and "me" not in ui._runs
    for figure in (loss, acc, plain_map, res_map, ratios):  # every figure drawn by the end
        assert plots.spec(figure)["layer"], figure
    assert {(r["net"], r["curve"]) for r in plots.spec(loss)["data"]["values"]} == {
        (net, curve) for net in ("plain-20", "ResNet-20") for curve in ("train", "held-out")}
    assert "plain-20" in verdict and "ResNet-20" in verdict and "chance" in verdict  # after Stop too
    assert box == {"__type__": "update", "visible": True, "open": False} and "1/K = 12.5" in detail
    assert [f.rsplit(".", 1)[-1] for f in files] == ["csv", "safetensors", "json", "safetensors", "json"]
    loaded = load_checkpoint(files[3])
    assert loaded.meta["arch"] == "resnet20" and loaded.meta["steps_trained"] < 30
    assert runs[0] == "an-earlier-run" and len(runs) == 2  # this run's token added to the session's list


def test_the_status_line_is_the_streams_alone_and_says_each_state():
    """Stop writes nothing to the page: the stream says "stopping", then "stopped" (a second writer of the line
    raced the stream's last update in CI and left "Stopping…" showing after the run had ended)."""
    from resnet_lab.ui import playground as ui

    empty = pd.DataFrame(columns=["net", "step", "metric", "value"])
    snap = pg.Snapshot(7, 300, 3.0, empty, {}, [], pd.DataFrame(columns=["net", "step", "stage", "ratio"]),
                       done=False, stopped=False)
    states = []
    for done, stopped in ((False, False), (False, True), (True, True), (True, False)):
        snap.done, snap.stopped = done, stopped
        states.append(ui.status(snap).split("**")[1])
    assert states == ["training", "stopping after this step", "stopped", "done"]
    ui.stop("no such session")  # nothing to stop: nothing happens (that it writes nothing: the browser test)


def test_a_stop_while_the_run_is_sized_ends_it_after_its_first_step(monkeypatch):
    """Stop clicked while the run is still being sized (the cost probe) or its zip read is not lost."""
    from resnet_lab.ui import playground as ui

    sized = ui.refuse
    monkeypatch.setattr(ui, "refuse", lambda *a: (sized(*a), ui.stop("early")))  # the click lands meanwhile
    monkeypatch.setattr(ui, "UPDATE_S", 0.05)
    *_, last = ui.train(20, True, "he", "sgd", 0.05, 8, 30, 0, 16, None, "early", [])
    assert "**stopped**: step 1 of 30" in last[0] and "early" not in ui._runs


def test_the_trained_pair_is_this_sessions_own_in_every_tab(tmp_path, monkeypatch):
    """After a run, its nets load by name in Classify and Grad-CAM (the zoo) and by value in the Research
    sections, for the session that holds the token; nobody else's pickers list them, an unknown token is refused,
    and a run whose files were pruned says so. A net trained without BatchNorm loads as one."""
    import gradio as gr

    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common, research, session_nets
    from resnet_lab.ui import playground as ui
    from resnet_lab.ui.research import landscape, lesion

    monkeypatch.setattr(common, "_ZOO", ModelZoo(weights_path=str(tmp_path / "none"), device="cpu"))
    monkeypatch.setattr(ui, "UPDATE_S", 0.05)
    *_, last = ui.train(20, False, "he", "sgd", 0.05, 8, 3, 0, 16, None, "me", [])
    files, runs = last[7], last[-1]
    token = runs[0]
    names = session_nets.model_names(runs)
    assert len(names) == 2 and all(token in n for n in names)
    assert not set(names) & set(common.zoo().models)  # never listed for everyone
    entry = common.zoo().get(names[0])
    pred = entry.classifier.predict([str(ASSETS / "shapes_circle.png")])[0]
    assert entry.weights.meta["norm"] == "none" and {label for label, _ in pred.topk} <= set(CLASSES)
    from resnet_lab.ui import gradcam

    ex = gradcam.explain_image(str(ASSETS / "shapes_circle.png"), names[0], "local", "layer3")
    # Grad-CAM on the session's own net, at 16 px (the shipped Shapes net is 32 px and "knows 8 shapes")
    assert ex.heatmap.shape == (16, 16) and "only knows 8 classes" in ex.info
    model_update, *pickers = session_nets.offer_runs(research.offer)(runs)
    assert set(names) <= set(model_update["choices"])
    want = (f"ResNet-20 vs plain-20 (your Playground run {token[:4]})", f"playground:{token}")
    assert pickers[0]["choices"][0] == want
    assert [str(p) for p in landscape.checkpoints(f"playground:{token}")] == [files[3], files[1]]
    assert str(lesion._checkpoint(f"playground:{token}:plain20")) == files[1]
    assert session_nets.offer_runs(research.offer)([])[1]["choices"] == landscape.pair_choices()  # another session
    with pytest.raises(ValueError, match="gone"):
        landscape.checkpoints("playground:0123456789ab")
    for f in files[1:]:
        Path(f).unlink()
    with pytest.raises(ValueError, match="gone"):
        common.zoo().get(names[1])
    with pytest.raises(gr.Error):
        lesion._checkpoint("not-offered")


def test_building_the_page_trains_and_times_nothing(monkeypatch):
    """Every estimate (the cost model's timed probes) and every run waits for the page to be served: the probes,
    the Playground's estimate and its training loop, by the names it calls them, are counted while the page is
    built (counted, not made to raise: an error caught on the way would hide the call), and none is called."""
    import app
    from resnet_lab.runtime import cost
    from resnet_lab.ui import playground as ui

    calls: list[str] = []
    for module, name in ((cost, "_measured_rates"), (cost, "_measured_build"), (cost, "_measured_decode"),
                         (pg, "run_degradation"), (pg, "run_playground"), (ui, "_estimate"), (ui, "estimate_text"),
                         (pg.PlaygroundConfig, "cost")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: calls.append(_name))
    demo = app.build_demo()
    assert any(fn.api_name == "playground" for fn in demo.fns.values())  # the tab was built
    assert calls == []


def test_a_run_that_does_not_fit_is_refused_with_what_fits(monkeypatch):
    import gradio as gr

    from resnet_lab.ui import playground as ui

    cfg = ui.config(56, True, "he", "sgd", 0.05, 32, 400, 0)
    monkeypatch.setattr(ui, "TIME_LIMIT_S", pg.PlaygroundConfig(**{**vars(cfg), "steps": 100}).cost().seconds)
    with pytest.raises(gr.Error, match="100 steps with these settings fit"):
        ui.refuse(cfg)
    assert "100 steps fit" in ui.estimate_text(56, True, "he", "sgd", 0.05, 32, 400, 0)


def _fake_runs(monkeypatch, on_start=lambda seed: None):
    """`run_playground` replaced by a run that starts, waits for its Stop, then for `release` (its step in flight),
    and ends: what the stream and its thread do around a run, with no training and no timing. The log holds
    ("start" | "end", seed)."""
    from resnet_lab.ui import playground as ui

    log, release = [], threading.Event()

    def run(cfg, watch, images=None):
        log.append(("start", cfg.seed))
        on_start(cfg.seed)
        watch._stop.wait(60)  # reached only if nothing stops it: a failure, never a measurement
        release.wait(60)
        log.append(("end", cfg.seed))
        watch.done = True
        return watch

    monkeypatch.setattr(pg, "run_playground", run)
    monkeypatch.setattr(ui, "UPDATE_S", 0.01)
    return log, release


def test_a_stop_while_the_run_is_queued_means_it_never_starts(monkeypatch):
    """The click disables Train both and remembers its Stop at once; a Stop while the run waits in the long-job
    queue ends it when its turn comes, before anything trains. A Stop with nothing queued stops no later run."""
    from resnet_lab.ui import playground as ui

    log, release = _fake_runs(monkeypatch)
    clicked = ui.queue_run("queued")
    assert clicked[0] == {"__type__": "update", "interactive": False} and "starting" in clicked[1]
    assert clicked[2:] == (None, None, None, None, "", None, {"__type__": "update", "visible": False}, "")
    ui.stop("queued")  # clicked while another job holds the slot
    views = list(ui.train(20, True, "he", "sgd", 0.05, 8, 30, 0, 16, None, "queued", []))
    assert len(views) == 1 and "before it started" in views[0][0] and log == []
    assert views[0][1:7] == (None, None, None, None, "", None)  # an earlier run's figures and verdict cleared
    assert "queued" not in ui._runs and "queued" not in ui._queued
    assert ui.ready() == {"__type__": "update", "interactive": True}

    ui.stop("idle")  # nothing queued or running for this session: remembered nowhere
    ui.queue_run("idle")
    stream = ui.train(20, True, "he", "sgd", 0.05, 8, 30, 0, 16, None, "idle", [])
    assert "training" in next(stream)[0]
    ui.stop("idle")
    release.set()
    assert "stopped" in list(stream)[-1][0] and log == [("start", 0), ("end", 0)]


def test_one_stop_ends_every_click_of_the_page_waiting_in_the_queue_and_no_later_one(monkeypatch):
    """A double click that reached the server queues two runs; one Stop while they wait means neither starts (the
    second click's Stop replaced the first's, so the first was stopped and the second trained). A click after the
    Stop is a new run, which that Stop does not end."""
    from resnet_lab.ui import playground as ui

    log, release = _fake_runs(monkeypatch)
    args = (20, True, "he", "sgd", 0.05, 8, 30, 0, 16, None, "twice", [])
    ui.queue_run("twice")
    ui.queue_run("twice")
    ui.stop("twice")
    for _ in range(2):
        views = list(ui.train(*args))
        assert len(views) == 1 and "before it started" in views[0][0]
    assert log == [] and "twice" not in ui._queued and "twice" not in ui._runs

    ui.queue_run("twice")
    ui.stop("twice")
    ui.queue_run("twice")  # clicked again after the Stop: this one runs
    assert "before it started" in list(ui.train(*args))[-1][0]
    stream = ui.train(*args)
    assert "training" in next(stream)[0]
    ui.stop("twice")
    release.set()
    assert "stopped" in list(stream)[-1][0] and log == [("start", 0), ("end", 0)] and "twice" not in ui._queued


def test_a_closed_page_stops_its_run_and_the_next_run_waits_for_it_to_end(monkeypatch):
    """Gradio frees the slot of a closed page, then closes its stream on its event loop: the run is stopped there
    (no join: it would block the loop) and the next run, in the freed slot, starts only once the closed one's
    thread has ended. Whether the next run waits is seen at the lock it waits on, not timed."""
    from resnet_lab.ui import playground as ui

    reached = threading.Event()  # the next run waits at the lock, or (without one) has started its thread
    log, release = _fake_runs(monkeypatch, on_start=lambda seed: seed == 1 and reached.set())

    class Lock:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def acquire(self, timeout: float = -1) -> bool:
            if self.lock.locked():
                reached.set()
            return self.lock.acquire(timeout=timeout)

        def release(self) -> None:
            self.lock.release()

    monkeypatch.setattr(ui, "_training", Lock(), raising=False)
    closed = ui.train(20, True, "he", "sgd", 0.05, 8, 30, 0, 16, None, "closed", [])
    next(closed)
    watch = ui._runs["closed"]
    closed.close()  # the page closed
    assert watch.stopped and "closed" not in ui._runs
    nxt = ui.train(20, True, "he", "sgd", 0.05, 8, 30, 1, 16, None, "next", [])
    first = threading.Thread(target=next, args=(nxt,))
    first.start()
    assert reached.wait(60)  # reached only if neither happens: a failure, never a measurement
    release.set()  # the closed run's step in flight ends
    first.join(60)
    ui.stop("next")
    assert "stopped" in list(nxt)[-1][0]
    assert log[:2] == [("start", 0), ("end", 0)] and log[2:] == [("start", 1), ("end", 1)]


def test_a_refused_run_says_on_its_status_line_that_it_did_not_start_and_why(tmp_path, monkeypatch):
    """The click wrote "starting… waits here for its turn"; a run refused when its turn came (a hostile zip, too long
    for a live run) replaces it with why, before the error, and leaves no Stop behind for a later run."""
    import zipfile

    import gradio as gr

    from resnet_lab.ui import playground as ui

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.png", b"x")
    monkeypatch.setattr(ui, "TIME_LIMIT_S", 1e-9)  # every run too long
    for upload, error, reason in ((str(evil), ValueError, "outside its own folder"), (None, gr.Error, "live run")):
        ui.queue_run("refused")
        stream = ui.train(20, True, "he", "sgd", 0.05, 8, 30, 0, 16, upload, "refused", [])
        status = next(stream)[0]
        assert status.startswith("**not started**") and reason in status and "starting" not in status
        with pytest.raises(error, match=reason):
            next(stream)
        assert "refused" not in ui._runs and "refused" not in ui._queued


def test_train_both_is_disabled_from_the_click_until_the_run_has_ended(monkeypatch):
    """The click first disables the button and remembers the run (unqueued: at once, even while another run holds
    the slot), then the run waits its turn, then the button is enabled again, also after a refusal or an error."""
    import gradio as gr

    from resnet_lab.ui import playground as ui

    with gr.Blocks() as demo:
        ui.build_tab()
    start = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "playground-train")
    fns = list(demo.fns.values())
    click = next(f for f in fns if (start._id, "click") in [(t[0], t[1]) for t in f.targets])
    run = next(f for f in fns if f.trigger_after == click._id)
    after = [f for f in fns if f.trigger_after == run._id]
    by_id = {b.elem_id: b._id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert click.fn is ui.queue_run and not click.queue and [o._id for o in click.outputs] == [by_id[f"playground-{n}"]
        for n in ("train", "status", "loss", "acc", "map-plain", "map-resnet", "verdict", "ratios", "referee-box",
                  "referee")]  # an earlier run's status, figures and verdict cleared at the click
    assert run.api_name == "playground" and run.concurrency_id == "long" and not run.trigger_only_on_success
    # after a success and after a failure (a refusal): Gradio 6.31's frontend runs a `.then` after a success only
    assert sorted((f.trigger_only_on_success, f.trigger_only_on_failure) for f in after) == [(False, True),
                                                                                          (True, False)]
    assert all(f.fn is ui.ready and [o._id for o in f.outputs] == [start._id] and not f.queue for f in after)
    # progress and errors on the status line only: a failed or refused run left a red "Error" badge on every figure
    assert [b.elem_id for b in run.show_progress_on] == ["playground-status"]


# ----------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize("plain, resnet, steps_done, says", [
    (0.137, 0.449, 300, "plain-56 stayed at chance (13.7 %, chance is 12.5 %) while ResNet-56 reached 44.9 %: in "
                        "300 steps the shortcuts made the 56-layer net trainable."),
    (0.25, 0.516, 300, "Both nets learned (chance is 12.5 %), ResNet-56 faster: 51.6 % against plain-56's 25.0 %."),
    (0.40, 0.42, 300, "Both nets learned and are level: plain-56 40.0 %, ResNet-56 42.0 %"),
    (0.45, 0.30, 300, "Both nets learned (chance is 12.5 %), and plain-56 is ahead"),
    (0.40, 0.12, 300, "plain-56 reached 40.0 % while ResNet-56 stayed at chance (12.0 %, chance is 12.5 %)"),
    (0.13, 0.14, 300, "Neither net learned in 300 steps: plain-56 13.0 % and ResNet-56 14.0 %"),
    (0.13, 0.14, 40, "Stopped at step 40 of 300. Too early to say: after 40 steps neither net is above chance"),
    (0.125, 0.20, 40, "After only 40 steps ResNet-56 has left chance (20.0 %) and plain-56 has not (12.5 %, chance "
                      "is 12.5 %): the ResNet started learning first"),
    # one net crossed the chance line and the other not, yet their gap is within noise: no lead is claimed
    # (the 60-step run a visitor saw: 15.6 % and 19.1 % on 256 images, a gap of 1.1 standard errors)
    (0.156, 0.191, 60, "After only 60 steps ResNet-56 has left chance (19.1 %) and plain-56 has not (15.6 %, chance is "
                       "12.5 %): but the 3.5-point gap between them is still within noise, so neither is ahead yet"),
    (0.160, 0.180, 300, "plain-56 stayed at chance (16.0 %, chance is 12.5 %) while ResNet-56 just left it (18.0 %), "
                        "but the 2.0-point gap between them is within noise"),
    (0.05, 0.45, 300, "plain-56 fell below chance (5.0 %, chance is 12.5 %) while ResNet-56 reached 45.0 %"),
])
def test_the_verdict_says_what_the_numbers_show(plain, resnet, steps_done, says):
    from resnet_lab.research.playground_verdict import verdict

    found = verdict(("plain-56", plain), ("ResNet-56", resnet), 8, 256, steps_done, 300)
    assert says in found.headline.replace("\u00a0", " ")
    assert found.headline.count(". ") <= 3  # one or two sentences (and "Stopped at step ...")
    assert "plain-56" in found.detail and "ResNet-56" in found.detail


def test_chance_and_its_noise_come_from_the_classes_and_the_held_out_images():
    """1/K for K classes (a zip's too), and "at chance" only within two binomial standard errors of it: the same
    accuracy is chance on a few held-out images and learning on many."""
    from resnet_lab.research.playground_verdict import chance, standing, verdict

    assert chance(8, 256) == pytest.approx((0.125, math.sqrt(0.125 * 0.875 / 256)))
    assert standing(0.16, 8, 256) == "at" and standing(0.16, 8, 10_000) == "above"  # 2 se: 4.1 vs 0.7 points
    assert standing(0.05, 8, 256) == "below"
    found = verdict(("plain-20", 0.60), ("ResNet-20", 0.95), 2, 20, 300, 300)  # a zip of 2 classes
    text = found.headline.replace("\u00a0", " ")
    assert "plain-20 stayed at chance (60.0 %, chance is 50.0 %)" in text  # 2 se on 20 images: 22.4 points
    assert "K = 2 classes" in found.detail and "20 held-out images" in found.detail
    tiny = verdict(("plain-20", 1.0), ("ResNet-20", 1.0), 2, 4, 40, 40).headline.replace("\u00a0", " ")
    assert tiny.startswith("Too few held-out images to judge: on 4 of them a net that only guesses (50.0 %) can score "
                           "anything up to 100.0 % by luck")  # not "neither net is above chance (100 %)"
    with pytest.raises(ValueError, match="at least 2 classes"):
        chance(1, 10)


def test_the_verdict_comes_once_the_run_has_ended_from_each_nets_last_check():
    from resnet_lab.ui import playground as ui

    rows = [("plain-56", 0, "val_acc", 0.12), ("ResNet-56", 0, "val_acc", 0.13), ("plain-56", 300, "val_acc", 0.137),
            ("ResNet-56", 300, "val_acc", 0.449)]
    snap = pg.Snapshot(300, 300, 100.0, pd.DataFrame(rows, columns=["net", "step", "metric", "value"]), {}, [],
                       pd.DataFrame(columns=["net", "step", "stage", "ratio"]), done=False, stopped=False)
    assert ui.verdict(snap, 8, 256) == "" and ui.referee(snap, 8, 256)[0]["visible"] is False  # still running
    snap.done = True
    assert "ResNet-56 reached 44.9" in ui.verdict(snap, 8, 256) and ui.referee(snap, 8, 256)[0]["visible"]
    snap.error = "RuntimeError: boom"
    assert ui.verdict(snap, 8, 256) == ""  # a failed run has no verdict, the status says why


# ----------------------------------------------------------------------------- the figures


def _layers(figure) -> list[dict]:
    from resnet_lab.ui import playground_plots as plots

    return plots.spec(figure)["layer"]


def _encodings(figure, channel: str) -> list[dict]:
    return [layer["encoding"][channel] for layer in _layers(figure) if channel in layer.get("encoding", {})]


def test_every_figure_colours_the_net_the_same_way_and_names_its_axes(one_thread):
    """One convention everywhere: plain orange, ResNet blue; training solid, held-out dashed through its points;
    axes with units; chance marked (1/K on accuracy, ln K on loss); every curve's values on hover."""
    from resnet_lab.ui import playground_plots as plots

    snap = pg.run_playground(pg.PlaygroundConfig(**SMALL)).snapshot()
    loss, acc, ratios = plots.curve_plot(snap, "loss", 8), plots.curve_plot(snap, "acc", 8), plots.ratio_plot(snap)
    for figure in (loss, acc, ratios):
        colours = [c["scale"] for c in _encodings(figure, "color")]
        assert colours and all(dict(zip(c["domain"], c["range"])) == {"plain-20": plots.PLAIN,
                                                                      "ResNet-20": plots.RESNET} for c in colours)
        assert any("tooltip" in layer["encoding"] for layer in _layers(figure))
    for figure, title, chance in ((loss, "cross-entropy loss", math.log(8)), (acc, "accuracy (%)", 12.5)):
        assert {y["title"] for y in _encodings(figure, "y") if "title" in y} == {title}
        dash = _encodings(figure, "strokeDash")[0]["scale"]
        assert dict(zip(dash["domain"], dash["range"])) == {"train": [1, 0], "held-out": [6, 4]}
        rules = [layer for layer in _layers(figure) if layer["mark"]["type"] == "rule"]
        assert rules[0]["data"]["values"][0]["y"] == pytest.approx(chance)
        assert any("grey dotted: chance" in line for line in plots.spec(figure)["title"]["subtitle"])
        assert not any(layer["mark"]["type"] == "text" for layer in _layers(figure))  # no words over the curves
        assert any(layer.get("transform") == [{"filter": "datum.curve == 'held-out'"}]
                   and layer["mark"]["type"] == "point" for layer in _layers(figure))  # held-out: its points
    held = snap.curves[(snap.curves.metric == "val_acc") & (snap.curves.net == "ResNet-20")].value
    shown = [r["value"] for r in plots.spec(acc)["data"]["values"] if r["net"] == "ResNet-20"
             and r["curve"] == "held-out"]
    assert shown == pytest.approx([100 * a for a in held], abs=0.01)  # percent
    ratio = _layers(ratios)[0]["encoding"]
    assert ratio["y"]["scale"]["type"] == "log" and ratio["strokeDash"]["field"] == "stage"
    low, high = ratio["y"]["scale"]["domain"]  # whole decades around every ratio
    assert low <= snap.ratios.ratio.min() and snap.ratios.ratio.max() <= high
    assert [math.log10(x) for x in (low, high)] == pytest.approx([round(math.log10(x)) for x in (low, high)])

    plain, resnet = plots.map_plots(snap)
    for figure, net in ((plain, "plain-20"), (resnet, "ResNet-20")):
        image, bar = _layers(figure)
        enc, m = image["encoding"], snap.grad_maps[net]
        assert image["mark"]["type"] == "image" and enc["x"]["title"] == "step" and "layer" in enc["y"]["title"]
        assert image["data"]["values"][0]["y1"] == m.shape[0] + 0.5  # a row per conv, first at the top
        assert enc["y"]["scale"]["reverse"] and image["data"]["values"][0]["url"].startswith("data:image/png")
        finite = np.concatenate([g[np.isfinite(g)] for g in snap.grad_maps.values()])
        assert bar["encoding"]["color"]["scale"]["domain"] == pytest.approx([finite.min(), finite.max()])  # shared


def test_a_huge_held_out_loss_is_drawn_on_the_top_edge_and_hovers_its_value():
    from resnet_lab.ui import playground_plots as plots

    rows = [("plain-20", s, "train_loss", 2.0) for s in range(10)] + [("plain-20", 0, "val_loss", 2.1),
                                                                       ("plain-20", 9, "val_loss", 5000.0)]
    snap = pg.Snapshot(10, 10, 1.0, pd.DataFrame(rows, columns=["net", "step", "metric", "value"]), {}, [],
                       pd.DataFrame(columns=["net", "step", "stage", "ratio"]), done=True, stopped=False)
    spec = plots.spec(plots.curve_plot(snap, "loss", 8))
    top = spec["layer"][0]["encoding"]["y"]["scale"]["domain"][1]
    assert top == pytest.approx(plots.LOSS_CAP * 2.0)
    huge = [r for r in spec["data"]["values"] if r["value"] == 5000.0]
    assert len(huge) == 1 and huge[0]["shown"] == top and "5000" not in str(spec["title"])
    assert plots.curve_plot(pg.Snapshot(0, 10, 0.0, pd.DataFrame(columns=["net", "step", "metric", "value"]), {},
                                        [], pd.DataFrame(columns=["net", "step", "stage", "ratio"]), False, False),
                            "acc", 8) is None  # nothing yet: the figure is cleared, not drawn empty


def test_the_estimate_names_what_it_trains_on_shapes_or_the_uploaded_zip(tmp_path):
    from test_zipdata import _good, _zip

    from resnet_lab.ui import playground as ui

    controls = (20, True, "he", "sgd", 0.05, 4, 30, 0, 16)
    assert "plain-20 and ResNet-20 on Shapes, 30 steps" in ui.estimate_text(*controls)
    mine = ui.estimate_text(*controls, upload=str(_zip(tmp_path / "mine.zip", _good())))
    assert "plain-20 and ResNet-20 on your zip's images, 30 steps" in mine and "Shapes" not in mine


def test_the_controls_are_built_from_the_configs_declaration():
    """Each control's label, choices or range and default come from `PlaygroundConfig`'s fields (`settings.control`),
    in the order `ui.config` takes their values; the net's label is one function (curves, files, pickers)."""
    import gradio as gr

    from resnet_lab.ui import playground as ui
    from resnet_lab.ui import session_nets

    defaults = pg.PlaygroundConfig()
    assert [name for name, _, _ in ui.CONTROLS] == ["depth", "batchnorm", "init", "optimizer", "lr", "batch_size",
                                                    "steps", "seed", "image_size"]
    with gr.Blocks():
        built = {name: ui._control(name, default, c) for name, default, c in ui.CONTROLS}
    assert isinstance(built["depth"], gr.Dropdown) and [v for _, v in built["depth"].choices] == list(pg.DEPTHS)
    assert built["depth"].elem_id == "playground-depth" and built["depth"].value == defaults.depth
    optimizer = built["optimizer"]
    assert isinstance(optimizer, gr.Radio) and [v for _, v in optimizer.choices] == list(pg.OPTIMIZERS)
    steps = built["steps"]
    assert isinstance(steps, gr.Slider) and (steps.minimum, steps.maximum, steps.step) == (20, 2000, 10)
    assert steps.value == defaults.steps
    assert isinstance(built["seed"], gr.Number) and built["seed"].precision == 0
    assert ui.config(*(c.value for c in built.values())) == pg.PlaygroundConfig(device=str(ui.zoo().device))
    assert session_nets.label is pg.net_label and pg.net_label("plain56") == "plain-56"
