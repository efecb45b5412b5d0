"""The app served in-process and driven with gradio_client, as an API user would."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import encode
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from resnet_lab.zoo import ASSETS, SHAPES_MODEL

CAT = str(ASSETS / "chelsea.jpg")


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


def test_queue_is_bounded(served_app):
    demo, _ = served_app
    assert demo._queue.max_size == 32
    assert demo._queue.default_concurrency_limit in (1, 2)  # 1 on a CPU, 2 on a GPU
    assert all(fn.concurrency_limit in ("default", 1, 2) for fn in demo.fns.values() if fn.queue)


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
