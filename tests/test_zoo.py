"""The model zoo: what the status line shows, which tags are offered, how many models it keeps, and its locking."""

from __future__ import annotations

import copy
import gc
import random
import threading
import weakref

import pytest
import torch
from safetensors.torch import save_file

from resnet_lab import build
from resnet_lab.models.weights import load_weights
from resnet_lab.serving import graphs
from resnet_lab.serving import zoo as zoo_mod
from resnet_lab.serving.zoo import IMAGENET_MODELS, SHAPES_MODEL, ModelZoo, model_bytes, tags_for
from resnet_lab.ui.common import status_line

GiB = 2**30


def _tiny(*_args):
    """Stand-in for `ModelZoo._load`: real (random) weights of the smallest net, instantly."""
    return load_weights(None, "resnet20"), ""


# ----------------------------------------------------------------------------- what the status line shows


def test_status_names_weight_files_without_server_paths(tmp_path):
    project = str(zoo_mod.ASSETS.parent)
    shipped = status_line(ModelZoo(weights_path="", device="cpu").get(SHAPES_MODEL))
    assert "local file `assets/shapes_resnet20.safetensors`" in shipped and project not in shipped

    folder = tmp_path / "weights"  # a user's weights folder outside the project: the file's name only
    folder.mkdir()
    save_file(build("resnet18", seed=0).state_dict(), str(folder / "resnet18.tv_in1k.safetensors"))
    status = status_line(ModelZoo(weights_path=str(folder), device="cpu").get("ResNet-18"))
    assert "local file `resnet18.tv_in1k.safetensors`" in status and str(tmp_path) not in status

    broken = tmp_path / "broken"  # unreadable: random weights, and the reason names the file but not its folder
    broken.mkdir()
    (broken / "resnet18.safetensors").write_bytes(b"\x00" * 64)
    status = status_line(ModelZoo(weights_path=str(broken), device="cpu").get("ResNet-18"))
    assert "random weights" in status and "resnet18.safetensors" in status and str(tmp_path) not in status


# ----------------------------------------------------------------------------- which tags are offered


def test_headless_tags_are_not_offered_and_asking_for_one_says_why():
    import timm

    for model in IMAGENET_MODELS:
        assert all(timm.models.get_pretrained_cfg(t).num_classes > 0 for t in tags_for(model)), model
    assert "resnet50.bamboo" not in tags_for("ResNet-50")
    zoo = ModelZoo(weights_path="", device="cpu")
    with pytest.raises(ValueError, match="no classifier head") as e:
        zoo.get("ResNet-50", "resnet50.bamboo")
    assert "resnet50.tv2_in1k" in str(e.value)
    with pytest.raises(ValueError, match="has no weights 'resnet50.no_such_tag'; choose one of resnet50.tv2_in1k"):
        zoo.get("ResNet-50", "resnet50.no_such_tag")


# ----------------------------------------------------------------------------- how many models it keeps


def test_model_bytes_is_what_an_entry_holds():
    """Both copies counted: the unfused weights (explanations) and the BN-folded classifier (predictions)."""
    entry = ModelZoo(weights_path="", device="cpu", max_models=1).get("ResNet-18")  # random weights, offline
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for net in (entry.weights.model, entry.classifier.model) for t in [*net.parameters(), *net.buffers()]}
    assert model_bytes("ResNet-18") == pytest.approx(sum(storages.values()) * zoo_mod.ALLOCATOR_MARGIN, rel=0.02)
    assert model_bytes("ResNet-152") > 2 * 240e6  # ResNet-152's fp32 weights are ~241 MB, held twice


@pytest.mark.parametrize("limit_gib", [0.5, 2, 3, 4, 6, 8, 16, 512])
def test_model_count_follows_the_container_limit(monkeypatch, limit_gib):
    """The count comes from `resources.memory_limit()` (the cgroup limit), not the host's RAM: as many of the
    largest model as fit in the zoo's share, and not one more."""
    limit = int(limit_gib * GiB)
    monkeypatch.setattr(zoo_mod, "memory_limit", lambda: limit)
    n = ModelZoo(weights_path="", device="cpu").max_models
    budget = zoo_mod.ZOO_SHARE * (limit - zoo_mod.RUNTIME_BYTES)
    worst = model_bytes("ResNet-152")
    assert 1 <= n <= len(zoo_mod.MODELS)
    assert n == 1 or n * worst <= budget  # fits
    assert n == len(zoo_mod.MODELS) or (n + 1) * worst > budget  # and is the most that fits
    expected = {2: 1, 4: 2, 16: len(zoo_mod.MODELS)}  # a tiny container, a small Space, a roomy machine
    assert n == expected.get(limit_gib, n)


# ----------------------------------------------------------------------------- locking


def test_a_slow_load_holds_up_neither_cached_models_nor_other_models():
    zoo = ModelZoo(weights_path="", device="cpu", max_models=6)
    started, release = threading.Event(), threading.Event()

    def load(model, tag):
        if model == "ResNet-50":  # a slow hub download
            started.set()
            release.wait(60)
        return _tiny()

    zoo._load = load
    cached = zoo.get(SHAPES_MODEL)
    slow = threading.Thread(target=zoo.get, args=("ResNet-50",))
    slow.start()
    assert started.wait(30)
    served: dict[str, object] = {}

    def others() -> None:
        served["cached"] = zoo.get(SHAPES_MODEL)
        served["other"] = zoo.get("ResNet-18")

    other = threading.Thread(target=others)
    other.start()
    other.join(30)  # a zoo holding one lock through the load would still be waiting here
    try:
        assert served.get("cached") is cached and "other" in served
        assert slow.is_alive()  # ...and all that while ResNet-50 was still loading
    finally:
        release.set()
        slow.join(30)
        other.join(30)
    assert zoo.get("ResNet-50").model == "ResNet-50"


def test_concurrent_first_requests_for_one_model_load_it_once():
    zoo = ModelZoo(weights_path="", device="cpu", max_models=6)
    n, calls, all_in = 4, [], threading.Event()

    def load(model, tag):
        calls.append(model)
        if len(calls) == n:
            all_in.set()
        all_in.wait(1.0)  # a zoo without a per-model lock lets all n requests in here; ours lets one
        return _tiny()

    zoo._load = load
    barrier, results = threading.Barrier(n), []

    def request() -> None:
        barrier.wait()
        results.append(zoo.get("ResNet-50"))

    threads = [threading.Thread(target=request) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == ["ResNet-50"]
    assert len(results) == n and all(r is results[0] for r in results)


def test_lru_bound_counts_the_load_in_flight_and_evicts_the_least_recently_used_after_it():
    zoo = ModelZoo(weights_path="", device="cpu", max_models=3)
    cached_while_loading = []

    def load(model, tag):
        cached_while_loading.append(len(zoo._cache))
        return _tiny()

    zoo._load = load
    for model in (SHAPES_MODEL, "ResNet-18", SHAPES_MODEL, "ResNet-34", SHAPES_MODEL):
        zoo.get(model)
    assert cached_while_loading == [0, 1, 2]  # with the one loading, never more than max_models in memory
    # ResNet-18 was the least recently used (first in, Shapes, was asked again): evicted when ResNet-34 came in
    assert list(zoo._cache) == [("ResNet-34", tags_for("ResNet-34")[0]), (SHAPES_MODEL, "shipped")]


def test_a_failed_load_evicts_nothing_and_is_not_remembered(tmp_path):
    """A load that fails (a mistyped hf-hub tag anyone can type, a pruned Playground net, an unreadable file)
    leaves the cached model where it was and its key nowhere: a visitor cannot empty other users' cache, and the
    model loads when asked again. With `max_models=1` the one cached model is the one a load would have evicted."""
    from resnet_lab.models.checkpoints import save_checkpoint

    zoo = ModelZoo(weights_path=str(tmp_path / "none"), device="cpu", max_models=1)
    real_load, failures = zoo._load, [OSError("disk full"), ValueError("no such export on the Hub")]

    def load(model, tag):
        if model == "ResNet-18" and failures:
            raise failures.pop()
        return _tiny()

    zoo._load = load
    cached = zoo.get(SHAPES_MODEL)
    with pytest.raises(ValueError, match="no such export"):  # the hub's reason, as `_load` says it
        zoo.get("ResNet-18", "hf-hub:someone/mistyped")
    with pytest.raises(ValueError, match=r"ResNet-18: its weights could not be read \(OSError\)"):
        zoo.get("ResNet-18")
    assert list(zoo._cache.values()) == [cached] and not zoo._loading

    path = save_checkpoint(build("resnet20", num_classes=2, seed=0), tmp_path / "playground-0123abcd-resnet20",
                           {"arch": "resnet20", "classes": ["a", "b"], "num_classes": 2})
    pruned = zoo.add_private(path).name
    path.unlink()  # a Playground run's files are pruned after an hour
    zoo._load = real_load
    with pytest.raises(ValueError, match="its checkpoint is gone"):
        zoo.get(pruned)
    assert zoo.get(SHAPES_MODEL) is cached and not zoo._loading  # still cached, not reloaded

    zoo._load = load
    assert zoo.get("ResNet-18").model == "ResNet-18"  # loads when asked again, and only then evicts
    assert list(zoo._cache) == [("ResNet-18", tags_for("ResNet-18")[0])] and not zoo._loading


def test_concurrent_requests_for_a_failing_load_share_its_one_failure():
    """Requests waiting for a load that fails get its reason, not a load each in turn (a hub timeout of seconds
    times every waiting visitor); the failure is then forgotten, and a request after it tries again."""
    import time

    zoo = ModelZoo(weights_path="", device="cpu", max_models=1)
    zoo._load = _tiny
    cached = zoo.get(SHAPES_MODEL)
    n, calls, key = 4, [], ("ResNet-50", "hf-hub:someone/mistyped")

    def load(model, tag):
        calls.append(tag)
        deadline = time.monotonic() + 30  # the first load waits until every request waits for it (not a measure)
        while len(calls) == 1 and zoo._loading[key].waiters < n and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError("no such export on the Hub")

    zoo._load = load
    barrier, errors = threading.Barrier(n), []

    def request() -> None:
        barrier.wait()
        try:
            zoo.get(*key)
        except ValueError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=request) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and errors == ["no such export on the Hub"] * n
    assert list(zoo._cache.values()) == [cached] and not zoo._loading and zoo._in_flight == 0
    with pytest.raises(ValueError, match="no such export"):  # forgotten: asked again, loaded again
        zoo.get(*key)
    assert len(calls) == 2


def test_concurrent_first_loads_stay_within_max_models():
    """Three different models asked for at once with `max_models=2` and one cached: each load (held at a gate)
    counts the models in memory, cached and loading. The gate opens when a second load gets in (a zoo that lets
    them pile up) or when a load waits for room (this one), so no timing decides the outcome."""
    zoo = ModelZoo(weights_path="", device="cpu", max_models=2)
    zoo._load = _tiny
    zoo.get(SHAPES_MODEL)
    gate, lock, inside, held = threading.Event(), threading.Lock(), [0], []

    class Room(threading.Condition):
        def wait(self, timeout=None):
            gate.set()  # a load waits for room: let the one inside finish
            return super().wait(timeout)

    zoo._room = Room(zoo._lock)

    def load(model, tag):
        with lock:
            inside[0] += 1
            held.append(len(zoo._cache) + inside[0])
            if inside[0] == 2:
                gate.set()
        gate.wait(60)  # reached only if nothing ever opens the gate: a failure, never a measurement
        with lock:
            inside[0] -= 1
        return _tiny()

    zoo._load = load
    models, results = ["ResNet-18", "ResNet-34", "ResNet-50"], {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, zoo.get(m))) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == models and all(results[m].model == m for m in models)
    assert len(held) == 3 and max(held) <= 2, held  # one cached and one loading, never three
    assert len(zoo._cache) == 1 and not zoo._loading and zoo._in_flight == 0


# ----------------------------------------------------------------------------- memory: what eviction really frees


def test_the_budget_comes_from_the_device_the_models_live_on(monkeypatch):
    """On CUDA the zoo's share of the GPU memory free now (not the container's RAM); on the CPU the cgroup's."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    monkeypatch.setattr(zoo_mod, "memory_limit", lambda: 4 * GiB)
    assert zoo_mod.zoo_budget("cuda") == int(zoo_mod.ZOO_SHARE * 10 * GiB)
    assert zoo_mod.zoo_budget("cpu") == int(zoo_mod.ZOO_SHARE * (4 * GiB - zoo_mod.RUNTIME_BYTES))
    sizes = [model_bytes(m) for m in zoo_mod.MODELS]
    assert zoo_mod._default_max_models(sizes, "cuda") == len(sizes)  # 5 GiB of a card holds all six
    assert zoo_mod._default_max_models(sizes, "cpu") == 2  # a 4 GiB Space holds two ResNet-152s


def test_peak_memory_never_exceeds_the_budget_over_random_orders(monkeypatch):
    """A fake device-memory counter: each model the zoo loads holds its `model_bytes` until it is really freed
    (a finalizer, with the cycle collector off, as it may be at any eviction), with graphs captured (the CPU
    stand-in). Over 20 random orders of requests the counter never exceeds the zoo's budget: an evicted model is
    freed when evicted, not when the cycle collector happens to run."""
    worst = max(model_bytes(m) for m in zoo_mod.MODELS)
    budget = int(3.5 * worst)  # room for three of the largest
    monkeypatch.setattr(zoo_mod, "zoo_budget", lambda device="cpu": budget)
    monkeypatch.setattr(graphs, "graphs_off_reason", lambda device: None)
    monkeypatch.setattr(graphs, "capture_cuda_graph", graphs.capture_on_cpu)
    monkeypatch.setattr(graphs, "BUCKETS", (1, 2))
    template = load_weights(None, "resnet20")
    used, peak = [0], [0]

    def load(model, tag):
        weights = copy.deepcopy(template)
        used[0] += model_bytes(model)
        peak[0] = max(peak[0], used[0])
        weakref.finalize(weights.model, lambda n=model_bytes(model): used.__setitem__(0, used[0] - n))
        return weights, ""

    rng = random.Random(0)
    tags_for("ResNet-18")  # imports timm now: an import's error kept by a module would keep the frames below alive
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            zoo = ModelZoo(weights_path="", device="cpu")
            assert zoo.max_models == 3
            zoo._load = load
            for model in rng.choices(zoo_mod.MODELS, k=8):
                assert zoo.get(model).classifier.graphed is not None
                assert used[0] <= budget
            del zoo
            assert used[0] == 0  # the zoo gone, every model is gone
    finally:
        gc.enable()
    assert 2 * worst < peak[0] <= budget
