"""Research tab, loss-landscape section: shipped results present and absent, the live 1-D run on tiny settings
(plot, table, CSV and text that match each other), and errors as messages."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from resnet_lab.data.shapes import CLASSES
from resnet_lab.models.resnet import build
from resnet_lab.models.weights import save_checkpoint
from resnet_lab.research import landscape
from resnet_lab.research.landscape import directions
from resnet_lab.runtime import resources
from resnet_lab.ui.research import _common
from resnet_lab.ui.research import landscape as ui

TINY = {"grid": 5, "n": 16, "dims": 1, "span": 1.0}


def no_progress(*_args, **_kwargs) -> None:
    return None


def save_twin(folder, arch: str, seed: int = 0) -> None:
    """A checkpoint as train writes one (safetensors + JSON with arch, classes and data), untrained weights."""
    meta = {"arch": arch, "num_classes": len(CLASSES), "classes": list(CLASSES),
            "data": {"name": "shapes", "clutter": False, "test_seed": 999}}
    save_checkpoint(build(arch, num_classes=len(CLASSES), seed=seed), folder / f"shapes_{arch}", meta)


@pytest.fixture
def twins(tmp_path, monkeypatch):
    """A twins folder holding plain20 and resnet20 (built from one seed), live settings shrunk to seconds."""
    for arch in ("plain20", "resnet20"):
        save_twin(tmp_path, arch)
    monkeypatch.setattr(_common, "TWINS_DIR", tmp_path)
    for k, v in TINY.items():
        monkeypatch.setitem(landscape.QUICK, k, v)
    ui._compute.cache_clear()
    yield tmp_path
    ui._compute.cache_clear()


def test_choices_follow_the_shipped_twins(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "TWINS_DIR", tmp_path / "none")
    assert [v for _, v in ui.pair_choices()] == [ui.SHAPES_NET]  # no twins yet: the app's Shapes model alone
    save_twin(tmp_path, "resnet56")
    monkeypatch.setattr(_common, "TWINS_DIR", tmp_path)
    assert [v for _, v in ui.pair_choices()] == ["resnet56", ui.SHAPES_NET]  # a lone twin is offered alone
    save_twin(tmp_path, "plain20")
    save_twin(tmp_path, "resnet20")
    (tmp_path / "shapes_plain56.safetensors").write_bytes(b"")  # no JSON beside it: not a checkpoint we offer
    assert [v for _, v in ui.pair_choices()] == ["resnet20,plain20", "resnet56", ui.SHAPES_NET]


def test_live_run_returns_plot_table_csv_and_text_that_agree(twins):
    fig, table, csv, text = ui.run_landscape("resnet20,plain20", 1.0, 0, progress=no_progress)
    assert isinstance(fig, Figure) and fig.axes[0].get_yscale() == "log"
    df = landscape.read_csv(csv)
    assert list(dict.fromkeys(df.model)) == ["resnet20", "plain20"] and len(df) == 2 * TINY["grid"]
    assert np.allclose(sorted(df.alpha.unique()), np.linspace(-1, 1, TINY["grid"]))
    sharp = landscape.summary_tables(df)["sharpness"]
    assert list(dict.fromkeys(table["net"])) == ["resnet20", "plain20"] and set(table["control"]) == {"none"}
    for _, row in sharp.iterrows():  # the table and the text show the CSV's numbers
        shown = table[(table["net"] == row.model) & (table["r"] == f"{row.radius:.3g}")]["mean rise"]
        assert list(shown) == [f"{row['mean']:.3g}"] and f"{row['mean']:.3g} at {row.radius:g}" in text
    assert text.startswith(landscape.describe_landscape(df)) and "took" in text
    again = ui.run_landscape("resnet20,plain20", 1.0, 0, progress=no_progress)[3]
    assert "cached, it first took" in again and "cached" not in text


def test_same_seed_same_directions_other_seed_other_surface(twins):
    a = landscape.read_csv(ui.run_landscape("resnet20,plain20", 1.0, 0, progress=no_progress)[2])
    b = landscape.read_csv(ui.run_landscape("resnet20,plain20", 1.0, 1, progress=no_progress)[2])
    center = lambda df: df[df.alpha == 0].loss.iloc[0]  # noqa: E731
    assert center(a) == center(b) and not np.allclose(a.loss, b.loss)


def test_bad_choices_and_oversized_runs_are_messages(twins, monkeypatch):
    with pytest.raises(gr.Error, match="Pick one of the offered nets"):
        ui.run_landscape("/etc/passwd", 1.0, 0, progress=no_progress)  # never a path from the request
    with pytest.raises(gr.Error, match="Pick one of the offered nets"):
        ui.run_landscape(None, progress=no_progress)
    with pytest.raises(gr.Error, match="span must be between"):
        ui.run_landscape("resnet20,plain20", 5.0, 0, progress=no_progress)

    def no_run(*_a, **_k):
        raise AssertionError("an oversized run started")

    monkeypatch.setattr(landscape, "compute_landscape", no_run)
    monkeypatch.setattr(resources, "memory_available", lambda *_a, **_k: 2**20)  # 1 MiB left
    with pytest.raises(gr.Error, match="needs about .* GiB; this server can give a live run"):
        ui.run_landscape("resnet20,plain20", 1.0, 0, progress=no_progress)


def synthetic_grid(seeds=(0, 1, 2)) -> pd.DataFrame:
    """2-D grids: resnet20 a smooth bowl, plain20 four times steeper with ripples (non-convex in its basin)."""
    axis = directions.grid_axis(7, 1.0)
    rows = []
    for s in seeds:
        for a in axis:
            for b in axis:
                r = a * a + b * b
                rows.append(("resnet20", s, a, b, "none", 0.1 + r * (1 + 0.01 * s), 0.9))
                rows.append(("plain20", s, a, b, "none", 0.1 + 0.3 * r + 0.2 * np.cos(9 * a + s) * np.cos(9 * b)
                             + 0.2, 0.8))
    return pd.DataFrame(rows, columns=landscape.COLUMNS)


def test_shipped_results_present(tmp_path, monkeypatch):
    csv = tmp_path / "landscape_shapes.csv"
    df = synthetic_grid()
    df.to_csv(csv, index=False)
    monkeypatch.setattr(landscape, "SHIPPED_CSV", csv)
    monkeypatch.setattr(landscape, "SHIPPED_SHARPNESS_CSV", tmp_path / "absent.csv")
    shipped = ui.shipped_results()  # no PNG shipped beside it: drawn from the CSV
    png = shipped["contours"]
    assert png.endswith(".png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert shipped["csvs"] == [str(csv)] and landscape.describe_landscape(df) in shipped["note"]
    shares = shipped["surface_table"].set_index("net")["non\u2011convex in basin"]  # a non-breaking hyphen
    assert shares["resnet20"] == "0%" and float(shares["plain20"].rstrip("%")) > 0
    shipped_png = tmp_path / "landscape_shapes_2d.png"
    shipped_png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert ui.shipped_results()["contours"] == str(shipped_png)  # a shipped figure is shown as it is


def test_shipped_results_absent_or_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(landscape, "SHIPPED_CSV", tmp_path / "landscape_shapes.csv")
    monkeypatch.setattr(landscape, "SHIPPED_SHARPNESS_CSV", tmp_path / "landscape_shapes_sharpness.csv")
    shipped = ui.shipped_results()
    assert set(shipped) == {"note"}
    assert "not shipped" in shipped["note"] and "python -m resnet_lab landscape" in shipped["note"]
    (tmp_path / "landscape_shapes.csv").write_text("a,b\n1,2\n")
    shipped = ui.shipped_results()
    assert set(shipped) == {"note"} and "cannot be read" in shipped["note"] and "missing columns" in shipped["note"]
