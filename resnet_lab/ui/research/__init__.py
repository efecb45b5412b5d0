"""Research tab: why do residual connections let us train 152 layers, and what do the shortcuts buy once trained?

One module per section, each with its own `build()`; the text computed from numbers lives in the library beside
each computation (the CLI prints the same). Every run is a long job: it goes through `user_errors` into the
app-wide LONG queue group (one at a time across all users), and is refused up front when its estimated memory
exceeds what this process can spare.
"""

from __future__ import annotations

import gradio as gr

from .. import session_nets
from . import curvature, degradation, gradnorms, landscape, lesion
from ._common import MEMORY_SHARE, memory_budget
from .degradation import _quick_run

# MEMORY_SHARE, memory_budget and _quick_run are named here for tests/test_resources.py and test_concurrency.py
__all__ = ["CSS", "MEMORY_SHARE", "_quick_run", "build_tab", "memory_budget", "offer"]


# The Research tab's own CSS (app.py adds it to the page's): a figure's wide or one-column version, whichever fits
# the screen (`_common.shipped_image`); live figures keep a readable width on a phone and scroll sideways; table
# headers break between words, never inside one ("dept h"); a CSV's file name wraps instead of being cut.
CSS = """
.fig-narrow { display: none !important; }
@media (max-width: 640px) {
  .fig-wide { display: none !important; }
  .fig-narrow { display: block !important; }
  .live-plot { overflow-x: auto; }
  .live-plot img { min-width: 720px; max-width: none; }
}
#research-sections th, #research-sections th * { word-break: normal !important; overflow-wrap: normal !important;
  hyphens: none !important; }
#research-sections .file-preview .filename .stem { white-space: normal; overflow-wrap: anywhere; }
#research-sections .file-preview .filename { overflow: visible; }
"""

SECTIONS = (("Gradients", gradnorms), ("Degradation", degradation), ("Landscape", landscape),
            ("Curvature", curvature), ("Lesion", lesion))


def build_tab() -> list[gr.Dropdown]:
    """The tab's sections, one sub-tab each (the page was one ~7,000 px report), inside the caller's `gr.Blocks` and
    `gr.Tab`; the pickers of the sections that run on trained nets, in the order `offer` updates them."""
    pickers = {}
    with gr.Tabs(elem_id="research-sections", overflow_behavior="wrap"):  # every section reachable on a phone
        for name, section in SECTIONS:
            with gr.Tab(name, elem_id=f"research-{name.lower()}"):
                pickers[section] = section.build()
    return [pickers[landscape], pickers[curvature], pickers[lesion]]


def offer(runs: list[str]) -> list[dict]:
    """Updates for `build_tab`'s pickers: the shipped choices, then the session's own Playground runs (`runs`, their
    tokens), newest first. Each session's dropdowns are its own, so no other session is offered them."""
    pairs = session_nets.pair_choices(runs or []) + landscape.pair_choices()  # Landscape's and Curvature's
    nets = session_nets.net_choices(runs or []) + lesion.model_choices()
    return [gr.update(choices=pairs), gr.update(choices=pairs), gr.update(choices=nets)]
