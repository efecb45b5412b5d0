"""A real browser (Debian's Chromium, headless) driving the served page, as a person would.

It runs wherever /usr/bin/chromium (or $CHROMIUM) exists. Without it the tests skip
with the reason, except under CI (`CI` set), where a missing browser is a failure:
`.ci/run` installs it and stops early if it cannot.
"""

from __future__ import annotations

import pytest
from conftest import SHOTS, browser_page, launched_app, require_chromium
from playwright.sync_api import expect


@pytest.fixture(scope="module", autouse=True)
def short_live_runs():
    """The live runs cut to a few seconds: here the page is under test (buttons, figures, tables, text); what the
    runs compute is tested against the library at full size in tests/test_ui_research_*.py."""
    from resnet_lab.ui import playground
    from resnet_lab.ui.research import curvature, landscape, lesion

    mp = pytest.MonkeyPatch()
    for module in (curvature, landscape, lesion):
        mp.setattr(module, "LIVE_BUDGET_S", 4.0)
    mp.setattr(playground, "TIME_LIMIT_S", 1e9)  # never refused here, however busy the machine (tested elsewhere)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def page():
    """A page of an app of its own (not the session's shared `served_app`: what other test files did to that
    server's queue and zoo cannot reach the browser), launched only once Chromium is known to be there."""
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    require_chromium()
    common._ZOO = ModelZoo(weights_path="", device="cpu")
    with launched_app() as (_, url), browser_page(url) as page:
        yield page


def test_classify_an_example_in_the_browser(page):
    expect(page.locator("#status")).to_contain_text("weights", timeout=60_000)
    page.get_by_role("tab", name="Classify").click()
    # offline the Shapes net is the default, and it is offered Shapes samples; a click fills the image and runs
    page.locator(".examples").locator("visible=true").get_by_text("star", exact=True).first.click()
    expect(page.locator("#classify-image img[src*='shapes_star']")).to_be_visible(timeout=60_000)
    label = page.locator("[data-testid='label-output-value']").first
    expect(label).to_be_visible(timeout=60_000)
    expect(page.get_by_text("forward pass")).to_be_visible(timeout=60_000)
    page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)


def test_gradcam_heatmap_appears_in_the_browser(page):
    page.get_by_role("tab", name="Grad-CAM").click()
    page.get_by_role("button", name="Draw a Shapes sample (true box known)").click()
    # The draw is its own event: explaining before it has filled the image would explain nothing (a race on a
    # loaded machine), so wait for its note first.
    expect(page.get_by_text("Shapes sample #0")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.get_by_text("Pointing game")).to_be_visible(timeout=90_000)
    heat = page.locator("#gradcam-overlay img")
    expect(heat).to_be_visible(timeout=30_000)
    assert heat.evaluate("img => img.naturalWidth") > 300  # the enlarged overlay with its colorbar
    page.screenshot(path=str(SHOTS / "gradcam.png"), full_page=True)


def _not_blank(locator, name: str) -> None:
    """A screenshot of the element, checked for content: a blank or single-colour figure has ~no spread."""
    import numpy as np
    from PIL import Image

    path = SHOTS / name
    locator.screenshot(path=str(path))
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.std() > 20 and pixels.shape[0] > 150, (name, pixels.shape, pixels.std())


SECTIONS = {"Gradients": "#gradnorms-shipped-plot", "Degradation": "#degradation-plot",
            "Landscape": "#landscape-shipped-plot", "Curvature": "#curvature-convergence",
            "Lesion": "#lesion-shipped-plot"}
LIVE = {"Gradients": "#gradnorms-table", "Degradation": None, "Landscape": "#landscape-table",
        "Curvature": "#curvature-table", "Lesion": "#lesion-table"}


def test_each_research_section_opens_on_its_figure_and_verdict(page):
    """Every sub-tab: its shipped figure drawn (a screenshot of it is not blank), its verdict beside it, the full
    reading closed, and no empty live table before a run."""
    page.get_by_role("tab", name="Research", exact=True).click()
    for tab, figure in SECTIONS.items():
        page.get_by_role("tab", name=tab, exact=True).click()
        fig = page.locator(f"{figure} img")
        fig.scroll_into_view_if_needed()
        expect(fig).to_be_visible(timeout=30_000)
        page.wait_for_function("(sel) => { const i = document.querySelector(sel); return i && i.complete && "
                               "i.naturalWidth > 0; }", arg=f"{figure} img", timeout=30_000)
        _not_blank(fig, f"figure_{tab.lower()}.png")
        verdict = page.locator(f"#{tab.lower() if tab != 'Gradients' else 'gradnorms'}-verdict")
        expect(verdict).to_contain_text("At a glance")
        assert len(verdict.inner_text().split(". ")) <= 5  # a few sentences, not the report
        reading = page.get_by_text("The full reading: method, every number, the tables")
        expect(reading.locator("visible=true")).to_have_count(1)  # closed, one click away
        if LIVE[tab]:
            expect(page.locator(LIVE[tab])).not_to_be_visible()  # nothing to show before a run
        page.screenshot(path=str(SHOTS / f"research_{tab.lower()}.png"), full_page=True)


def test_research_tab_shows_shipped_curves_and_measures_a_sweep(page):
    page.get_by_role("tab", name="Research", exact=True).click()
    page.get_by_role("tab", name="Degradation", exact=True).click()
    expect(page.locator("#degradation-plot img")).to_be_visible(timeout=30_000)  # the shipped curves, on load
    expect(page.locator("#degradation-verdict")).to_contain_text("plain56")
    page.get_by_text("The full reading: method, every number, the tables").locator("visible=true").first.click()
    table = page.locator("#degradation-table")
    for arch in ("plain20", "plain56", "resnet20", "resnet56"):
        expect(table).to_contain_text(arch)
    expect(page.get_by_role("button", name="Re-run a short version")).to_contain_text("on this server",
                                                                                       timeout=30_000)  # on load
    page.get_by_role("tab", name="Gradients", exact=True).click()
    depths = page.locator("#research-archs")  # the smallest sweep: ResNet-20 and its twin, one seed, at 32 px
    for name in ("resnet56 (CIFAR-style, 32 px)", "resnet110 (CIFAR-style, 32 px)"):
        depths.get_by_label(name, exact=True).uncheck()
    expect(depths.get_by_label("resnet20 (CIFAR-style, 32 px)", exact=True)).to_be_checked()
    seeds = page.locator("#research-seeds input[type='number']")
    seeds.fill("1")
    seeds.press("Enter")
    page.get_by_role("button", name="Measure", exact=True).click()
    expect(page.locator("#gradnorms-plot img")).to_be_visible(timeout=60_000)
    result = page.locator("#gradnorms-table")
    expect(result).to_contain_text("plain20", timeout=60_000)
    expect(result).to_contain_text("resnet20")
    expect(result).not_to_contain_text("resnet56")
    expect(page.locator("#gradnorms-text")).to_contain_text("Gradients grow; they do not vanish")
    page.screenshot(path=str(SHOTS / "research.png"), full_page=True)


def test_research_full_reading_and_a_live_lesion_run(page):
    """The full reading opens with its figures and numbers, and a live run draws, tabulates and explains (one live
    run here: the others' results are tested against the library in tests/test_ui_research_*.py)."""
    page.get_by_role("tab", name="Research", exact=True).click()
    for tab, plot in (("Landscape", "#landscape-shipped-sharpness img"), ("Curvature", "#curvature-density img")):
        page.get_by_role("tab", name=tab, exact=True).click()
        page.get_by_text("The full reading: method, every number, the tables").locator("visible=true").first.click()
        page.locator(plot).scroll_into_view_if_needed()
        expect(page.locator(plot)).to_be_visible(timeout=30_000)
        expect(page.locator(f"#{tab.lower()}-shipped-text")).not_to_contain_text("not shipped")
    expect(page.locator("#landscape-shipped-text")).not_to_be_visible()  # one section at a time
    page.get_by_role("tab", name="Landscape", exact=True).click()
    expect(page.locator("#landscape-shipped-text")).to_contain_text("direction seeds")
    page.get_by_role("tab", name="Curvature", exact=True).click()
    expect(page.locator("#curvature-shipped-text")).to_contain_text("λmax")
    page.get_by_role("tab", name="Lesion", exact=True).click()
    expect(page.locator("#lesion-plot")).not_to_be_visible()
    page.locator("#lesion-run").click()
    expect(page.locator("#lesion-plot img")).to_be_visible(timeout=120_000)
    expect(page.locator("#lesion-table")).to_contain_text("none (intact)", timeout=30_000)
    expect(page.locator("#lesion-text")).to_contain_text("intact accuracy")
    page.screenshot(path=str(SHOTS / "research_lesion_live.png"), full_page=True)


FIGURES = ("loss", "acc", "map-plain", "map-resnet", "ratios")
# Anything of a figure's block drawn over its drawing (a label badge, a toolbar, a status badge): the drawing's
# own elements and the boxes that hold it are not counted.
COVERING = """(sel) => {
    const block = document.querySelector(sel), canvas = block.querySelector('canvas');
    const c = canvas.getBoundingClientRect();
    return [...block.querySelectorAll('*')].filter(el => {
        if (el.contains(canvas) || el.closest('.vega-embed')) return false;
        const r = el.getBoundingClientRect(), st = getComputedStyle(el);
        if (!r.width || !r.height || st.visibility === 'hidden' || st.display === 'none') return false;
        if (+st.opacity === 0) return false;
        return r.left < c.right && r.right > c.left && r.top < c.bottom && r.bottom > c.top;
    }).map(el => el.outerHTML.slice(0, 120));
}"""


def _figures_drawn_and_uncovered(page) -> None:
    for figure in FIGURES:
        canvas = page.locator(f"#playground-{figure} canvas")
        expect(canvas).to_be_visible(timeout=30_000)
        assert page.evaluate(COVERING, f"#playground-{figure}") == [], figure


def _verdict_names_chance_and_both_nets(page, depth: int) -> None:
    verdict = page.locator("#playground-verdict")
    expect(verdict).to_contain_text("chance", timeout=60_000)
    for net in (f"plain-{depth}", f"ResNet-{depth}"):
        expect(verdict).to_contain_text(net)
    assert len(verdict.inner_text().split(". ")) <= 4  # a sentence or two, not the report
    page.get_by_text("The referee's detail").click()  # one click away
    expect(page.locator("#playground-referee")).to_contain_text("1/K = 12.5", timeout=10_000)


def test_playground_trains_both_nets_live_stops_and_offers_the_pair(page):
    """A short run to its end, then a longer one: see the status and figures advance while it trains, Stop, read
    the verdict (after the end and after Stop), get the trained nets, and pick one in Classify and in the Research
    sections (this session's own). Figures: nothing drawn over them, one column on a phone."""
    import re

    page.get_by_role("tab", name="Playground", exact=True).click()
    expect(page.locator("#playground-estimate")).to_contain_text("on Shapes", timeout=60_000)  # after load
    expect(page.locator("#playground-referee-box")).not_to_be_visible()  # no verdict before a run
    page.get_by_label("Depth (6n+2 layers)").click()
    page.get_by_role("option", name="20", exact=True).click()
    steps = page.locator("#playground-steps input[type='number']")
    steps.fill("20")
    steps.press("Enter")
    page.locator("#playground-train").click()
    status = page.locator("#playground-status")
    expect(status).to_contain_text("done", timeout=180_000)
    _verdict_names_chance_and_both_nets(page, 20)  # after a run that ran to its end

    steps.fill("300")
    steps.press("Enter")
    page.locator("#playground-train").click()
    expect(page.locator("#playground-train")).to_be_disabled()  # from the click until the run has ended
    expect(page.locator("#playground-verdict")).to_have_text("")  # the last run's verdict cleared at the click
    expect(status).to_contain_text(re.compile(r"training\*?\*?: step [1-9]"), timeout=120_000)
    first = int(re.search(r"step (\d+)", status.inner_text()).group(1))
    page.wait_for_function("(n) => { const m = document.querySelector('#playground-status')?.innerText.match("
                           "/step (\\d+)/); return m && +m[1] >= n + 3; }", arg=first, timeout=60_000)  # it grows
    _figures_drawn_and_uncovered(page)  # while it streams
    page.locator("#playground-stop").click()
    expect(status).to_contain_text("stopped", timeout=60_000)
    expect(page.locator("#playground-train")).to_be_enabled(timeout=30_000)
    expect(page.locator("#playground-verdict")).to_contain_text("Stopped at step")
    _verdict_names_chance_and_both_nets(page, 20)  # after Stop
    _figures_drawn_and_uncovered(page)
    files = page.locator("#playground-files")
    for name in ("resnet20", "plain20", "playground_curves"):  # Gradio splits off suffixes
        expect(files).to_contain_text(name, timeout=30_000)
    expect(files).to_contain_text(".safetensors")
    page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)  # after Stop: a full-page shot relays out
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the figures in one column, each on the screen
    page.wait_for_function("() => { const c = document.querySelector('#playground-acc canvas'); "
                           "return c && c.getBoundingClientRect().right <= 390; }", timeout=30_000)
    boxes = [page.locator(f"#playground-{figure}").bounding_box() for figure in FIGURES]
    for above, below in zip(boxes, boxes[1:]):
        assert below["y"] >= above["y"] + above["height"] - 1 and below["x"] + below["width"] <= 390
    _figures_drawn_and_uncovered(page)
    page.screenshot(path=str(SHOTS / "playground_phone.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1100})

    page.get_by_role("tab", name="Classify").click()  # the trained ResNet, picked and used
    page.get_by_label("Model").click()
    option = page.get_by_role("option", name=re.compile(r"playground-[0-9a-f]{12}-resnet20")).last  # 2 runs: newest
    expect(option).to_be_visible(timeout=30_000)
    option.click()
    expect(page.locator("#status")).to_contain_text("playground-", timeout=60_000)
    page.locator("img[src*='shapes_circle']").first.click()
    expect(page.locator("#classify-image img[src*='shapes_circle']")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("[data-testid='label-output-value']").first).to_be_visible(timeout=60_000)
    page.get_by_role("tab", name="Research", exact=True).click()
    page.get_by_role("tab", name="Lesion", exact=True).click()
    page.locator("#lesion-model input").click()
    expect(page.get_by_role("option", name=re.compile("your Playground run")).first).to_be_visible(timeout=30_000)
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Playground", exact=True).click()
    expect(status).to_contain_text("stopped")  # still: Stop's own late reply once overwrote it with "Stopping…"


def test_a_refused_playground_run_says_why_and_train_both_works_again(page, tmp_path):
    """A zip refused when the run's turn comes: the status line says the run did not start and why (not "starting…"),
    and Train both is enabled again (Gradio 6.31's frontend runs no `.then` after an error: it stayed disabled)."""
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.png", b"x")
    page.get_by_role("tab", name="Playground", exact=True).click()
    page.locator("#playground-zip input[type='file']").set_input_files(str(evil))
    expect(page.locator("#playground-estimate")).to_contain_text("outside its own folder", timeout=60_000)
    page.locator("#playground-train").click()
    expect(page.locator("#playground-status")).to_contain_text("not started: the zip names a path outside",
                                                              timeout=60_000)
    expect(page.locator("#playground-train")).to_be_enabled(timeout=30_000)
    page.locator("#playground-zip button[aria-label='Clear']").click()  # leave the page as it was found
    expect(page.locator("#playground-estimate")).to_contain_text("on Shapes", timeout=60_000)
