"""The batched /classify endpoint: every request gets its own answer, whatever its neighbours in the batch do."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr
import pytest
from conftest import encode
from gradio_client.exceptions import AppError

from resnet_lab.serving import inference
from resnet_lab.serving.zoo import SHAPES_MODEL, ModelZoo
from resnet_lab.ui import classify, common

MODEL, TAG = SHAPES_MODEL, "shipped"  # the shipped checkpoint: real weights, small, offline


@pytest.fixture(scope="module", autouse=True)
def offline_zoo():
    common._ZOO = ModelZoo(weights_path="", device="cpu")


@pytest.fixture
def files(tmp_path, photo):
    paths = {"good": tmp_path / "good.jpg", "truncated": tmp_path / "cut.webp", "empty": tmp_path / "empty.png",
             "text": tmp_path / "notes.png", "boom": tmp_path / "boom.png"}
    photo.save(paths["good"], quality=92)
    # a cut-off WebP: PIL raises OSError inside Image.open, which the old decoder let escape and fail the batch
    paths["truncated"].write_bytes(encode(photo, "WEBP")[:1500])
    paths["empty"].write_bytes(b"")
    paths["text"].write_bytes(b"just some text, renamed to .png")
    paths["boom"].write_bytes(encode(photo))
    return {k: str(v) for k, v in paths.items()}


def run(*images: str) -> tuple[list, list[str]]:
    n = len(images)
    return classify.classify_batch(list(images), [MODEL] * n, [TAG] * n)


def test_a_corrupt_upload_fails_alone(files):
    labels, infos = run(files["truncated"], files["good"])
    assert labels[0] is None and "truncated or corrupt" in infos[0]
    assert len(labels[1]) == 5 and "batch of 1; 2 requests in this queue batch" in infos[1]


def test_every_failing_request_gets_its_own_message(files):
    """Before: gr.Error with request 0's message, shown to all of them."""
    labels, infos = run(files["truncated"], files["empty"], files["text"])
    assert labels == [None, None, None]
    assert "truncated or corrupt" in infos[0] and "empty" in infos[1] and "not an image" in infos[2]
    assert len(set(infos)) == 3


def test_all_failing_for_one_reason_is_raised_once(files):
    with pytest.raises(gr.Error, match="truncated or corrupt"):
        run(files["truncated"], files["truncated"])


def test_good_requests_share_one_forward_pass(files):
    labels, infos = run(files["good"], files["good"])
    assert len(labels[0]) == 5 and labels[0] == labels[1]
    assert all("batch of 2; 2 requests" in info for info in infos)


def test_an_unexpected_error_in_one_decode_is_that_requests_own(files, monkeypatch, caplog):
    """Not an ImageError (a bug, an exotic failure): logged with its traceback, and the neighbour still answered."""
    real = inference.decode_image

    def flaky(src, **kw):
        if str(src).endswith("boom.png"):
            raise RuntimeError("something no one foresaw")
        return real(src, **kw)

    monkeypatch.setattr(inference, "decode_image", flaky)
    with caplog.at_level(logging.ERROR, logger=classify.log.name):
        labels, infos = run(files["boom"], files["good"])
    assert labels[0] is None and "went wrong on our side" in infos[0] and "RuntimeError" in infos[0]
    assert len(labels[1]) == 5
    assert any("something no one foresaw" in r.exc_text for r in caplog.records if r.exc_text)


def test_a_corrupt_and_a_good_file_batched_by_the_real_server(served_app, files, monkeypatch):
    """Through the real server and queue: a corrupt and a good upload in one batch (the info text says so).

    A first request holds the classify slot for a moment, so the two submitted
    meanwhile wait together and Gradio hands them to one call, as it does under load.
    """
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    real = inference.decode_image

    def slow_for_the_blocker(src, **kw):
        if str(src).endswith("blocker.jpg"):
            time.sleep(1.0)
        return real(src, **kw)

    monkeypatch.setattr(inference, "decode_image", slow_for_the_blocker)
    blocker = Path(files["good"]).with_name("blocker.jpg")
    blocker.write_bytes(Path(files["good"]).read_bytes())
    client = Client(served_app[1], verbose=False)
    for _ in range(5):  # with more than one classify slot (a bigger machine) they may still split: try again
        first = client.submit(handle_file(str(blocker)), MODEL, TAG, api_name="/classify")
        deadline = time.monotonic() + 120  # a bound for a stuck queue (fail, not hang CI), not a measurement
        while first.status().code in (Status.STARTING, Status.JOINING_QUEUE, Status.QUEUE_FULL, Status.IN_QUEUE,
                                      Status.SENDING_DATA):
            assert time.monotonic() < deadline, "the first request never started: the server's queue is stuck"
            time.sleep(0.02)
        jobs = [client.submit(handle_file(files[k]), MODEL, TAG, api_name="/classify") for k in ("truncated", "good")]
        first.result(timeout=120)
        try:
            (bad_label, bad_info), (good_label, good_info) = (job.result(timeout=120) for job in jobs)
        except AppError as e:  # the corrupt one ran alone and, alone, is raised: not the case under test
            assert "truncated or corrupt" in str(e)
            continue
        assert "truncated or corrupt" in bad_info and not (bad_label or {}).get("confidences")
        assert len(good_label["confidences"]) == 5 and good_info.count("forward pass") == 1
        if "batch of 1; 2 requests in this queue batch" in good_info:
            return
    pytest.fail("the corrupt and the good request never landed in one batch")
