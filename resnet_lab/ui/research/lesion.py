"""Research section 4: lesion studies of trained nets (Veit et al. 2016, Figs. 3 and 5).

Shipped: one block deleted at a time and k random blocks at once, for the four trained twins
(`assets/lesion_shapes.*`), with the library's reading of the numbers (`lesion.describe_lesion`), which says where
they disagree with the paper. Live: the same study of a chosen net at the library's live settings
(`lesion.quick_study`, sized by the one cost model to about 25 s on the app's device), in the LONG queue group,
refused up front if its memory would not fit. Each run loads its own copy of the checkpoint: a lesion swaps block
`forward`s on the model it is given, so it never touches a model the app serves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ...models.weights import load_checkpoint
from ...research import lesion, verdicts
from ...runtime import memory
from ...runtime.devices import synchronize
from ...serving.zoo import SHAPES_CHECKPOINT
from .. import session_nets
from ..common import LONG, on_gpu, tmp_file, user_errors, zoo
from . import _common

SHAPES_NET = "app-shapes"  # the app's own Shapes ResNet-20, trained with clutter: offered whether or not twins are
LIVE_BUDGET_S = 25.0  # the live run's target on this server (`lesion.quick_settings` cuts the images to fit)
SHIPPED_COMMAND = ("OMP_NUM_THREADS=1 python -m resnet_lab lesion --n 2000 --draws 5 --k-points 14 --workers 4 "
                   "--device cpu --out assets --model plain20,resnet20,plain56,resnet56")


def model_choices(twins: dict[str, Path] | None = None) -> list[tuple[str, str]]:
    """(label, value) per net the live run offers: every shipped twin, then the app's Shapes ResNet-20. Values are
    arch names (or `SHAPES_NET`), never paths: the server maps them onto its own files."""
    twins = _common.twin_checkpoints() if twins is None else twins
    return [(f"{a} (trained twin)", a) for a in twins] + [("resnet20, the app's Shapes model", SHAPES_NET)]


def _checkpoint(choice: str | None) -> Path:
    if choice and choice.startswith(session_nets.PREFIX):  # one of the session's own Playground nets
        return session_nets.resolve(choice)[0]
    offered = dict((v, k) for k, v in model_choices())
    if choice not in offered:
        raise gr.Error(f"Pick one of the offered nets: {'; '.join(offered.values())}.", title="Unknown choice")
    return SHAPES_CHECKPOINT if choice == SHAPES_NET else _common.twin_checkpoints()[choice]


def single_table(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) with each block deleted, one column per net, the intact net first; downsampling blocks marked
    ↓, blocks that cannot be deleted (a plain net's downsampling block) shown as 'kept'."""
    curve = lesion.k_curve(df)
    single = df[df.kind == "single"]
    blocks = single.drop_duplicates("block").sort_values("position")
    rows = [{"deleted": "none (intact)", **{m: f"{100 * c[c.k == 0]['mean'].iloc[0]:.1f}"
                                             for m, c in curve.groupby("model", sort=False)}}]
    for b in blocks.itertuples():
        row = {"deleted": b.block + (" ↓" if b.downsampling else "")}
        for m, d in single[single.block == b.block].groupby("model", sort=False):
            acc = d.accuracy.iloc[0]
            row[m] = "kept" if pd.isna(acc) else f"{100 * acc:.1f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def shipped_results() -> tuple[str | None, pd.DataFrame | None, str | None, str]:
    """(plot PNG, single-lesion table, CSV path, text) of the shipped study, or Nones and a note on what is missing
    and how to make it. A PNG missing beside its CSV is drawn from the CSV."""
    csv = lesion.SHIPPED_CSV
    if not csv.is_file():
        return None, None, None, _common.shipped_note("Lesion studies", [csv], SHIPPED_COMMAND)
    try:
        df = lesion.read_csv(csv)
        table, text = single_table(df), lesion.describe_lesion(df)
    except (ValueError, KeyError, IndexError) as e:
        return None, None, None, f"**The shipped lesion study `{csv.name}` cannot be read:** {e}"
    png = lesion.SHIPPED_PNG
    if not png.is_file():
        png = tmp_file(".png", "lesion_", "lesion_shapes.png")
        lesion.plot_lesion(df).savefig(png, dpi=100)
    n = int(df.n.iloc[0])
    return str(png), table, str(csv), f"**Shipped run** ({n} held-out images per net):\n\n{text}"


def check_memory(arch: str) -> None:
    """Refuse a live run whose estimated peak on the app's device exceeds what it can spare now (at `lesion.QUICK`'s
    image count, which the live settings only ever cut)."""
    device = str(zoo().device)
    need = memory.inference_memory([arch], lesion.QUICK["n"], 32, lesion.BATCH_SIZE, weight_copies=0, device=device)
    _common.refuse_if_too_big(need, _common.memory_budget(device), f"This lesion study of {arch}",
                              "Try again when the server is less busy.")


def run_lesion(choice: str | None, progress: Any = gr.Progress()) -> tuple[Any, pd.DataFrame, str, str]:
    """(plot, single-lesion table, CSV path, text) of a lesion study of the chosen net at the library's live
    settings (`lesion.quick_study`: images, draws and k points cut until the cost model's estimate on the app's
    device fits `LIVE_BUDGET_S`), on that device."""
    path = _checkpoint(choice)
    arch = str(json.loads(path.with_suffix(".json").read_text())["arch"])
    check_memory(arch)
    t0 = time.perf_counter()
    progress(0.0, f"loading {arch}")
    loaded = load_checkpoint(path)  # our own copy: the lesions swap its blocks' forwards while they run
    loaded.model.to(zoo().device)
    df = lesion.quick_study(loaded, LIVE_BUDGET_S, progress=progress)
    synchronize(zoo().device)  # CUDA runs asynchronously: read the clock once its work is done
    seconds = time.perf_counter() - t0
    n, draws = int(df.n.iloc[0]), int(df[df.kind == "random"].draw.nunique())
    csv = tmp_file(".csv", "lesion_", f"lesion_{arch}_n{n}.csv")
    df.to_csv(csv, index=False, float_format="%.6g")
    text = lesion.describe_lesion(df)
    text += (f"\n\n⏱️ {n} held-out images, {draws} random deletion orders: {_common.duration(seconds)} on this "
             f"server (the settings are cut to fit about {_common.duration(LIVE_BUDGET_S)}).")
    return lesion.plot_lesion(df), single_table(df), str(csv), text


def build() -> gr.Dropdown:
    """The section's components and events, inside the caller's Blocks; the net picker (the app adds the
    session's own Playground nets to it)."""
    gr.Markdown("### Lesion study: a trained ResNet behaves like an ensemble of shallower nets")
    png, table, csv, note = shipped_results()
    _common.opening(png, "Shipped: the four trained twins, one block deleted | k random blocks deleted",
                    "lesion-shipped-plot", _verdict(csv) or note, "lesion-verdict")
    with _common.full_reading():
        gr.Markdown(
            "Veit et al. 2016, *Residual Networks Behave Like Ensembles of Relatively Shallow Networks*, Figs. 3 and "
            "5: delete blocks of a trained net at test time. In a residual block only the branch goes and the "
            "shortcut stays; a plain block becomes the identity where shapes allow (a plain downsampling block "
            "cannot go). Left: accuracy with one block deleted (squares: downsampling blocks). Right: accuracy with "
            "k random blocks deleted, mean ± std over random deletion orders.")
        gr.Markdown(note, elem_id="lesion-shipped-text")
        gr.Dataframe(table, label="Shipped: accuracy (%) with one block deleted (↓ downsampling)",
                     interactive=False, wrap=True, visible=table is not None, elem_id="lesion-shipped-table")
        gr.File(csv, label="Shipped study (CSV)", visible=csv is not None, elem_id="lesion-shipped-csv")
    gr.Markdown("#### Live: a lesion study of a net of your choice")
    choices = model_choices()
    with gr.Row(equal_height=True):
        net = gr.Dropdown(choices, value=choices[0][1], label="Net", scale=3, elem_id="lesion-model")
        run = gr.Button(f"Run a lesion study live (about {_common.duration(LIVE_BUDGET_S)} on this server)",
                        scale=2, elem_id="lesion-run")
    plot, out_table, out_csv, text = _common.live_figure(
        run, "lesion", "Live: one block deleted | k random blocks deleted", "Live: accuracy (%) with one block deleted",
        "Live study (CSV)")
    run.click(on_gpu(user_errors(run_lesion)), net, [plot, out_table, out_csv, text], api_name="lesion", **LONG)
    return net


def _verdict(csv: str | None) -> _common.Verdict | None:
    """The shipped study at a glance, None where it is missing or unreadable (the note then says why)."""
    try:
        if not csv:
            return None
        df = lesion.read_csv(csv)
        return verdicts.lesion_plain(df), verdicts.lesion(df)
    except (ValueError, KeyError, IndexError):
        return None
