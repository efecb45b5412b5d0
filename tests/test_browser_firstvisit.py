"""A visitor's first five minutes (issue 25), in a real browser: every tab in sight on a laptop and on a phone,
examples that run when clicked, an answer that never stands beside an image it is not about, the offline notice
said once, and a faithfulness table a reader can read.

Like tests/test_browser.py it needs Debian's Chromium (or $CHROMIUM): without it the tests skip with the reason,
except under CI (`CI` set), where a missing browser is a failure. One app for the whole module.
"""

from __future__ import annotations

import re

import pytest
from conftest import SHOTS, browser_page, launched_app, require_chromium
from playwright.sync_api import expect

TOP_TABS = ("Classify", "Grad-CAM", "Playground", "Research")
PHONE, LAPTOP = {"width": 390, "height": 844}, {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def page():
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    require_chromium()
    common._ZOO = ModelZoo(weights_path="", device="cpu")  # offline: the Shapes net first, ImageNet nets random
    with launched_app() as (_, url), browser_page(url) as page:
        expect(page.locator("#status")).to_contain_text("weights", timeout=60_000)
        yield page


def _example(page, caption: str) -> None:
    page.locator(".examples").locator("visible=true").get_by_text(caption, exact=True).first.click()


def test_every_top_tab_is_in_sight_on_a_laptop_and_on_a_phone(page):
    for size in (LAPTOP, PHONE):
        page.set_viewport_size(size)
        page.wait_for_timeout(500)  # Gradio measures the tabs again on resize
        for name in TOP_TABS:
            tab = page.get_by_role("tab", name=name, exact=True)
            expect(tab).to_be_visible()
            box = tab.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], (name, size, box)
        expect(page.locator("#top-tabs .overflow-menu").locator("visible=true")).to_have_count(0)
        page.screenshot(path=str(SHOTS / f"firstvisit_tabs_{size['width']}.png"))
    page.set_viewport_size(LAPTOP)


def test_an_example_runs_when_clicked_and_a_new_image_clears_the_answer(page, tmp_path):
    from PIL import Image

    page.get_by_role("tab", name="Classify", exact=True).click()
    label = page.locator("#classify-label [data-testid='label-output-value']")
    _example(page, "star")  # the Shapes net is the offline default: Shapes samples are offered
    expect(label).to_have_text("star", timeout=60_000)  # ran, without pressing Classify
    expect(page.locator("#classify-info")).to_contain_text("only knows 8 shapes")
    other = tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (128, 128, 128)).save(other)
    page.locator("#classify-image input[type='file']").set_input_files(str(other))
    expect(page.locator("#classify-image img[src*='grey']")).to_be_visible(timeout=30_000)
    expect(label).to_have_count(0, timeout=30_000)  # the star's answer is gone
    expect(page.locator("#classify-info")).not_to_contain_text("forward pass")


def test_the_offline_notice_is_said_once_in_words_with_its_details_folded(page):
    page.get_by_role("tab", name="Classify", exact=True).click()
    page.get_by_label("Model").first.click()
    page.get_by_role("option", name="ResNet-18", exact=True).click()
    expect(page.locator("#status")).to_contain_text("random weights", timeout=60_000)
    _example(page, "cat")  # an ImageNet net is offered photos
    expect(page.locator("#classify-info")).to_contain_text("its confidence means nothing", timeout=60_000)
    expect(page.get_by_text("could not be downloaded").locator("visible=true")).to_have_count(1)
    for internal in ("HF_HUB_OFFLINE", "RESNET_LAB_WEIGHTS", "load_checkpoint"):  # folded under "Details"
        expect(page.get_by_text(internal).locator("visible=true")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "firstvisit_random_weights.png"), full_page=True)
    page.get_by_label("Model").first.click()
    page.get_by_role("option", name="Shapes ResNet-20", exact=True).click()
    expect(page.locator("#status")).to_contain_text("shapes_resnet20", timeout=60_000)


def test_the_faithfulness_table_reads_as_words_with_one_row_per_measurement(page):
    page.get_by_role("tab", name="Grad-CAM", exact=True).click()
    page.get_by_text("How faithful are these maps?").click()
    table = page.locator("#faithfulness-table")
    expect(table).to_contain_text("Pointing game", timeout=30_000)
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts() if h.strip()]
    assert headers and not [h for h in headers if re.fullmatch(r"[a-z0-9.]+(_[a-z0-9.]+)+", h)], headers
    rows = [tuple(c.strip() for c in r.get_by_role("gridcell").all_inner_texts()[:2])
            for r in table.get_by_role("row").all()[1:]]
    assert rows and len(rows) == len(set(rows)), rows  # (method, stage) once each
    assert sum(method == "Integrated Gradients" for method, _ in rows) == 1, rows


# Gradio's label badge and toolbar float over a block's top corners: on a picture they hide part of it
COVERS_PICTURE = """(blocks) => {
    const hits = [];
    for (const block of blocks) {
        const pics = [...block.querySelectorAll('img')].filter(i => i.offsetParent !== null && i.width > 0);
        const over = [...block.querySelectorAll("label[data-testid='block-label'], label.float, .icon-button-wrapper")]
            .filter(o => o.offsetParent !== null && o.getBoundingClientRect().width > 0)
            .filter(o => o.textContent.trim() || o.querySelector('button, a, svg'));  // not an empty wrapper
        for (const img of pics) {
            const a = img.getBoundingClientRect();
            for (const o of over) {
                const b = o.getBoundingClientRect();
                if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
                    hits.push((block.id || block.className) + ': ' + o.className);
            }
            // a picture shown smaller than it was drawn is not shrunk "pixelated": that drops whole pixel columns
            // (the colour bar's "0" read "C")
            if (img.naturalWidth > a.width + 1 && getComputedStyle(img).imageRendering === 'pixelated')
                hits.push((block.id || block.className) + ': shrunk pixelated');
        }
    }
    return hits;
}"""


def test_no_badge_or_toolbar_covers_an_example_or_a_map_and_the_colour_bar_stays_legible(page):
    """A first visit's complaint: the examples' caption badge cut the first row of tiles, and Grad-CAM's badge and
    toolbar sat on the map and the top of its colour bar, whose labels read "C.5" and "C" once shrunk pixelated."""
    page.get_by_role("tab", name="Grad-CAM", exact=True).click()
    page.get_by_role("button", name="Draw a Shapes sample (true box known)").click()
    expect(page.get_by_text("Shapes sample #0")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Explain", exact=True).click()
    for figure in ("#gradcam-overlay img", "#gradcam-second img"):
        expect(page.locator(figure)).to_be_visible(timeout=90_000)
    for size in (LAPTOP, PHONE):
        page.set_viewport_size(size)
        page.wait_for_timeout(500)
        blocks = page.locator("#gradcam-overlay, #gradcam-second, .examples").locator("visible=true")
        assert blocks.count() >= 3
        assert page.evaluate(COVERS_PICTURE, blocks.element_handles()) == [], size
    page.set_viewport_size(LAPTOP)
