"""CUDA graphs per batch-size bucket (graphs.py): bucketing, padding, checks and fallback, run on the CPU with an
injected capture that behaves like a graph (one static input shape, one static output buffer)."""

from __future__ import annotations

import gc
import logging
import threading
import weakref

import pytest
import torch

from resnet_lab.models.weights import load_weights
from resnet_lab.serving import graphs
from resnet_lab.serving.graphs import BUCKETS, bucket_for, bucketed, graphs_off_reason
from resnet_lab.serving.inference import Classifier
from resnet_lab.serving.zoo import SHAPES_CHECKPOINT, SHAPES_MODEL, ModelZoo
from resnet_lab.ui.common import status_line


class FakeGraphs:
    """A capture like `capture_cuda_graph`: its runner takes only the captured shape and returns one static output
    buffer, overwritten by the next replay (so a caller that keeps it without copying sees later results)."""

    def __init__(self, fail_at: int | None = None, wrong: bool = False):
        self.captured: list[tuple[int, ...]] = []
        self.replayed: list[int] = []
        self.fail_at, self.wrong = fail_at, wrong

    def __call__(self, fn, example, pool=None):
        if len(example) == self.fail_at:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.captured.append(tuple(example.shape))
        static_out = fn(example).clone()

        def run(x):
            assert x.shape == example.shape, "a graph replays only the shape it captured"
            self.replayed.append(len(x))
            static_out.copy_(torch.zeros_like(static_out) if self.wrong else fn(x))
            return static_out

        return run


@pytest.fixture(autouse=True)
def graphs_allowed(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.delenv("RESNET_LAB_CUDA_GRAPHS", raising=False)


@pytest.fixture(scope="module")
def shapes_weights():
    return load_weights(str(SHAPES_CHECKPOINT), "resnet20")


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_bucket_for():
    assert [bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 2, 4, 4, 8, 8, 16, 16, None]
    assert bucket_for(3, [8, 2]) == 8


def test_padding_and_slicing_equal_eager(shapes_weights):
    """Every batch size, below, at and above the largest bucket, gives the eager rows; runners see only bucket
    shapes, and the results are copies (a second call does not change the first result)."""
    model = Classifier(shapes_weights, device="cpu", fuse=True)
    fake = FakeGraphs()
    graphed, failure = bucketed(model._forward, (3, 32, 32), torch.device("cpu"), torch.channels_last, capture=fake)
    assert graphed is not None and failure == "" and graphed.buckets == list(BUCKETS)

    def run(x):
        return graphed(x, model._forward)

    assert [s[0] for s in fake.captured] == list(BUCKETS)
    fake.replayed.clear()
    with torch.inference_mode():
        first = run(_batch(3, seed=1))
        for n in (1, 2, 3, 5, 7, 16, 17, 40):
            x = _batch(n)
            got, want = run(x), model._forward(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # rows are independent: padding is inert
        assert set(fake.replayed) <= set(BUCKETS)
        assert 16 in fake.replayed and fake.replayed[-3:] == [16, 16, 8]  # 40 = 16 + 16 + 8 (8 holds 8)
        torch.testing.assert_close(first, model._forward(_batch(3, seed=1)), rtol=1e-5, atol=1e-5)
        other = _batch(2, 0)[:, :, :16, :16]  # another sample shape: eager
        assert run(other).shape == (2, model.weights.model.num_classes)


def test_classifier_with_graphs_gives_eager_results(shapes_weights):
    eager = Classifier(shapes_weights, device="cpu", fuse=True)
    graphed = Classifier(shapes_weights, device="cpu", fuse=True)
    fake = FakeGraphs()
    assert graphed.use_cuda_graphs(capture=fake) and graphed.graphed is not None
    fake.replayed.clear()
    for n in (1, 3, 16):
        x = _batch(n)
        torch.testing.assert_close(graphed.logits(x), eager.logits(x), rtol=1e-5, atol=1e-5)
    assert fake.replayed == [1, 4, 16]


@pytest.mark.parametrize("fake", [FakeGraphs(fail_at=4), FakeGraphs(wrong=True)], ids=["capture fails", "wrong"])
def test_a_failed_or_wrong_capture_falls_back_to_eager_with_one_log_line(shapes_weights, caplog, fake):
    clf = Classifier(shapes_weights, device="cpu", fuse=True)
    with caplog.at_level(logging.INFO, logger="resnet_lab"):
        assert clf.use_cuda_graphs(capture=fake) is False
    assert clf.graphed is None
    lines = [r for r in caplog.records if r.name == "resnet_lab.serving.graphs"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "running eagerly" in lines[0].getMessage()
    assert ("stream is capturing" if fake.fail_at else "disagrees with the eager model") in lines[0].getMessage()
    shown = [s for s in clf.runs() if "CUDA graphs off, running eagerly" in s]  # the status line says what runs
    assert len(shown) == 1 and ("stream is capturing" if fake.fail_at else "disagrees") in shown[0]
    x = _batch(3)
    torch.testing.assert_close(clf.logits(x), Classifier(shapes_weights, device="cpu", fuse=True).logits(x))


@pytest.mark.parametrize("env", [("SPACES_ZERO_GPU", "true"), ("RESNET_LAB_CUDA_GRAPHS", "0")])
def test_graphs_are_off_on_zerogpu_and_by_switch(shapes_weights, monkeypatch, env):
    monkeypatch.setenv(*env)
    fake = FakeGraphs()
    clf = Classifier(shapes_weights, device="cpu", fuse=True)
    assert clf.use_cuda_graphs(capture=fake) is False and clf.graphed is None and fake.captured == []
    assert graphs_off_reason("cuda") is not None


def test_graphs_are_off_off_cuda_and_for_the_shared_model(shapes_weights):
    assert graphs_off_reason("cuda") is None and graphs_off_reason("cpu") == "not on CUDA"
    clf = Classifier(shapes_weights, device="cpu", fuse=True)
    assert clf.use_cuda_graphs() is False and clf.graphed is None
    fake = FakeGraphs()  # Grad-CAM hooks the unfused model: a classifier that runs it never captures it
    assert Classifier(shapes_weights, device="cpu").use_cuda_graphs(capture=fake) is False and fake.captured == []


def test_the_zoo_captures_when_a_model_loads(monkeypatch):
    """Warm-up happens at load, before any request; the unfused model explanations use is never wrapped."""
    fake = FakeGraphs()
    monkeypatch.setattr(graphs, "graphs_off_reason", lambda device: None)
    monkeypatch.setattr(graphs, "capture_cuda_graph", fake)
    entry = ModelZoo(weights_path="", device="cpu").get(SHAPES_MODEL)
    assert entry.classifier.graphed is not None and [s[0] for s in fake.captured] == list(BUCKETS)
    assert entry.classifier.model is not entry.weights.model
    assert status_line(entry).endswith("(CUDA graphs)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_graphs_equal_eager(shapes_weights):
    clf = Classifier(shapes_weights, device="cuda", fuse=True)
    eager = Classifier(shapes_weights, device="cuda", fuse=True)
    assert clf.use_cuda_graphs() and clf.graphed.buckets == list(BUCKETS)
    for n in (1, 3, 16, 20):
        x = _batch(n)
        torch.testing.assert_close(clf.logits(x), eager.logits(x), rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- the CPU stand-in, cycles, scoping


def test_the_stand_in_replays_the_new_input_not_the_captured_one(shapes_weights):
    """`capture_on_cpu` shares `static_runner` with the real capture: each call copies its batch into the static
    input before the replay. A runner that forgot the copy would return the captured example's logits here."""
    clf = Classifier(shapes_weights, device="cpu", fuse=True)
    with torch.inference_mode():
        example, other = _batch(4, seed=1), _batch(4, seed=2)
        run = graphs.capture_on_cpu(clf._forward, example)
        got = run(other)
        torch.testing.assert_close(got, clf._forward(other), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, clf._forward(example), atol=1e-3)
        with pytest.raises(RuntimeError, match="only the shape it captured"):
            run(_batch(2))


def test_a_runner_that_replays_stale_input_is_refused_at_capture(shapes_weights, caplog):
    """The check at capture feeds each graph a batch other than the one it captured."""
    clf = Classifier(shapes_weights, device="cpu", fuse=True)

    def stale(fn, example, pool=None):
        out = fn(example).clone()
        return lambda x: out  # never looks at x

    assert clf.use_cuda_graphs(capture=stale) is False
    assert "disagrees with the eager model" in clf.fallbacks["CUDA graphs off, running eagerly"]
    assert any("CUDA graphs off, running eagerly" in s for s in clf.runs())


def test_a_graphed_classifier_is_freed_without_the_cycle_collector(shapes_weights):
    """No reference cycle between a classifier and its graphs: dropping the last reference frees it (weights and,
    on CUDA, its graph pool) at once, with the cycle collector off as it may well be when the zoo evicts."""
    clf = Classifier(shapes_weights, device="cpu", fuse=True)
    assert clf.use_cuda_graphs(capture=graphs.capture_on_cpu)
    gone, model_gone = weakref.ref(clf), weakref.ref(clf.model)
    gc.collect()
    gc.disable()
    try:
        del clf
        assert gone() is None and model_gone() is None
    finally:
        gc.enable()


def test_cudnn_autotuning_is_scoped_to_serving_forwards():
    """On while any serving forward runs (threads overlap), back to what it was when the last one leaves; a
    classifier no longer sets it for the whole process."""
    before = torch.backends.cudnn.benchmark
    Classifier(load_weights(str(SHAPES_CHECKPOINT), "resnet20"), device="cpu", fuse=True)
    assert torch.backends.cudnn.benchmark == before
    inside, leave = threading.Event(), threading.Event()

    def other_thread():
        with graphs.cudnn_benchmark():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other_thread)
    with graphs.cudnn_benchmark():
        t.start()
        inside.wait(10)
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is True  # the other forward is still running
    leave.set()
    t.join()
    assert torch.backends.cudnn.benchmark == before


def test_captures_are_serialized_process_wide(monkeypatch):
    """Two models loading at once never capture at the same time: `capture_cuda_graph` holds `CAPTURE_LOCK`
    (checked here on its CPU-testable part: the lock is held around the capture's body)."""
    held = []

    class Spy:
        def __enter__(self):
            held.append(graphs.CAPTURE_LOCK.locked())
            raise RuntimeError("stop here: no CUDA")

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(graphs.torch.cuda, "device", lambda d: Spy())
    with pytest.raises(RuntimeError, match="no CUDA"):
        graphs.capture_cuda_graph(lambda x: x, torch.zeros(1))
    assert held == [True] and not graphs.CAPTURE_LOCK.locked()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_concurrent_real_captures_all_succeed(shapes_weights):
    """Four classifiers capturing in four threads at once: every one gets graphs, equal to eager."""
    clfs = [Classifier(shapes_weights, device="cuda", fuse=True) for _ in range(4)]
    threads = [threading.Thread(target=c.use_cuda_graphs) for c in clfs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c.graphed is not None and not c.fallbacks for c in clfs)
    x = _batch(3)
    for c in clfs:
        torch.testing.assert_close(c.logits(x), clfs[0].logits(x), rtol=1e-2, atol=1e-2)
