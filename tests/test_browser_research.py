"""The Research tab at a desktop's width (1400 px) and a phone's (390 px), in a real browser (Debian's Chromium):
every section reachable without an overflow menu, nothing drawn over a figure (no label badge, no toolbar), table
headers broken only between words, no dropdown text under its arrow, and a screenshot of every section at both widths
in `SHOTS` (out/browser; the README's full-page ones are retaken by docs/screenshots.py).
One app for the module; skipped where Chromium is missing (a failure under CI, as tests/test_browser.py)."""

from __future__ import annotations

import re

import pytest
from conftest import SHOTS, browser_page, launched_app, require_chromium
from playwright.sync_api import expect

SECTIONS = ("Gradients", "Degradation", "Landscape", "Curvature", "Lesion")
WIDTHS = {"desktop": {"width": 1400, "height": 1000}, "phone": {"width": 390, "height": 844}}
# what may sit on a figure: Gradio's label badge and its toolbar (download, share, fullscreen)
OVERLAYS = "[data-testid='block-label'], .icon-button-wrapper, .icon-buttons, button[aria-label]"


@pytest.fixture(scope="module")
def page():
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    require_chromium()
    common._ZOO = ModelZoo(weights_path="", device="cpu")
    with launched_app() as (_, url), browser_page(url) as page:
        yield page


def _open_research(page, width: int, height: int) -> None:
    """The Research tab, chosen at a desktop's width (the app's top-level tab bar is not this file's subject), then
    the page at `width` x `height`."""
    page.set_viewport_size(WIDTHS["desktop"])
    page.wait_for_timeout(500)  # Gradio measures its tab bars on resize
    page.get_by_role("tab", name=re.compile("Research")).locator("visible=true").first.click()
    expect(page.locator("#research-sections")).to_be_visible()
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(500)  # Gradio measures its tab bars on resize


def _overlaps(page, figure_selector: str) -> list[str]:
    """What of Gradio's badges and toolbars intersects the drawn image of each visible figure."""
    return page.evaluate(
        """([figs, overlays]) => {
          const hits = [];
          for (const block of document.querySelectorAll(figs)) {
            const img = block.querySelector('img');
            if (!img || img.offsetParent === null) continue;  // not shown at this width
            const a = img.getBoundingClientRect();
            if (a.width === 0) continue;
            for (const o of block.querySelectorAll(overlays)) {
              const b = o.getBoundingClientRect();
              if (b.width === 0 || b.height === 0 || o.offsetParent === null) continue;
              if (!o.textContent.trim() && !o.querySelector('svg, button, img')) continue;  // an empty wrapper
              if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
                hits.push(block.id + ': ' + (o.getAttribute('aria-label') || o.className));
            }
          }
          return hits;
        }""", [figure_selector, OVERLAYS])


def _split_headers(page) -> list[str]:
    """Table header words drawn over more than one line (a word broken inside, "dept h")."""
    return page.evaluate(
        """() => {
          const bad = [];
          for (const th of document.querySelectorAll('#research-sections th')) {
            if (th.offsetParent === null) continue;
            const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
            for (let n = walker.nextNode(); n; n = walker.nextNode()) {
              const re = /\\S+/g;
              let m;
              while ((m = re.exec(n.textContent))) {
                const r = document.createRange();
                r.setStart(n, m.index);
                r.setEnd(n, m.index + m[0].length);
                // one line: every piece's top within half a line of the first (a fallback font's glyphs, e.g.
                // λ, sit a pixel or two off the others' top on the same line)
                const rects = [...r.getClientRects()].filter(x => x.width > 0);
                const tops = rects.map(x => x.top);
                const line = Math.max(...rects.map(x => x.height));
                if (rects.length && Math.max(...tops) - Math.min(...tops) > line / 2) bad.push(m[0]);
              }
            }
          }
          return bad;
        }""")


def _text_under_arrow(page) -> list[str]:
    """Dropdowns whose chosen text is wider than its box: it runs on under the arrow, cut ("32 px CIFAR-st")."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#research-sections input[role="listbox"], '
                                               + '#research-sections .wrap-inner input')]
              .filter(i => i.offsetParent !== null && i.scrollWidth > i.clientWidth + 1).map(i => i.value)""")


@pytest.mark.parametrize("size", list(WIDTHS))
def test_every_research_section_is_reachable_unobstructed_and_shot(page, size):
    width, height = WIDTHS[size].values()
    _open_research(page, width, height)
    tabs = page.locator("#research-sections")
    expect(tabs.locator(".overflow-menu:visible")).to_have_count(0)  # nothing behind "..."
    for name in SECTIONS:
        tab = tabs.get_by_role("tab", name=name, exact=True)
        expect(tab).to_be_visible()
        tab.click()
        section = page.locator(f"#research-{name.lower()}")
        figure = section.locator(".fig-wide img, .fig-narrow img, #degradation-plot img").locator("visible=true")
        expect(figure.first).to_be_visible(timeout=30_000)
        page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=figure.first.element_handle(),
                               timeout=30_000)
        if size == "phone":  # the one-column figure, as wide as the screen, not a four-panel row shrunk to it
            assert figure.first.bounding_box()["width"] <= width
        section.screenshot(path=str(SHOTS / f"research_{name.lower()}_{size}.png"))
        # open the full reading and the referee's verdict: their figures and tables are checked too
        for opener in ("The referee's reading", "The full reading"):
            acc = section.get_by_text(opener).locator("visible=true").first
            acc.click()
        page.wait_for_timeout(500)
        assert _overlaps(page, f"#research-{name.lower()} .block:has(> * img), "
                               f"#research-{name.lower()} .block:has(img)") == [], name
        assert _split_headers(page) == [], name
        assert _text_under_arrow(page) == [], name
        for opener in ("The referee's reading", "The full reading"):  # closed again, for the next width
            section.get_by_text(opener).locator("visible=true").first.click()


def test_the_verdict_opens_on_plain_words_with_the_referees_a_click_away(page):
    _open_research(page, *WIDTHS["desktop"].values())
    page.locator("#research-sections").get_by_role("tab", name="Gradients", exact=True).click()
    verdict = page.locator("#gradnorms-verdict")
    expect(verdict).to_contain_text("does not vanish")
    expect(verdict).not_to_contain_text("10^")  # the referee's numbers are not in the student's sentence
    referee = page.locator("#gradnorms-verdict-referee")
    numbers = referee.get_by_text(re.compile(r"first/last = 10\^7"))
    expect(numbers).not_to_be_visible()  # closed: one click away
    referee.get_by_text("The referee's reading").click()
    expect(numbers).to_be_visible()
