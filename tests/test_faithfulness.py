"""Faithfulness: the metrics are right on hand-made maps, and Grad-CAM on the shipped model passes them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch

from resnet_lab.__main__ import main
from resnet_lab.data.shapes import ShapesDataset, normalize
from resnet_lab.explain import faithfulness
from resnet_lab.explain.faithfulness import (
    auc,
    cascade,
    estimate_seconds,
    mass_in_mask,
    measure_faithfulness,
    perturbation_curves,
    pointing_game,
    random_maps,
    randomization_check,
    saliency_rank,
    spearman,
)
from resnet_lab.models.resnet import build
from resnet_lab.models.weights import load_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "shapes_resnet20.safetensors"
SHIPPED_TABLE = SHIPPED.parent / "shapes_resnet20_faithfulness.csv"


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- metrics on hand-made maps


def test_pointing_game_box_edges_and_ties():
    maps = torch.zeros(4, 8, 8)
    maps[0, 2, 5] = 1  # inside (x=5, y=2)
    maps[1, 2, 6] = 1  # x=6 == x1: outside, the box is end-exclusive
    maps[2, 1, 3] = 1  # y=1 < y0
    maps[3, 2, 2] = maps[3, 7, 7] = 1  # tie: the first maximum counts, (2, 2) inside
    box = (2, 2, 6, 6)
    assert pointing_game(maps, [box] * 4).tolist() == [True, False, False, True]
    assert pointing_game(maps[3:].flip(1, 2), torch.tensor([box])).tolist() == [False]


def test_mass_in_mask():
    maps = torch.tensor([[[1.0, 3.0], [0.0, -5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[False, True], [False, True]]] * 2)
    assert mass_in_mask(maps, masks).tolist() == [0.75, 0.0]  # negative attribution is no mass


def _spearman_reference(a: list[float], b: list[float]) -> float:
    def ranks(v):
        return [sum(w < x for w in v) + (sum(w == x for w in v) - 1) / 2 for x in v]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def test_spearman_with_ties_matches_the_textbook():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 6, 6), generator=g).float()  # many ties
    b = torch.randint(0, 5, (5, 6, 6), generator=g).float()
    ours = spearman(a, b)
    for i in range(5):
        assert float(ours[i]) == pytest.approx(_spearman_reference(a[i].flatten().tolist(), b[i].flatten().tolist()),
                                               abs=1e-6)
    x = torch.randn(3, 7, 7, generator=g)
    assert torch.allclose(spearman(x, x.pow(3) * 5 + 2), torch.ones(3))  # rank-based: any monotone map
    assert torch.allclose(spearman(x, -x), -torch.ones(3))
    assert spearman(x, torch.zeros_like(x)).tolist() == [0.0] * 3  # a constant map has no order


def test_auc_is_the_trapezoid_over_0_1():
    curves = torch.stack([torch.full((17,), 0.3), torch.linspace(0, 1, 17)])
    assert auc(curves).tolist() == pytest.approx([0.3, 0.5])
    assert auc(torch.linspace(1, 0, 5)[None] ** 2).tolist() == pytest.approx([(1 + 2 * (0.5625 + 0.25 + 0.0625)) / 8])


def test_saliency_rank_orders_pixels_and_breaks_ties_at_random():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])
    assert saliency_rank(maps).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros(1, 16, 16)
    r1 = saliency_rank(flat, torch.Generator().manual_seed(1))
    r2 = saliency_rank(flat, torch.Generator().manual_seed(2))
    assert sorted(r1[0].tolist()) == list(range(256)) and not torch.equal(r1, r2)
    assert float(r1[0, :128].float().mean()) == pytest.approx(127.5, abs=25)  # no bias to the top rows


def test_perturbation_curves_start_and_end_where_they_must():
    torch.manual_seed(0)
    model = build("resnet20", num_classes=8).eval()
    x = normalize(torch.stack([ShapesDataset(2, seed=1)[i][0] for i in range(2)]))
    target = torch.tensor([1, 5])
    deletion, insertion = perturbation_curves(model, x, target, saliency_rank(random_maps((2, 32, 32))), steps=4)
    with torch.no_grad():
        p = model(x).softmax(1)[[0, 1], target]
        p_mean = model(torch.zeros_like(x)).softmax(1)[[0, 1], target]
    assert deletion.shape == insertion.shape == (2, 5)
    assert torch.allclose(deletion[:, 0], p) and torch.allclose(deletion[:, -1], p_mean)
    assert torch.allclose(insertion[:, -1], p) and not torch.allclose(insertion[:, 0], p)


def test_cascade_goes_from_the_top_down():
    names = [n for n, _ in cascade(build("resnet20"))]
    assert names[:3] == ["fc", "layer3.2", "layer3.1"] and names[-2:] == ["layer1.0", "stem"] and len(names) == 11


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    from resnet_lab.explain.methods import attribute

    model = load_checkpoint(SHIPPED).model
    ds = ShapesDataset(200, seed=4243)
    x = normalize(ds.images.float() / 255)
    maps = torch.cat([attribute(model, x[i:i + 100], ds.labels[i:i + 100], "gradcam", "layer3")
                      for i in range(0, 200, 100)])
    return model, ds, x, maps


def test_gradcam_points_at_the_shape_and_broken_maps_do_not(shipped):
    _, ds, _, maps = shipped
    hits = pointing_game(maps, ds.boxes).float().mean()
    chance = float(((ds.boxes[:, 2] - ds.boxes[:, 0]) * (ds.boxes[:, 3] - ds.boxes[:, 1])).float().mean() / 32**2)
    random_hits = pointing_game(random_maps(maps.shape, torch.Generator().manual_seed(0)), ds.boxes).float().mean()
    flipped_hits = pointing_game(maps.flip(1, 2), ds.boxes).float().mean()
    assert hits >= 0.90
    assert abs(random_hits - chance) < 0.08
    assert flipped_hits < hits - 0.3


def test_gradcam_beats_random_order_on_deletion_and_insertion(shipped):
    model, ds, x, maps = shipped
    target = ds.labels[:64]
    g = torch.Generator().manual_seed(0)
    ours = [auc(c) for c in perturbation_curves(model, x[:64], target, saliency_rank(maps[:64], g), steps=8)]
    rand = [auc(c) for c in perturbation_curves(model, x[:64], target, saliency_rank(random_maps(maps[:64].shape, g)),
                                                steps=8)]
    assert ours[0].mean() < rand[0].mean() - 0.1  # deleting the explained pixels first kills the class faster
    assert ours[1].mean() > rand[1].mean() + 0.1  # inserting them first brings it back faster


def test_randomization_decorrelates_gradcam_but_not_an_edge_detector(shipped):
    from resnet_lab.explain.methods import attribute

    model, ds, x, _ = shipped
    xb, target = x[:32], ds.labels[:32]
    gradcam = randomization_check(model, xb, target, lambda net: attribute(net, xb, target, "gradcam", "layer3"))
    assert list(gradcam)[0] == "fc" and gradcam["stem"] < 0.3
    edges = randomization_check(model, xb, target, lambda net: (xb[..., 1:, 1:] - xb[..., :-1, :-1]).abs().sum(1))
    assert min(edges.values()) == pytest.approx(1.0)  # ignores the model, so the check must not move it


def test_measure_faithfulness_table_and_cli(tmp_path):
    model = load_checkpoint(SHIPPED).model
    fractions = []
    df = measure_faithfulness(model, ShapesDataset(8, seed=7), ["gradcam", "integrated_gradients"],
                              ["layer2", "layer3"], n=8, batch_size=4, steps=4, n_random=4,
                              progress=lambda f, d: fractions.append(f))
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert list(zip(df.method, df.stage)) == list(itertools.product(["gradcam", "integrated_gradients"],
                                                                     ["layer2", "layer3"]))
    assert df.uses_layer.tolist() == [True, True, False, False]
    ig = df[df.method == "integrated_gradients"].drop(columns="stage")
    assert ig.iloc[0].equals(ig.iloc[1])  # no layer: computed once
    for col in ("pointing", "pointing_random", "deletion_auc", "deletion_random", "insertion_auc",
                "insertion_random", "rand_fc", "rand_stem", "rand_full"):
        assert df[col].between(-1, 1).all(), col
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    out = tmp_path / "f.csv"
    assert main(["faithfulness", "--model", str(SHIPPED), "--methods", "gradcam", "--stages", "layer3", "--n", "8",
                 "--n-random", "4", "--steps", "4", "--out", str(out)]) == 0
    assert pd.read_csv(out).shape[0] == 1


@pytest.mark.numerics
def test_shipped_table_is_reproduced_by_a_recomputed_slice():
    """The shipped CSV's Grad-CAM @ layer3 row, recomputed rather than re-read: the pointing game and the mass in the
    mask on all 500 images of its command (data seed 999, the checkpoint's test seed), deletion and insertion AUC on
    the first 100, with the same tie-breaking draws as the full run."""
    shipped = pd.read_csv(SHIPPED_TABLE).set_index(["method", "stage"]).loc[("gradcam", "layer3")]
    from resnet_lab.explain.methods import attribute

    model = load_checkpoint(SHIPPED).model
    ds = ShapesDataset(500, seed=999)
    x = ds.normalized()
    maps = torch.cat([attribute(model, x[i:i + 100], ds.labels[i:i + 100], "gradcam", "layer3")
                      for i in range(0, 500, 100)])
    # every image's score is recomputed: equal up to the CSV's 4 decimals (and one image's tie, 1/500)
    assert float(pointing_game(maps, ds.boxes).float().mean()) == pytest.approx(shipped["pointing"], abs=0.0021)
    assert float(mass_in_mask(maps, ds.masks).mean()) == pytest.approx(shipped["mass_in_mask"], abs=1e-3)
    # `measure_faithfulness`'s tie-break generator, drawn batch by batch (50 images each)
    g = torch.Generator().manual_seed(0)
    curves = [perturbation_curves(model, x[i:i + 50], ds.labels[i:i + 50], saliency_rank(maps[i:i + 50], g))
              for i in (0, 50)]
    for k, column in enumerate(("deletion_auc", "insertion_auc")):
        scores = torch.cat([auc(c[k]) for c in curves])
        # the first 100 of the 500: their mean is within 4 standard errors of the whole's (finite population)
        tolerance = 4 * float(scores.std()) * (1 / 100 - 1 / 500) ** 0.5
        assert float(scores.mean()) == pytest.approx(shipped[column], abs=tolerance), column
        assert tolerance < 0.1  # the check has teeth: the table's Grad-CAM and random rows are 0.17 to 0.3 apart


class _Recorder(torch.Generator):
    """A real CPU generator that remembers the device it was asked for."""

    asked: list = []

    def __new__(cls, device=None):
        cls.asked.append(None if device is None else torch.device(device))
        return super().__new__(cls)

    def __init__(self, device=None):
        pass


def test_randomization_generator_lives_on_the_models_device(monkeypatch):
    """On CUDA a CPU generator crashes the check ("Expected a 'cuda' device type for generator") after minutes of
    work. With no GPU here, the model reports a stand-in device: the generator must be asked for on it."""
    stand_in = torch.device("cuda", 7)
    monkeypatch.setattr(_Recorder, "asked", [])
    monkeypatch.setattr(torch, "Generator", _Recorder)
    monkeypatch.setattr(faithfulness, "model_device", lambda module: stand_in)
    model = build("resnet20", num_classes=8, seed=0).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _Recorder.asked.clear()
    randomization_check(model, x, torch.tensor([0, 1]), lambda net: net.conv1(x).sum(1))
    assert _Recorder.asked == [stand_in]


def test_every_generator_of_the_table_is_made_on_the_data_device(monkeypatch):
    """Random maps, tie-breaks and re-initialization: each generator names the model's device explicitly."""
    monkeypatch.setattr(_Recorder, "asked", [])
    monkeypatch.setattr(torch, "Generator", _Recorder)
    model = build("resnet20", num_classes=8, seed=0)
    measure_faithfulness(model, ShapesDataset(4, seed=7), ["gradcam"], ["layer3"], n=4, batch_size=4, steps=2,
                         n_random=2)
    assert len(_Recorder.asked) >= 4 and set(_Recorder.asked) == {torch.device("cpu")}


def test_random_maps_and_tie_breaks_stay_on_the_maps_device():
    """Nothing is copied to the CPU on the way (meta tensors refuse it), so on a GPU they stay there."""
    maps = torch.zeros(2, 4, 4, device="meta")
    assert saliency_rank(maps).device.type == "meta"
    assert random_maps((2, 4, 4), device="meta").device.type == "meta"
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_maps((2, 3), g), torch.rand(2, 3, generator=torch.Generator().manual_seed(0)))


def test_the_estimate_counts_the_work_measure_faithfulness_does(monkeypatch):
    """The time shown before a recompute starts is the probed costs summed over `planned_calls`: that plan must be
    the calls `measure_faithfulness` really makes, with their batch sizes, for the curves and for each method."""
    counted: dict[str, list[int]] = {}
    curves, attribute = faithfulness.perturbation_curves, faithfulness.attribute

    def counting_curves(model, x, *args, **kwargs):
        counted.setdefault("curves", []).append(len(x))
        return curves(model, x, *args, **kwargs)

    def counting_attribute(model, x, target, method="gradcam", *args, **kwargs):
        counted.setdefault(method, []).append(len(x))
        return attribute(model, x, target, method, *args, **kwargs)

    monkeypatch.setattr(faithfulness, "perturbation_curves", counting_curves)
    monkeypatch.setattr(faithfulness, "attribute", counting_attribute)
    model = build("resnet20", num_classes=8, seed=0)
    methods, stages = ["gradcam", "integrated_gradients"], ["layer2", "layer3"]
    measure_faithfulness(model, ShapesDataset(6, seed=7), methods, stages, n=6, batch_size=4, steps=2, n_random=3)
    assert counted == faithfulness.planned_calls(model, methods, stages, n=6, n_random=3, batch_size=4)
    assert counted["gradcam"] == 2 * ([4, 2] + [3] * 12)  # two stages; the trained net and 11 cascade steps


def test_estimate_is_made_from_a_small_probe():
    model = load_checkpoint(SHIPPED).model
    assert estimate_seconds(model, ShapesDataset(8, seed=3), ["gradcam", "occlusion"], ["layer3"], n=8, n_random=4,
                            probe=2) > 0
