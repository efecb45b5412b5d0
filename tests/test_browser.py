"""A real browser (Debian's Chromium, headless) driving the served page, as a person would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("RESNET_LAB_SCREENSHOTS", Path(__file__).resolve().parent.parent / "out" / "browser"))


@pytest.fixture(scope="module")
def page(served_app):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(served_app[1], wait_until="load", timeout=60_000)
        yield page
        browser.close()


def test_classify_an_example_in_the_browser(page):
    expect(page.locator("#status")).to_contain_text("weights", timeout=60_000)
    page.get_by_role("tab", name="Classify").click()
    page.locator("img[src*='chelsea']").first.click()  # the example thumbnail
    page.get_by_role("button", name="Classify", exact=True).click()
    label = page.locator("[data-testid='label-output-value']").first
    expect(label).to_be_visible(timeout=60_000)
    expect(page.get_by_text("forward pass")).to_be_visible(timeout=60_000)
    page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)


def test_gradcam_heatmap_appears_in_the_browser(page):
    page.get_by_role("tab", name="Grad-CAM").click()
    page.get_by_role("button", name="Draw a Shapes sample (true box known)").click()
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.get_by_text("Pointing game")).to_be_visible(timeout=90_000)
    heat = page.locator("#gradcam-overlay img")
    expect(heat).to_be_visible(timeout=30_000)
    assert heat.evaluate("img => img.naturalWidth") > 300  # the enlarged overlay with its colorbar
    page.screenshot(path=str(SHOTS / "gradcam.png"), full_page=True)
