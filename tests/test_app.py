"""The app served in-process and driven with gradio_client, as an API user would."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from resnet_lab.runtime import resources
from resnet_lab.serving.zoo import ASSETS, SHAPES_MODEL
from resnet_lab.ui import common

CAT = str(ASSETS / "chelsea.jpg")
SHAPE = str(ASSETS / "shapes_star.png")
GRADCAM_ARGS = ("layer3", "top-1 prediction", "jet", 0.5, False, "Guided Grad-CAM")


@pytest.fixture(scope="module")
def app(served_app):
    """app.py, importable once the served app's fixture has put the project root on the path."""
    import app

    return app


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[1], verbose=False)


def classify(client, path, model=SHAPES_MODEL, tag="shipped"):
    return client.predict(handle_file(path), model, tag, api_name="/classify")


def test_endpoints_are_named(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/gradcam", "/compare_depths"} <= set(names)


def test_classify_endpoint(client):
    label, info = classify(client, CAT, "ResNet-18", "resnet18.tv_in1k")
    assert len(label["confidences"]) == 5
    assert "forward pass" in info


def test_bad_files_get_our_message_and_the_server_keeps_serving(client, tmp_path, photo):
    cases = {
        "broken.jpg": (encode(photo, "JPEG")[:1500], "truncated or corrupt"),
        "empty.png": (b"", "empty"),
        "vector.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "SVG"),
        "notes.png": (b"just some text, renamed to .png", "not an image"),
    }
    for name, (raw, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(raw)
        with pytest.raises(AppError, match=message):
            classify(client, str(p))
        label, _ = classify(client, CAT)  # the next good request works
        assert len(label["confidences"]) == 5


def test_16bit_upload_through_the_server(client, tmp_path, photo):
    gray8 = np.asarray(photo.convert("L"))
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert classify(client, str(tmp_path / "g8.png"))[0] == classify(client, str(tmp_path / "g16.png"))[0]


def test_gradcam_endpoint_returns_overlay_and_raw_map(client):
    out = client.predict(handle_file(CAT), "ResNet-18", "resnet18.tv_in1k", "layer4", "top-1 prediction", "jet",
                         0.5, False, "Guided Grad-CAM", api_name="/gradcam")
    overlay, raw = out[0], out[1]
    assert Image.open(overlay).size == (451 + 70, 300)  # chelsea.jpg is 451x300, plus the colorbar
    assert np.load(raw).shape == (224, 224)


def test_gradcam_bad_input(client, tmp_path):
    p = tmp_path / "zero.jpg"
    p.write_bytes(b"")
    with pytest.raises(AppError, match="empty"):
        client.predict(handle_file(str(p)), SHAPES_MODEL, "shipped", "layer3", "top-1 prediction", "jet", 0.5,
                       False, "Guided Grad-CAM", api_name="/gradcam")


# What each event runs (its function's name): every one that loads a model or computes is in a shared group.
QUICK_FNS = {"classify_batch", "explain_event", "status_text"}
LONG_FNS = {"compare_depths", "recompute_faithfulness", "run_gradnorms", "rerun_degradation", "run_landscape",
            "run_lesion", "run_top_eigenvalue", "train"}  # train: the Playground's run
# UI updates (ms), and the two estimates shown on load (the cost model: a probe of ~1 s once per process, then ms)
CHEAP_FNS = {"on_model_change", "shapes_sample", "<lambda>", "rerun_label", "load_example", "_estimate",
             "stop", "_rerun_verdict", "offer", "shown_examples", "clear_result",
             "pick_example", "queue_run", "ready"}  # stop: the Playground's Stop
# sets an event (queue=False); shown_examples: the examples offered for a model; clear_result: a new input;
# pick_example: an example fills the image; queue_run / ready: the Playground's
# Train both disabled / enabled again (queue=False)


def test_one_concurrency_model(served_app, app):
    """Heavy events share two app-wide groups sized to the hardware; only cheap UI updates are outside them."""
    demo, _ = served_app
    assert demo._queue.max_size == app.MAX_QUEUE == 32
    assert demo._queue.default_concurrency_limit == 1
    quick = 2 if torch.cuda.is_available() else max(1, resources.cpu_count() // 2)  # 1 on this 2-core CPU
    seen = set()
    for fn in demo.fns.values():
        name = fn.fn.__name__
        seen.add(name)
        if name in QUICK_FNS:
            assert (fn.concurrency_id, fn.concurrency_limit) == ("quick", quick), name
        elif name in LONG_FNS:
            assert (fn.concurrency_id, fn.concurrency_limit) == ("long", 1), name
        else:
            assert name in CHEAP_FNS, f"{name} runs outside the shared groups"
            assert fn.concurrency_limit == "default" and fn.concurrency_id not in ("quick", "long"), name
    assert QUICK_FNS | LONG_FNS <= seen


def test_unknown_tag_in_the_status_line_gets_our_message(client):
    with pytest.raises(AppError, match="ResNet-50 has no weights 'resnet50.no_such_tag'"):
        client.predict("ResNet-50", "resnet50.no_such_tag", api_name="/status")
    assert "Shapes ResNet-20" in client.predict(SHAPES_MODEL, "shipped", api_name="/status")


def test_gradio_cache_is_pruned(app, monkeypatch):
    """Every upload and returned file lands in Gradio's cache; `delete_cache` makes Gradio delete them by age.

    The app's setting is checked, then the same app is served with a seconds-long setting, and the files one
    Grad-CAM request left in the cache are seen to go (the examples, kept by Gradio, stay).
    """
    assert app.DELETE_CACHE == (common.KEEP_OUTPUTS_S // 4, common.KEEP_OUTPUTS_S)  # as old as our own outputs
    monkeypatch.setattr(app, "DELETE_CACHE", (1, 3))  # every second, what is older than 3 s
    demo = app.build_demo()
    assert demo.delete_cache == (1, 3)  # the app's setting is the one its Blocks use
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **app.LAUNCH)
    try:
        def cached() -> set[str]:
            return {f for files in demo.temp_file_sets for f in files}

        kept = {f for b in demo.blocks.values() for f in getattr(b, "keep_in_cache", ())}
        before = cached()
        Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(SHAPE), SHAPES_MODEL, "shipped", *GRADCAM_ARGS, api_name="/gradcam")
        new = cached() - before - kept
        assert len(new) >= 3 and all(Path(f).is_file() for f in new)  # the upload, the overlay, the raw map, ...
        deadline = time.monotonic() + 60  # a bound for a failure, not a measurement
        while any(Path(f).exists() for f in new) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [f for f in new if Path(f).exists()]
        assert kept and all(Path(f).is_file() for f in kept)
    finally:
        demo.close()


def test_no_user_controlled_paths_are_served(served_app):
    url = served_app[1]
    for path in ("/etc/passwd", __file__):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert e.value.code in (403, 404)
    with urllib.request.urlopen(f"{url}gradio_api/file={CAT}", timeout=10) as r:  # assets/ is allowed
        assert r.status == 200


def test_file_size_limit(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (21 * 2**20))
    with pytest.raises(Exception, match="(?i)too large|413|size"):
        classify(client, str(big))


def test_a_wrong_precision_setting_stops_the_app_with_its_message(app, monkeypatch, capsys):
    """RESNET_LAB_PRECISION is checked once at start-up: a typo stops the app naming the allowed values, before any
    model loads, instead of failing every request; a valid one is said in the log."""
    monkeypatch.setattr("sys.argv", ["app.py", "--device", "cpu"])
    monkeypatch.setenv("RESNET_LAB_DEVICE", "cpu")  # main() sets it; monkeypatch restores it afterwards
    monkeypatch.setenv("RESNET_LAB_PRECISION", "fp8")
    monkeypatch.setattr(app, "build_demo", lambda: pytest.fail("the app was built despite the bad setting"))
    with pytest.raises(SystemExit) as e:
        app.main()
    assert "RESNET_LAB_PRECISION='fp8'" in str(e.value) and "auto, fp32, bf16, fp16" in str(e.value)
    monkeypatch.setenv("RESNET_LAB_PRECISION", "fp32")

    class Launched(Exception):
        pass

    class Demo:
        def launch(self, **kw):
            raise Launched

    monkeypatch.setattr(app, "build_demo", Demo)
    with pytest.raises(Launched):
        app.main()
    assert "precision: RESNET_LAB_PRECISION=fp32" in capsys.readouterr().out


def test_a_user_error_logs_one_line_and_no_traceback(client, tmp_path, capfd, caplog):
    """A visitor's empty upload is no fault of the app's: one line in the server's log, not Gradio's traceback."""
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with caplog.at_level("WARNING", logger="resnet_lab.ui.common"), pytest.raises(AppError, match="empty"):
        classify(client, str(empty))
    said = [r.getMessage() for r in caplog.records if r.name == "resnet_lab.ui.common"]
    assert len(said) == 1 and "empty" in said[0] and "\n" not in said[0], said
    assert "Traceback" not in capfd.readouterr().err
