"""Several tabs at once against the served app: the app-wide queue groups hold across different events, and
Grad-CAM requests keep flowing while a faithfulness recompute runs.

The library functions the events reach are wrapped by a probe that holds each call for a moment and records
which queue group the calling event belongs to (read from Gradio's own record of the running event). Had the
events their own groups (Gradio's default), the held calls would overlap and the peaks below would exceed the
limits.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pandas as pd
import pytest
from gradio.context import LocalContext
from gradio_client import Client, handle_file

from resnet_lab.explain import faithfulness
from resnet_lab.research import degradation, gradflow
from resnet_lab.serving.zoo import ASSETS, SHAPES_MODEL, ModelZoo
from resnet_lab.ui import common, gradcam, research

SHAPE = str(ASSETS / "shapes_star.png")
GRADCAM_ARGS = ("layer3", "top-1 prediction", "jet", 0.5, False, "Guided Grad-CAM")
FAITHFULNESS_TABLE = pd.read_csv(gradcam.FAITHFULNESS_CSV).head(1)  # a real row: the UI renames its columns
TINY_DEGRADATION = {"steps": 2, "batch_size": 4, "train_size": 8, "val_size": 8, "evals": 1}
WAIT_S = 60  # only reached when something hangs: a failure, never a measurement


LONG_JOBS = {"gradnorms", "degradation", "faithfulness"}
QUICK_JOBS = {"status", "classify", "gradcam"}


class GroupProbe:
    """How many events of each kind (quick or long, by endpoint) are inside probed library calls at one moment,
    and the queue group each endpoint's event ran in."""

    def __init__(self, demo, hold: float) -> None:
        self.demo, self.hold = demo, hold
        self.lock = threading.Lock()
        self.depth: Counter = Counter()  # (kind, event id) -> nested probed calls now running
        self.peak: Counter = Counter()
        self.groups: defaultdict[str, set[str]] = defaultdict(set)  # endpoint -> queue groups it ran in

    def _event(self) -> tuple[str, str, str]:
        """(endpoint, event id, queue group) of the event running this call."""
        queue = self.demo._queue
        event = queue.event_ids_to_events.get(LocalContext.event_id.get(None))
        if event is None:  # a batched event (classify) runs without an event id: it is the running batch job
            batched = [job[0] for job in queue.active_jobs if job and job[0].fn.batch]
            event = batched[0] if len(batched) == 1 else None
        if event is None:
            return "outside any event", "", ""
        return event.fn.api_name or "", event._id, event.fn.concurrency_id

    def wrap(self, fn: Callable, result: Callable | None = None, gate: threading.Event | None = None,
             entered: threading.Event | None = None) -> Callable:
        """`fn` held for `hold` seconds (or until `gate` opens) while counted; `result` replaces its return."""

        @functools.wraps(fn)
        def probed(*args, **kwargs):
            name, event_id, group = self._event()
            kind = "long" if name in LONG_JOBS else "quick" if name in QUICK_JOBS else name
            with self.lock:
                self.depth[kind, event_id] += 1
                self.groups[name].add(group)
                running = sum(1 for (k, _), d in self.depth.items() if k == kind and d > 0)
                self.peak[kind] = max(self.peak[kind], running)
            try:
                if entered is not None:
                    entered.set()
                if gate is not None:
                    gate.wait(WAIT_S)
                else:
                    time.sleep(self.hold)
                return result(*args, **kwargs) if result is not None else fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.depth[kind, event_id] -= 1

        return probed


@pytest.fixture
def tabs(served_app):
    """Three independent sessions, as three browser tabs or API users."""
    return [Client(served_app[1], verbose=False) for _ in range(3)]


@pytest.fixture
def tiny_long_jobs(monkeypatch):
    """The degradation re-run at a few steps, and never left in the cache for the real button."""
    for k, v in TINY_DEGRADATION.items():
        monkeypatch.setitem(degradation.QUICK, k, v)
    research._quick_run.cache_clear()
    monkeypatch.setattr(gradcam, "estimate_seconds", lambda *a, **k: 1.0, raising=False)
    yield
    research._quick_run.cache_clear()


def test_shared_limits_hold_across_events_and_tabs(served_app, tabs, tiny_long_jobs, monkeypatch):
    demo = served_app[0]
    probe = GroupProbe(demo, hold=0.4)
    monkeypatch.setattr(ModelZoo, "get", probe.wrap(ModelZoo.get))  # every quick event and the recompute load here
    monkeypatch.setattr(gradflow, "run_sweep", probe.wrap(gradflow.run_sweep))
    monkeypatch.setattr(degradation, "run_degradation", probe.wrap(degradation.run_degradation))
    monkeypatch.setattr(gradcam, "measure_faithfulness",
                        probe.wrap(faithfulness.measure_faithfulness, result=lambda *a, **k: FAITHFULNESS_TABLE))
    a, b, c = tabs
    jobs = [  # long jobs first, each from another tab, then the quick ones
        a.submit(["resnet20"], "eval", "default", 3, "32", 1, api_name="/gradnorms"),  # a config no test caches
        b.submit(api_name="/degradation"),
        c.submit(20, api_name="/faithfulness"),
        a.submit(SHAPES_MODEL, "shipped", api_name="/status"),
        b.submit(handle_file(SHAPE), SHAPES_MODEL, "shipped", api_name="/classify"),
        c.submit(handle_file(SHAPE), SHAPES_MODEL, "shipped", *GRADCAM_ARGS, api_name="/gradcam"),
        a.submit(handle_file(SHAPE), SHAPES_MODEL, "shipped", *GRADCAM_ARGS, api_name="/gradcam"),
    ]
    for job in jobs:
        job.result(timeout=WAIT_S)

    assert set(probe.groups) == LONG_JOBS | QUICK_JOBS  # each reached a probed call, and nothing else did
    assert probe.peak["long"] == 1  # three long jobs from three tabs, one at a time
    assert 1 <= probe.peak["quick"] <= common.QUICK["concurrency_limit"]
    assert {name: probe.groups[name] for name in LONG_JOBS} == {name: {"long"} for name in LONG_JOBS}
    assert {name: probe.groups[name] for name in QUICK_JOBS} == {name: {"quick"} for name in QUICK_JOBS}
    queues = demo._queue.event_queue_per_concurrency_id
    assert queues["long"].concurrency_limit == 1
    assert queues["quick"].concurrency_limit == common.QUICK["concurrency_limit"]


def test_gradcam_finishes_while_a_recompute_runs(served_app, tabs, tiny_long_jobs, monkeypatch):
    """The recompute is held inside `faithfulness.measure_faithfulness` until Grad-CAM on the same Shapes model has
    answered."""
    entered, release = threading.Event(), threading.Event()
    probe = GroupProbe(served_app[0], hold=0)
    wrapped = probe.wrap(faithfulness.measure_faithfulness, gate=release, entered=entered,
                         result=lambda *a, **k: FAITHFULNESS_TABLE)
    monkeypatch.setattr(gradcam, "measure_faithfulness", wrapped)
    recompute = tabs[0].submit(20, api_name="/faithfulness")
    try:
        assert entered.wait(WAIT_S), "the recompute never reached faithfulness.measure_faithfulness"
        overlay, raw, *_ = tabs[1].submit(handle_file(SHAPE), SHAPES_MODEL, "shipped", *GRADCAM_ARGS,
                                          api_name="/gradcam").result(timeout=WAIT_S)
        assert overlay and raw.endswith(".npy")
        assert not recompute.done() and not release.is_set()  # Grad-CAM answered while the recompute was held
    finally:
        release.set()
    table, _note = recompute.result(timeout=WAIT_S)
    assert [row[:2] for row in table["data"]] == [["Grad-CAM", "layer1"], [gradcam.CHANCE, ""]]  # the stub's row, shown


def test_classify_requests_that_wait_together_share_one_forward_pass(served_app, tabs, monkeypatch):
    """While status requests hold every quick slot, two tabs' classify requests queue; freed, they run as one
    batch, and each says so."""
    demo = served_app[0]
    probe = GroupProbe(demo, hold=0)
    release, get = threading.Event(), ModelZoo.get
    held = probe.wrap(get, gate=release)
    monkeypatch.setattr(ModelZoo, "get", lambda *a, **k: (held if probe._event()[0] == "status" else get)(*a, **k))
    slots = common.QUICK["concurrency_limit"]
    try:
        blockers = [tabs[i % len(tabs)].submit(SHAPES_MODEL, "shipped", api_name="/status") for i in range(slots)]
        waiting = demo._queue.event_queue_per_concurrency_id["quick"].queue
        deadline = time.monotonic() + WAIT_S  # a bound for a failure, not a measurement
        while probe.peak["quick"] < slots and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe.peak["quick"] == slots  # every quick slot is taken
        jobs = [tab.submit(handle_file(SHAPE), SHAPES_MODEL, "shipped", api_name="/classify") for tab in tabs[:2]]
        while len(waiting) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(waiting) == 2  # both wait behind the held slots
    finally:
        release.set()
    infos = [job.result(timeout=WAIT_S)[1] for job in jobs]
    assert all("(batch of 2;" in info for info in infos), infos
    for job in blockers:
        job.result(timeout=WAIT_S)
