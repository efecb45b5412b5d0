"""A model trained in the test on an image folder, then picked and used in the served app from a real browser
(issue 9, "In the app"): `python -m resnet_lab train --data folder:...` writes a checkpoint into the
RESNET_LAB_WEIGHTS folder, the app lists it under its own name, and Classify shows that model's own class names.

Like tests/test_browser.py it needs Debian's Chromium (or $CHROMIUM): without it the test skips with the reason,
except under CI (`CI` set), where a missing browser is a failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHOTS, browser_page, launched_app, require_chromium
from PIL import Image
from playwright.sync_api import expect

COLOURS = {"scarlet": (220, 30, 30), "ultramarine": (30, 40, 210)}  # names no built-in model knows
NAME = "mine (resnet20, 2 classes)"  # the picker's name for <weights>/mine.safetensors


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(weights folder holding mine.safetensors + mine.json, one of its training images): resnet20 trained for
    two epochs by the train command on 16 noisy red and blue squares, half PNG, half JPEG."""
    from resnet_lab.__main__ import main

    data = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (data / name).mkdir()
        for i in range(8):
            arr = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(data / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    weights = tmp_path_factory.mktemp("weights")
    assert main(["train", "--arch", "resnet20", "--data", f"folder:{data}", "--epochs", "2", "--batch-size", "4",
                 "--workers", "0", "--device", "cpu", "--quiet", "--out", str(weights / "mine")]) == 0
    return weights, data / "ultramarine" / "3.png"


@pytest.fixture(scope="module")
def page(trained):
    require_chromium()
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_LAB_WEIGHTS", str(trained[0]))
        common._ZOO = ModelZoo(device="cpu")  # reads RESNET_LAB_WEIGHTS, as the app started with it would
    try:
        with launched_app() as (_, url), browser_page(url) as page:
            yield page
    finally:
        common._ZOO = ModelZoo(weights_path="", device="cpu")


def test_pick_the_trained_model_and_classify_one_of_its_images(page, trained):
    from resnet_lab.models.weights import load_checkpoint
    from resnet_lab.serving.inference import Classifier

    weights, image = trained
    expect(page.locator("#status")).to_contain_text("weights", timeout=60_000)
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label("Model").click()
    page.get_by_role("option", name=NAME).click()
    expect(page.locator("#status")).to_contain_text("mine.safetensors", timeout=60_000)  # its own weights loaded
    page.locator("input[type='file']").first.set_input_files(str(image))
    page.get_by_role("button", name="Classify", exact=True).click()
    label = page.locator("[data-testid='label-output-value']").first
    expect(label).to_be_visible(timeout=60_000)
    # the model's own answer, computed here through the library: the page shows it, and both of its class names
    expected = Classifier(load_checkpoint(weights / "mine.safetensors"), device="cpu").predict([str(image)])[0]
    top1 = expected.topk[0][0]
    assert top1 in COLOURS
    expect(label).to_have_text(top1, timeout=30_000)
    for name, p in expected.topk:  # each of its two classes with the model's own probability, in percent
        meter = page.get_by_test_id(f"{name}-confidence-set").locator("meter")
        expect(meter).to_have_attribute("aria-valuenow", str(round(p * 100)))
    expect(page.get_by_text("mine.safetensors").first).to_be_visible()
    page.screenshot(path=str(SHOTS / "classify_trained_model.png"), full_page=True)
