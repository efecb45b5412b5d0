"""What the Research sections share: a cache key that ignores progress callbacks, the memory budget of a live
run, and durations and sizes as people read them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ...models.resnet import REGISTRY
from ...paths import ASSETS
from ...research import study
from ...research.figures import narrow_path
from ...runtime import memory

# A live run may take this share of the memory available now: the loaded models, Gradio and a QUICK job (which
# runs beside it) live in the rest. ResNet-152 at 224 px with batch 64 needs ~15 GiB (gradflow.estimate_memory):
# on a 16 GB Space one click would get the process killed; it is refused with settings that fit instead.
MEMORY_SHARE = memory.STUDY_SHARE  # named here for the tests


class Untracked:
    """Rides through `lru_cache` without being part of the key (a progress callback is not a setting)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Untracked)


def memory_budget(device: str = "cpu") -> int:
    """Bytes one live run may use: a share of what `device` can still allocate (free GPU memory on CUDA, else the
    container's limit, not the host's RAM: see `resources`), read at the click, so a busy server refuses sooner."""
    return int(memory.available_memory(device) * MEMORY_SHARE)


def gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def refuse_if_too_big(need: int, budget: int, what: str, smaller: str) -> None:
    """A `gr.Error` when a run's estimated peak `need` exceeds `budget`: what it needs, what the server can give,
    and `smaller`, the settings to try instead."""
    if need > budget:
        raise gr.Error(f"{what} needs about {gb(need)}; this server can give a live run {gb(budget)} now "
                       f"({MEMORY_SHARE:.0%} of the memory available). {smaller}",
                       title="Settings too large for this server")


# --- the trained twins the live runs offer (assets/twins/shapes_<arch>.safetensors + .json, as train writes them) ---

TWINS_DIR = study.TWINS_DIR  # assets/twins/, where the research CLIs find twins by arch name too


def twin_checkpoints(folder: Path | None = None) -> dict[str, Path]:
    """arch -> checkpoint of every trained twin shipped in `folder` (default `TWINS_DIR`, read at call time), in
    depth order, plain before residual; a file without its JSON (arch, classes, data) is left out."""
    folder = TWINS_DIR if folder is None else folder
    found = {}
    for path in sorted(folder.glob("shapes_*.safetensors")) if folder.is_dir() else []:
        arch = path.stem.removeprefix("shapes_")
        if arch in REGISTRY and path.with_suffix(".json").is_file():
            found[arch] = path
    return dict(sorted(found.items(), key=lambda kv: (REGISTRY[kv[0]].depth, REGISTRY[kv[0]].residual, kv[0])))


# Gradio's toolbar (download, share, fullscreen) sits on top of the image and covered panel titles and legends;
# the figure files are linked under each figure instead.
NO_TOOLBAR: list = []


def unbroken(header: str) -> str:
    """A table header the browser breaks only at its spaces: a word joiner after each slash or bar inside a word
    ("‖∂L/" then "∂W‖", "|" then "λmin/λmax|" were headers' two lines) and non-breaking hyphens ("non-" then
    "convex")."""
    return re.sub(r"([/|])(?=\S)", "\\1\u2060", header).replace("-", "\u2011")


def caption(text: str) -> gr.Markdown:
    """A figure's title, as text above it: Gradio's label badge sits on the figure and hid legends and titles."""
    return gr.Markdown(f"**{text}**", elem_classes="figure-caption")


def shipped_image(path: str | None, label: str, elem_id: str) -> gr.Image:
    """A shipped figure (a file path) under its caption, hidden where this copy of the app has none. Where its
    one-column version (`figures.narrow_path`) is shipped too, both are placed and the page's CSS shows the one
    that fits the screen (`RESPONSIVE_CSS`): a phone gets the panels one under the other, readable, instead of a
    four-panel row shrunk to 390 px; its id is `<elem_id>-narrow`."""
    narrow = narrow_path(path) if path else None
    has_narrow = narrow is not None and narrow.is_file()
    with gr.Column(visible=path is not None, min_width=0):
        caption(label)
        wide = gr.Image(path, show_label=False, type="filepath", interactive=False, elem_id=elem_id,
                        buttons=NO_TOOLBAR, elem_classes="fig-wide" if has_narrow else None)
        if has_narrow:
            gr.Image(str(narrow), show_label=False, type="filepath", interactive=False, elem_id=f"{elem_id}-narrow",
                     buttons=NO_TOOLBAR, elem_classes="fig-narrow")
        return wide


Verdict = tuple[str, str]  # (the student's sentences, the referee's): `research.verdicts`' two layers


def at_a_glance(verdict: Verdict | str, elem_id: str) -> tuple[gr.Markdown, gr.Markdown]:
    """The study's verdict (`research.verdicts`) beside its figure: the student's sentences, and the referee's
    reading one click away (an accordion, id `<elem_id>-referee`, hidden where `verdict` is a note saying the study
    is missing); both Markdown components."""
    plain, referee = (verdict, "") if isinstance(verdict, str) else verdict
    glance = gr.Markdown(f"**At a glance.** {plain}", elem_id=elem_id, elem_classes="verdict")
    with gr.Accordion("The referee's reading: the same numbers, in the field's terms", open=False,
                      elem_id=f"{elem_id}-referee", visible=bool(referee)):
        return glance, gr.Markdown(referee)


@contextlib.contextmanager
def beside_figure(figure: str | None, caption_text: str, figure_id: str) -> Iterator[None]:
    """A shipped figure (left, wide) and, to its right, what the caller's `with` block puts there (its words);
    on a narrow screen the words go under the figure (the columns' minimum widths wrap the row)."""
    with gr.Row():
        with gr.Column(scale=3, min_width=320):
            shipped_image(figure, caption_text, figure_id)
        with gr.Column(scale=2, min_width=300):
            yield


def opening(figure: str | None, caption_text: str, figure_id: str, verdict: Verdict | str,
            verdict_id: str) -> gr.Markdown:
    """What a section opens on: its shipped figure and its verdict beside it; the verdict component."""
    with beside_figure(figure, caption_text, figure_id):
        return at_a_glance(verdict, verdict_id)[0]


def full_reading() -> gr.Accordion:
    """The accordion holding the method, the full reading and the tables: one click away, closed on opening."""
    return gr.Accordion("The full reading: method, every number, the tables", open=False)


def live_results(button: gr.Button) -> gr.Column:
    """A column for a live run's outputs, hidden until the run is asked for: no empty tables or figures before."""
    column = gr.Column(visible=False)
    button.click(lambda: gr.update(visible=True), None, column, queue=False, api_visibility="private")
    return column


def live_plot(label: str, elem_id: str | None = None) -> gr.Plot:
    """A live run's figure under its caption (no label badge on it); on a narrow screen it keeps a readable width
    and scrolls sideways (`RESPONSIVE_CSS`)."""
    caption(label)
    return gr.Plot(show_label=False, format="png", elem_id=elem_id, elem_classes="live-plot")


def live_figure(button: gr.Button, name: str, plot_label: str, table_label: str, csv_label: str
                ) -> tuple[gr.Plot, gr.Dataframe, gr.File, gr.Markdown]:
    """A live run's outputs, shown once `button` is pressed: its figure (left, wide), its reading, table and CSV
    (right); the components, ids `<name>-plot`, `-table`, `-csv`, `-text`."""
    with live_results(button), gr.Row():
        with gr.Column(scale=3, min_width=320):
            plot = live_plot(plot_label, f"{name}-plot")
        with gr.Column(scale=2, min_width=300):
            text = gr.Markdown(elem_id=f"{name}-text")
            table = gr.Dataframe(label=table_label, interactive=False, wrap=True, elem_id=f"{name}-table")
            csv = gr.File(label=csv_label, elem_id=f"{name}-csv")
    return plot, table, csv, text


def shipped_note(what: str, files: list[Path], command: str) -> str:
    """The message a section shows where its shipped results are missing: which files, and how to make them."""
    names = ", ".join(f"`{f.relative_to(ASSETS.parent) if f.is_relative_to(ASSETS.parent) else f.name}`"
                      for f in files)
    return (f"**{what}: not shipped with this copy of the app** ({names} not found). Make them with\n\n"
            f"```\n{command}\n```\n\nor run a live version below.")
