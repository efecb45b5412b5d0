"""Shared fixtures. Every test runs offline: the hub is declared unreachable unless a test says otherwise."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads starve a shared 2-core box
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N (the default, pyproject.toml): the cores shared, not each
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # worker taking all of them
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _workers)))  # before torch loads; subprocesses too

# Browser tests: Debian's Chromium driven by Playwright (`playwright install` cannot download browsers here)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(os.environ.get("RESNET_LAB_SCREENSHOTS", Path(__file__).resolve().parent.parent / "out" / "browser"))


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not executable"
    return None


def require_chromium() -> None:
    """Skip a browser test where Chromium is missing, except under CI (`CI` set), where that is a failure:
    `.ci/run` installs it and stops early if it cannot."""
    missing = chromium_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing}: under CI the browser test must run (.ci/run installs Debian's chromium)")
    if missing:
        pytest.skip(missing)


# Another CPU's float32 arithmetic (vector width, threads, ATEN_CPU_CAPABILITY) moves a trained net's logits by about
# 1e-6: measured between avx512 and default, the shipped checkpoint 5.7e-6 and the lesioned twins 2.9e-6 at most.
TIE = 1e-4


def near_ties(model, batches, delta: float = TIE) -> int:
    """Images in `batches` whose two highest logits under `model` lie within `delta`: another CPU may predict either
    class for them, so a correct count recomputed there may differ from a shipped one by this many images, no more.
    (For the shipped nets it is 0: their closest top-2 gaps are 2.5e-4 and more.)"""
    import torch

    from resnet_lab.runtime.scoring import score

    gaps = []
    score(model, batches, on_logits=lambda z, _y: gaps.append(z.topk(2).values.diff(dim=1).abs().flatten()))
    return int((torch.cat(gaps) < delta).sum())


@pytest.fixture(scope="module")
def one_thread():
    """For training-heavy modules: when other jobs share the two cores, one thread slows down gracefully."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A deterministic, photo-like RGB image (smooth gradients plus texture), 320x240."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    r = 128 + 100 * np.sin(xx / 23.0)
    g = 128 + 100 * np.cos(yy / 17.0)
    b = 128 + 60 * np.sin((xx + yy) / 31.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 12, (240, 320, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@contextlib.contextmanager
def launched_app():
    """The real app (as `build_demo` makes it, with the zoo the caller set), launched in-process on a free port
    (`app.served`); yields (demo, URL) and closes it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app

    with app.served() as served:
        yield served


@contextlib.contextmanager
def browser_page(url: str):
    """A Chromium page (1400 x 1100) on `url`, loaded; screenshots go to `SHOTS`."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url, wait_until="load", timeout=60_000)
        yield page
        browser.close()


@pytest.fixture(scope="session")
def served_app():
    """The real app, launched in-process on a free port; yields (demo, URL)."""
    from resnet_lab.serving.zoo import ModelZoo
    from resnet_lab.ui import common

    common._ZOO = ModelZoo(weights_path="", device="cpu")
    with launched_app() as served:
        yield served
