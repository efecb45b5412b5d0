"""Research tab, lesion section: shipped results present and absent, the live run on tiny settings (plot, table,
CSV and text that match each other, the served model untouched, sized by the cost model on the app's device), and
errors as messages."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from matplotlib.figure import Figure

from resnet_lab.data.shapes import CLASSES
from resnet_lab.models.resnet import build
from resnet_lab.models.weights import save_checkpoint
from resnet_lab.research import lesion
from resnet_lab.runtime import memory, resources
from resnet_lab.ui.research import _common
from resnet_lab.ui.research import lesion as ui

TINY = {"n": 16, "draws": 2, "k_points": 4}


def no_progress(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """plain20 and resnet20 checkpoints (untrained, one seed) as train writes them."""
    folder = tmp_path_factory.mktemp("twins")
    meta = {"num_classes": len(CLASSES), "classes": list(CLASSES),
            "data": {"name": "shapes", "clutter": False, "test_seed": 999}}
    for arch in ("plain20", "resnet20"):
        net = build(arch, num_classes=len(CLASSES), seed=0)
        save_checkpoint(net, folder / f"shapes_{arch}", {**meta, "arch": arch})
    return folder


@pytest.fixture
def tiny(twins, monkeypatch):
    monkeypatch.setattr(_common, "TWINS_DIR", twins)
    monkeypatch.setattr(lesion, "quick_settings", lambda *_a, **_k: dict(TINY))
    return twins


@pytest.fixture(scope="module")
def live(twins):
    """One live run of the app's Shapes ResNet-20 (trained: its lesions mean something) on tiny settings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_common, "TWINS_DIR", twins)
        mp.setattr(lesion, "quick_settings", lambda *_a, **_k: dict(TINY))
        calls = []
        out = ui.run_lesion(ui.SHAPES_NET, progress=lambda f, *_a, **_k: calls.append(f))
    return out, calls


def test_choices_are_the_shipped_twins_then_the_app_model(tiny, tmp_path, monkeypatch):
    assert [v for _, v in ui.model_choices()] == ["plain20", "resnet20", ui.SHAPES_NET]
    monkeypatch.setattr(_common, "TWINS_DIR", tmp_path / "missing")
    assert [v for _, v in ui.model_choices()] == [ui.SHAPES_NET]


def test_live_run_returns_plot_table_csv_and_text_that_agree(live):
    (fig, table, csv, text), calls = live
    assert isinstance(fig, Figure) and calls[-1] == 1.0
    df = lesion.read_csv(csv)
    assert set(df.model) == {"resnet20"} and int(df.n.iloc[0]) == TINY["n"]
    assert df[df.kind == "random"].draw.nunique() == TINY["draws"]
    assert text.startswith(lesion.describe_lesion(df))  # the library's reading of the CSV handed out
    single = df[df.kind == "single"].set_index("block")
    intact = df[(df.kind == "random") & (df.k == 0)].accuracy.iloc[0]
    assert table.deleted.iloc[0] == "none (intact)" and table.resnet20.iloc[0] == f"{100 * intact:.1f}"
    assert f"intact accuracy {100 * intact:.1f} %" in text
    for row in table.iloc[1:].itertuples():
        block = row.deleted.removesuffix(" ↓")
        assert row.resnet20 == f"{100 * single.loc[block, 'accuracy']:.1f}"
        assert row.deleted.endswith("↓") == bool(single.loc[block, "downsampling"])
    assert f"{TINY['n']} held-out images, {TINY['draws']} random deletion orders" in text


def test_plain_twin_downsampling_blocks_show_as_kept(tiny):
    _, table, csv, _ = ui.run_lesion("plain20", progress=no_progress)
    df = lesion.read_csv(csv)
    kept = df[(df.kind == "single") & ~df.removable].block.tolist()
    assert kept == ["layer2.0", "layer3.0"]
    assert table.set_index("deleted").loc[[f"{b} ↓" for b in kept], "plain20"].tolist() == ["kept", "kept"]


def test_the_live_run_never_touches_the_served_model(tiny, monkeypatch):
    """The study lesions its own copy: a model the app serves (zoo) keeps its forwards and weights."""
    from resnet_lab.serving.zoo import SHAPES_MODEL
    from resnet_lab.ui.common import zoo

    served = zoo().get(SHAPES_MODEL, "shipped").weights.model
    before = {k: v.clone() for k, v in served.state_dict().items()}
    seen = []
    real = lesion.lesion_study
    monkeypatch.setattr(lesion, "lesion_study", lambda model, *a, **k: seen.append(model) or real(model, *a, **k))
    ui.run_lesion(ui.SHAPES_NET, progress=no_progress)
    assert seen and seen[0] is not served
    assert all(torch.equal(before[k], v) for k, v in served.state_dict().items())
    assert not any("forward" in vars(b) for _, b in served.blocks())


def test_the_live_run_is_sized_and_run_on_the_apps_device(tiny, monkeypatch):
    """The live settings come from the library's cost model for the chosen arch on the app's device (not its type),
    the memory check counts for that device, and the study runs there."""
    from resnet_lab.ui.common import zoo

    device = zoo().device
    asked, counted, ran = [], [], []
    monkeypatch.setattr(lesion, "quick_settings", lambda *a, **k: asked.append((a, k)) or dict(TINY))
    real_memory, real_study = memory.inference_memory, lesion.lesion_study
    monkeypatch.setattr(memory, "inference_memory", lambda *a, **k: counted.append(k) or real_memory(*a, **k))
    monkeypatch.setattr(lesion, "lesion_study",
                        lambda model, data, **k: ran.append((model, data)) or real_study(model, data, **k))
    ui.run_lesion("resnet20", progress=no_progress)
    (args, kwargs), = asked
    assert args[:2] == ("resnet20", ui.LIVE_BUDGET_S) and torch.device(kwargs["device"]) == device
    assert counted and counted[0]["device"] == str(device)
    (model, data), = ran
    assert next(model.parameters()).device == data.x.device == device


def test_the_live_settings_fit_the_budget_by_the_cost_model():
    """Unpatched: the settings the library picks for a twin here, and their estimate within the budget where n is
    cut above its floor (the estimate itself is checked against a measured run in test_lesion)."""
    settings = lesion.quick_settings("resnet20", ui.LIVE_BUDGET_S)
    estimate = lesion.estimate_cost("resnet20", int(settings["n"]), int(settings["draws"]),
                                    int(settings["k_points"])).seconds
    assert settings["estimate_s"] == pytest.approx(estimate)
    assert 100 <= settings["n"] <= lesion.QUICK["n"]
    assert estimate <= ui.LIVE_BUDGET_S or (settings["n"], settings["draws"]) == (100, 2)


def test_bad_choices_and_oversized_runs_are_messages(tiny, monkeypatch):
    with pytest.raises(gr.Error, match="Pick one of the offered nets"):
        ui.run_lesion("../../etc/passwd", progress=no_progress)
    with pytest.raises(gr.Error, match="Pick one of the offered nets"):
        ui.run_lesion(None, progress=no_progress)

    def no_run(*_a, **_k):
        raise AssertionError("an oversized run started")

    monkeypatch.setattr(lesion, "lesion_study", no_run)
    monkeypatch.setattr(resources, "memory_available", lambda *_a, **_k: 2**20)
    with pytest.raises(gr.Error, match="needs about .* GiB; this server can give a live run"):
        ui.run_lesion("resnet20", progress=no_progress)


def test_shipped_results_present(live, tmp_path, monkeypatch):
    (_, _, csv, _), _ = live
    shipped = tmp_path / "lesion_shapes.csv"
    shipped.write_bytes(open(csv, "rb").read())
    monkeypatch.setattr(lesion, "SHIPPED_CSV", shipped)
    monkeypatch.setattr(lesion, "SHIPPED_PNG", tmp_path / "lesion_shapes.png")
    png, table, path, text = ui.shipped_results()  # no PNG beside it: drawn from the CSV
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and path == str(shipped)
    df = lesion.read_csv(shipped)
    assert lesion.describe_lesion(df) in text and f"{TINY['n']} held-out images per net" in text
    assert table.equals(ui.single_table(df))
    (tmp_path / "lesion_shapes.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert ui.shipped_results()[0] == str(tmp_path / "lesion_shapes.png")


def test_shipped_results_absent_or_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(lesion, "SHIPPED_CSV", tmp_path / "lesion_shapes.csv")
    png, table, path, text = ui.shipped_results()
    assert png is table is path is None
    assert "not shipped" in text and "lesion_shapes.csv" in text and "python -m resnet_lab lesion" in text
    (tmp_path / "lesion_shapes.csv").write_text("a,b\n1,2\n")
    png, table, path, text = ui.shipped_results()
    assert png is table is None and "cannot be read" in text and "missing columns" in text
