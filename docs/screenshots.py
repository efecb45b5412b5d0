"""Retake the README's screenshots: every tab and Research section at 1400 px (`<name>_desktop.png`) and 390 px
(`<name>_phone.png`), written into docs/. Offline, as a first visitor sees it (the Shapes net; the ImageNet nets on
random weights). Needs Playwright and Debian's Chromium (`$CHROMIUM`, else /usr/bin/chromium).

    HF_HUB_OFFLINE=1 python docs/screenshots.py               # Classify, Grad-CAM, Research: about a minute
    HF_HUB_OFFLINE=1 python docs/screenshots.py --playground  # and the Playground's default run (about 2 min)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

WIDTHS = {"desktop": {"width": 1400, "height": 1000}, "phone": {"width": 390, "height": 844}}
SECTIONS = ("Gradients", "Degradation", "Landscape", "Curvature", "Lesion")


def shoot(url: str, out: Path, playground: bool) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        for size, viewport in WIDTHS.items():
            page = browser.new_page(viewport=viewport)
            page.goto(url, wait_until="load", timeout=60_000)
            expect(page.locator("#status")).to_contain_text("weights", timeout=90_000)

            def tab(name: str, page=page) -> None:
                page.get_by_role("tab", name=name, exact=True).locator("visible=true").first.click()

            def save(name: str, page=page, size=size) -> None:
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / f"{name}_{size}.png"), full_page=True)

            page.locator(".examples").locator("visible=true").get_by_text("star", exact=True).first.click()
            expect(page.locator("#classify-label [data-testid='label-output-value']")).to_be_visible(timeout=60_000)
            save("classify")
            tab("Grad-CAM")
            page.get_by_role("button", name="Draw a Shapes sample (true box known)").click()
            expect(page.get_by_text("Shapes sample #0")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Explain", exact=True).click()
            expect(page.locator("#gradcam-second img")).to_be_visible(timeout=90_000)
            save("gradcam")
            tab("Research")
            for section in SECTIONS:
                page.locator("#research-sections").get_by_role("tab", name=section, exact=True).click()
                expect(page.locator(f"#research-{section.lower()} img").locator("visible=true").first).to_be_visible(
                    timeout=30_000)
                save(f"research_{section.lower()}")
            if playground and size == "desktop":  # one run, shot at both widths
                tab("Playground")
                expect(page.locator("#playground-estimate")).to_contain_text("on Shapes", timeout=60_000)
                page.locator("#playground-train").click()
                expect(page.locator("#playground-status")).to_contain_text("done", timeout=600_000)
                save("playground")
                page.set_viewport_size(WIDTHS["phone"])
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "playground_phone.png"), full_page=True)
            page.close()
        browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--playground", action="store_true", help="also train the Playground's default run and shoot it")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    import app
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    common._ZOO = ModelZoo(weights_path="", device="cpu")
    with app.served() as (_, url):
        shoot(url, args.out, args.playground)


if __name__ == "__main__":
    main()
