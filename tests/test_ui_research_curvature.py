"""Research tab, curvature section: shipped results present and absent, the live top-eigenvalue run on tiny
settings (the number equals the library's), and errors as messages."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest
from test_curvature_scale import FLATTER, spectrum
from test_ui_research_landscape import no_progress, save_twin

from resnet_lab.data.heldout import held_out_set
from resnet_lab.models.weights import load_checkpoint
from resnet_lab.research import curvature
from resnet_lab.research.curvature.hessian import Hessian, top_eigenvalues
from resnet_lab.ui.research import _common
from resnet_lab.ui.research import curvature as ui


@pytest.fixture
def twins(tmp_path, monkeypatch):
    save_twin(tmp_path, "resnet20")  # a lone twin: one Hessian, not two
    monkeypatch.setattr(_common, "TWINS_DIR", tmp_path)
    monkeypatch.setattr(ui, "LIVE_IMAGES", (8,))
    return tmp_path


def test_live_top_eigenvalue_is_the_librarys(twins):
    table, text = ui.run_top_eigenvalue("resnet20", progress=no_progress)
    assert list(table["net"]) == ["resnet20"] and set(table["images"]) == {8}
    w = load_checkpoint(twins / "shapes_resnet20.safetensors")
    data = held_out_set(w, 8, split="train")
    expected = top_eigenvalues(Hessian(w.model.eval(), data.x, data.y), 1, ui.LIVE_TOL, seed=0)[0]
    assert table.set_index("net").loc["resnet20", "λmax"] == f"{expected:.4g}"
    assert "products in" in text and "estimated" in text


def test_bad_choice_and_oversized_run_are_messages(twins, monkeypatch):
    with pytest.raises(gr.Error, match="Pick one of the offered nets"):
        ui.run_top_eigenvalue("../../etc/passwd", progress=no_progress)
    monkeypatch.setattr(_common, "memory_budget", lambda *_a, **_k: 1024)
    with pytest.raises(gr.Error, match="needs about"):
        ui.run_top_eigenvalue("resnet20", progress=no_progress)


def test_shipped_results_present_and_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(curvature, "SHIPPED_STEM", tmp_path / "curvature_shapes")
    assert set(ui.shipped_results()) == {"note"} and "not shipped" in ui.shipped_results()["note"]
    spec = spectrum(FLATTER)
    spec.to_csv(tmp_path / "curvature_shapes.csv", index=False)
    shipped = ui.shipped_results()
    assert "**plain20's is the larger at both of the largest n**" in shipped["note"]
    assert shipped["verdict"][0].startswith("At 20 layers, measured on 1024 training images, resnet20's minimum")
    table = shipped["table"]
    assert isinstance(table, pd.DataFrame) and list(table["net"]) == ["resnet20"] * 3 + ["plain20"] * 3
    assert list(table["images (n)"]) == [64, 256, 1024] * 2 and table["λmax (mean of sets)"].iloc[2] == "20.5"
    (tmp_path / "curvature_shapes.csv").write_text("a,b\n1,2\n")
    assert "cannot be read" in ui.shipped_results()["note"]
