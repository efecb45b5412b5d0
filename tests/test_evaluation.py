"""`resnet_lab.training.evaluation`: metrics on hand-made logits with answers worked out here, an ECE
recomputed with plain numpy loops, the exact merge of partial results, and `python -m resnet_lab evaluate`
on Shapes and on CIFAR-format files written by the test."""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_lab.__main__ import main
from resnet_lab.training.metrics import ECE_BINS, EvaluationResult
from resnet_lab.training.plot import confusion_figure, reliability_figure

ROOT = Path(__file__).resolve().parent.parent
SHAPES_MODEL = ROOT / "assets" / "shapes_resnet20.safetensors"



def scored(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], bins: int = ECE_BINS) -> EvaluationResult:
    return EvaluationResult(list(classes), bins).update(logits, labels)

def _logits_from_probs(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.log(p))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_perfect_classifier_ece_is_mean_of_one_minus_confidence() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    logits = rng.normal(size=(40, 4))
    logits[np.arange(40), labels] += 2.0 + 3.0 * rng.random(40)  # right, with confidences spread over bins
    conf = _softmax(logits).max(1)
    assert (_softmax(logits).argmax(1) == labels).all()
    r = scored(torch.from_numpy(logits), torch.from_numpy(labels), list("abcd"))
    assert r.top1 == 1.0 and r.topk == 1.0 and r.k == 4
    # every bin's accuracy is 1, so sum_b n_b/N * |1 - mean conf_b| = mean(1 - conf)
    assert r.ece == pytest.approx(float(np.mean(1 - conf)), abs=1e-12)
    assert (r.bin_count > 0).sum() > 1  # the identity is exercised across several bins, not one
    np.testing.assert_array_equal(r.confusion, np.diag([10, 10, 10, 10]))
    np.testing.assert_array_equal(r.per_class_accuracy, [1, 1, 1, 1])


def test_always_wrong_at_confidence_point_nine() -> None:
    n, c = 30, 10
    labels = np.arange(n) % c
    p = np.full((n, c), 0.1 / (c - 1))
    p[np.arange(n), (labels + 1) % c] = 0.9
    r = scored(_logits_from_probs(p), torch.from_numpy(labels), [str(i) for i in range(c)])
    assert r.top1 == 0.0
    assert r.ece == pytest.approx(0.9, abs=1e-12)
    assert r.nll == pytest.approx(-math.log(0.1 / 9), abs=1e-12)
    (hot,) = np.flatnonzero(r.bin_count)
    assert hot == 13 and r.bin_count[hot] == n  # 0.9 lies in (13/15, 14/15]
    row = r.reliability()[hot]
    assert row["accuracy"] == 0.0 and row["confidence"] == pytest.approx(0.9) and row["count"] == n
    assert math.isnan(r.reliability()[0]["accuracy"])  # empty bins say so, not 0


def test_a_confidence_on_an_edge_falls_in_the_bin_below() -> None:
    """Bins are (lo, hi]: with 4 bins, confidence 0.25 is bin 0's and 0.5 is bin 1's (not bins 1 and 2, as [lo, hi)
    would have them). Ties among equal logits give exactly 1/4 and 1/2; -1000 is exactly 0 after softmax."""
    off = -1000.0
    logits = torch.tensor([
        [0, 0, 0, 0, off, off, off, off],  # confidence 1/4, label 7: wrong
        [0, 0, off, off, off, off, off, off],  # 1/2, wrong
        [0.5, 0, 0, 0, off, off, off, off],  # e^.5 / (e^.5 + 3) = 0.3547, label 0: right
        [0, off, off, off, off, off, off, off],  # 1, right
    ], dtype=torch.float64)
    labels = torch.tensor([7, 7, 0, 0])
    assert logits.log_softmax(1).exp().max(1).values[:2].tolist() == [0.25, 0.5]  # the edges are hit exactly
    r = scored(logits, labels, list("abcdefgh"), bins=4)
    np.testing.assert_array_equal(r.bin_count, [1, 2, 0, 1])  # [lo, hi) gives [0, 2, 1, 1]
    np.testing.assert_array_equal(r.bin_correct, [0, 1, 0, 1])
    p = math.exp(0.5) / (math.exp(0.5) + 3)
    rows = r.reliability()
    assert rows[0]["confidence"] == 0.25 and rows[1]["confidence"] == pytest.approx((0.5 + p) / 2, abs=1e-12)
    # bin 0: |0 - 1/4|; bin 1: 2 |1/2 - (1/2 + p) / 2| = 1/2 - p; bin 3: |1 - 1| ([lo, hi): 3/4 - p + 1/2)
    assert r.ece == pytest.approx((0.25 + 0.5 - p) / 4, abs=1e-12)


def test_top5_counts_the_label_anywhere_in_the_five_highest() -> None:
    # 7 classes; the label of row i ranks i-th (0-based) by logit: ranks 0..4 are top-5 hits, 5 and 6 are not
    logits = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1]]).repeat(7, 1)
    labels = torch.arange(7)
    r = scored(logits, labels, list("abcdefg"))
    assert r.k == 5
    assert r.correct_top1 == 1 and r.top1 == pytest.approx(1 / 7)
    assert r.correct_topk == 5 and r.topk == pytest.approx(5 / 7)
    small = scored(logits[:3, :3], torch.tensor([2, 1, 0]), list("abc"))
    assert small.k == 3 and small.topk == 1.0 and small.top1 == pytest.approx(1 / 3)


def test_confusion_matrix_rows_are_truth_columns_predictions() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    r = scored(torch.nn.functional.one_hot(preds, 4).double() * 5, labels, list("abcd"))
    np.testing.assert_array_equal(r.confusion, [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r.class_counts, [2, 1, 3, 0])
    acc = r.per_class_accuracy
    np.testing.assert_allclose(acc[:3], [0.5, 1.0, 2 / 3])
    assert math.isnan(acc[3])  # a class without images has no accuracy, not 0


def _numpy_ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al. 2017 written out with loops: bins (lo, hi], ECE = sum_b |B_b|/N |acc(B_b) - conf(B_b)|."""
    probs = _softmax(logits)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for b in range(bins):
        members = [i for i in range(len(labels)) if edges[b] < probs[i].max() <= edges[b + 1]]
        if not members:
            continue
        acc = np.mean([probs[i].argmax() == labels[i] for i in members])
        conf = np.mean([probs[i].max() for i in members])
        total += len(members) / len(labels) * abs(acc - conf)
    return total


def test_ece_matches_an_independent_numpy_loop() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(500, 6))
    labels = rng.integers(0, 6, 500)
    logits[np.arange(250), labels[:250]] += 2.5  # half of them right and confident: a non-trivial diagram
    r = scored(torch.from_numpy(logits).float(), torch.from_numpy(labels), list("abcdef"))
    expected = _numpy_ece(logits.astype(np.float32).astype(np.float64), labels)
    assert expected > 0.01
    assert r.ece == pytest.approx(expected, abs=1e-9)


def test_merge_of_halves_equals_the_whole() -> None:
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(301, 12)))
    labels = torch.from_numpy(rng.integers(0, 12, 301))
    classes = [f"c{i}" for i in range(12)]
    whole = scored(logits, labels, classes)
    a = scored(logits[:120], labels[:120], classes)
    b = EvaluationResult(classes).update(logits[120:200], labels[120:200]).update(logits[200:], labels[200:])
    merged = a.merge(b)
    assert (merged.n, merged.correct_top1, merged.correct_topk) == (whole.n, whole.correct_top1, whole.correct_topk)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    np.testing.assert_array_equal(merged.bin_count, whole.bin_count)
    np.testing.assert_array_equal(merged.bin_correct, whole.bin_correct)
    np.testing.assert_allclose(merged.bin_confidence_sum, whole.bin_confidence_sum, rtol=1e-12)
    for metric in ("top1", "topk", "ece", "nll"):
        assert getattr(merged, metric) == pytest.approx(getattr(whole, metric), rel=1e-12), metric
    assert a.n == 120 and b.n == 181  # merge made a new result; the parts are untouched
    with pytest.raises(ValueError, match="different classes"):
        a.merge(EvaluationResult(classes[:-1]))


def test_bad_inputs_are_refused_with_a_message() -> None:
    r = EvaluationResult(list("abc"))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        r.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        r.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    assert r.n == 0 and math.isnan(r.top1) and r.summary()["top1"] is None  # NaN is JSON null


def test_figures_name_classes_only_when_readable() -> None:
    rng = np.random.default_rng(3)
    few = scored(torch.from_numpy(rng.normal(size=(50, 8))),
                                       torch.from_numpy(rng.integers(0, 8, 50)), [f"k{i}" for i in range(8)])
    ax = confusion_figure(few).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"k{i}" for i in range(8)]
    image = ax.images[0].get_array()
    np.testing.assert_allclose(np.asarray(image).sum(1), 1.0)  # normalized per true class
    many = scored(torch.from_numpy(rng.normal(size=(50, 40))),
                                        torch.from_numpy(rng.integers(0, 40, 50)), [f"k{i}" for i in range(40)])
    assert not any(t.get_text().startswith("k") for t in confusion_figure(many).axes[0].get_yticklabels())
    title = reliability_figure(few).axes[0].get_title()
    assert f"{few.ece:.2%}" in title


def _is_png(path: Path) -> bool:
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.numerics  # batches of 24 against one of 64: the closest top-2 gap is 0.32, the noise 1e-5
def test_cli_on_the_shipped_shapes_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from resnet_lab.data.shapes import ShapesDataset
    from resnet_lab.models.weights import load_checkpoint

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(SHAPES_MODEL), "--data", "shapes", "--n", "64", "--out", str(out),
                 "--batch-size", "24", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "per_class.csv", "reliability.png",
                                                    "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    model = load_checkpoint(SHAPES_MODEL).model
    dataset = ShapesDataset(64, 999, 32)  # the checkpoint's JSON test seed and input size
    assert summary["n"] == 64 and summary["data"]["seed"] == 999
    with torch.no_grad():  # the predictions recomputed here, in one batch
        preds, labels = model.eval()(dataset.normalized()).argmax(1), dataset.labels
    assert summary["top1"] == pytest.approx(float((preds == labels).double().mean()), abs=1e-12)
    assert summary["model"] == f"file:{SHAPES_MODEL.relative_to(ROOT).as_posix()}"  # never the server's path
    recorded = json.dumps({k: v for k, v in summary.items() if k != "command"})  # the command is what was typed
    assert str(ROOT) not in recorded and str(tmp_path) not in recorded
    assert summary["command"].startswith("python -m resnet_lab evaluate --model")
    assert len(summary["reliability"]) == 15 and 0 <= summary["ece"] < 1
    rows = _read_csv(out / "per_class.csv")
    assert [r["class"] for r in rows] == list(dataset.classes)
    assert [int(r["count"]) for r in rows] == np.bincount(labels.numpy(), minlength=8).tolist()
    assert [int(r["correct"]) for r in rows] == np.bincount(labels[preds == labels].numpy(), minlength=8).tolist()
    assert _is_png(out / "confusion.png") and _is_png(out / "reliability.png")
    assert "top-1" in capsys.readouterr().out


def _write_cifar10(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = (np.arange(n) * 7 % 10).tolist()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [s.encode() for s in names]}, f)
    return data, np.array(labels), names


def test_cli_on_cifar_format_files(tmp_path: Path) -> None:
    from resnet_lab.models.resnet import build
    from resnet_lab.models.weights import save_checkpoint

    data, labels, names = _write_cifar10(tmp_path / "data", 37)
    model = build("resnet20", num_classes=10, seed=0).eval()
    ckpt = save_checkpoint(model, tmp_path / "ckpt" / "random20", {"arch": "resnet20", "num_classes": 10})
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(ckpt), "--data", "cifar10", "--data-dir", str(tmp_path / "data"),
                 "--no-checksum", "--batch-size", "16", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 37 and summary["num_classes"] == 10 and summary["data"]["name"] == "cifar10"
    rows = _read_csv(out / "per_class.csv")
    assert [r["class"] for r in rows] == names
    assert [int(r["count"]) for r in rows] == np.bincount(labels, minlength=10).tolist()
    # predictions recomputed here: the images normalized with the model's own mean/std, at 32 px
    cfg = model.pretrained_cfg
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        preds = model(x).argmax(1).numpy()
    assert [int(r["predicted"]) for r in rows] == np.bincount(preds, minlength=10).tolist()
    assert summary["top1"] == pytest.approx(float((preds == labels).mean()), abs=1e-12)
    assert _is_png(out / "confusion.png") and _is_png(out / "reliability.png")


def test_cli_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--model", str(SHAPES_MODEL), "--data", "imagenet"]) == 2
    assert "argument --data: unknown data 'imagenet'" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(SHAPES_MODEL), "--data", "cifar10", "--data-dir", str(tmp_path),
                 "--no-checksum"]) == 2
    err = capsys.readouterr().err
    assert "cifar10 not found" in err and "Traceback" not in err
    _write_cifar10(tmp_path / "data", 5)
    assert main(["evaluate", "--model", str(SHAPES_MODEL), "--data", "cifar10", "--data-dir", str(tmp_path / "data"),
                 "--no-checksum"]) == 2
    assert "predicts 8 classes but cifar10 has 10" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet18.a1_in1k"]) == 2  # a hub tag, offline here: a message, fast
    assert "resnet18" in capsys.readouterr().err


# ----------------------------------------------------------------------------- image folders

COLOURS = {"red": (210, 30, 30), "blue": (30, 40, 200), "green": (30, 180, 40)}
FOLDER_META = {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear",
               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list[Path]]:
    """`counts[c]` noisy solid-colour 32 px images per class, alternately PNG and JPEG."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        files[c] = []
        for i in range(n):
            arr = np.clip(np.array(COLOURS.get(c, (128, 128, 128))) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
            path = root / c / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(arr.astype(np.uint8)).save(path)
            files[c].append(path)
    return files


def _checkpoint(tmp_path: Path, arch: str, classes: list[str] | None, num_classes: int, name: str) -> Path:
    from resnet_lab.models.resnet import build
    from resnet_lab.models.weights import save_checkpoint

    model = build(arch, num_classes=num_classes, seed=1).eval()
    meta = {"arch": arch, "num_classes": num_classes, **FOLDER_META, **({"classes": classes} if classes else {})}
    return save_checkpoint(model, tmp_path / "ckpt" / name, meta)


def _reference_predictions(ckpt: Path, paths: list[Path]) -> np.ndarray:
    """The checkpoint's top-1 for each file, computed here: 32 px in, crop_pct 1, so the eval transform is just
    ToTensor and the checkpoint's mean/std (JPEG decoded by PIL at full size: these are 32 px already)."""
    from resnet_lab.models.weights import load_checkpoint

    model = load_checkpoint(ckpt).model.eval()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                     for p in paths])
    x = (x - torch.tensor(FOLDER_META["mean"]).view(1, 3, 1, 1)) / torch.tensor(FOLDER_META["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).argmax(1).numpy()


@pytest.fixture
def red_blue(tmp_path: Path) -> tuple[Path, dict[str, list[Path]], list[Path]]:
    """A red/blue folder (5 red, 3 blue) with two unusable files: garbage bytes and a truncated PNG."""
    root = tmp_path / "colours"
    files = _write_folder(root, {"red": 5, "blue": 3})
    (root / "blue" / "broken.jpg").write_bytes(b"not an image at all")
    good = files["red"][1].read_bytes()
    (root / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root, files, [root / "blue" / "broken.jpg", root / "red" / "truncated.png"]


def test_cli_on_a_folder_maps_labels_by_name_and_lists_bad_files(tmp_path: Path, red_blue) -> None:
    root, files, bad = red_blue
    # the model's classes in an order that is NOT the folder's sorted one (blue < red): labels must follow names
    ckpt = _checkpoint(tmp_path, "resnet20", ["red", "blue"], 2, "rb")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(ckpt), "--data", f"folder:{root}", "--out", str(out),
                 "--batch-size", "3", "--workers", "2", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["data"]["files"] == 10 and summary["data"]["class_match"] == "names"
    assert sorted(s["path"] for s in summary["data"]["skipped"]) == sorted(str(p) for p in bad)
    assert all(s["reason"] for s in summary["data"]["skipped"])
    rows = _read_csv(out / "per_class.csv")
    assert [(r["class"], int(r["count"])) for r in rows] == [("red", 5), ("blue", 3)]
    paths = files["red"] + files["blue"]
    truth = np.array([0] * 5 + [1] * 3)
    preds = _reference_predictions(ckpt, paths)
    assert [int(r["predicted"]) for r in rows] == np.bincount(preds, minlength=2).tolist()
    assert summary["top1"] == pytest.approx(float((preds == truth).mean()), abs=1e-12)
    assert _is_png(out / "confusion.png") and _is_png(out / "reliability.png")


def test_folder_classes_that_do_not_match_the_model_are_named(tmp_path: Path, capsys) -> None:
    root = tmp_path / "three"
    _write_folder(root, {"red": 1, "blue": 1, "green": 1})
    ckpt = _checkpoint(tmp_path, "resnet20", ["red", "blue"], 2, "rb")
    assert main(["evaluate", "--model", str(ckpt), "--data", f"folder:{root}", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "[blue, green, red]" in err and "[red, blue]" in err and "not among the model's classes: [green]" in err
    assert "Traceback" not in err
    _write_folder(tmp_path / "split" / "val", {"red": 1, "blue": 1})
    (tmp_path / "split" / "train").mkdir()
    assert main(["evaluate", "--model", str(ckpt), "--data", f"folder:{tmp_path / 'split'}", "--workers", "0"]) == 2
    assert "folder:PATH/val" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(ckpt), "--data", f"folder:{tmp_path / 'nowhere'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(ckpt), "--data", "folder:"]) == 2
    assert "argument --data: unknown data 'folder:'" in capsys.readouterr().err


def test_imagenet_val_folder_lands_on_timms_indices(tmp_path: Path) -> None:
    from timm.data import ImageNetInfo

    from resnet_lab.data.images import imagenet_labels
    from resnet_lab.models.weights import load_checkpoint
    from resnet_lab.training.evaluation import folder_dataset, imagenet_synsets, match_classes

    info = ImageNetInfo()
    synsets = [info.index_to_label_name(i) for i in (1, 500, 999)]  # a partial subset: sorted order is 0, 1, 2
    root = tmp_path / "val"
    _write_folder(root, {s: 2 for s in synsets})
    ckpt = _checkpoint(tmp_path, "resnet18", None, 1000, "r18")  # random init, 32 px, no class names: ImageNet's
    loaded = load_checkpoint(ckpt)
    dataset, match, _ = folder_dataset(root, None, 1000, loaded.pretrained_cfg)
    assert match.how == "imagenet-synsets" and match.classes == list(info.label_names())
    assert [label for _, label in dataset.samples] == [1, 1, 500, 500, 999, 999]
    # a model whose classes are ImageNet's descriptions (as the app names them) is ImageNet's too
    assert match_classes(synsets, list(imagenet_labels()), 1000).index == dict(zip(synsets, (1, 500, 999)))
    assert imagenet_synsets()[500] == synsets[1]
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(ckpt), "--data", f"folder:{root}", "--out", str(out),
                 "--workers", "0", "--device", "cpu"]) == 0
    rows = _read_csv(out / "per_class.csv")
    assert len(rows) == 1000 and rows[500]["class"] == synsets[1]
    assert {i for i, r in enumerate(rows) if int(r["count"])} == {1, 500, 999}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["k"] == 5 and summary["data"]["class_match"] == "imagenet-synsets"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_merge_to_the_single_process_result(tmp_path: Path, red_blue) -> None:
    import os
    import subprocess
    import sys

    root, _, _ = red_blue  # 8 good files and 2 bad ones: the ranks' shares differ, each meets a bad file or not
    ckpt = _checkpoint(tmp_path, "resnet20", ["red", "blue"], 2, "rb")
    single = tmp_path / "single"
    args = ["evaluate", "--model", str(ckpt), "--data", f"folder:{root}", "--batch-size", "2", "--workers", "0",
            "--device", "cpu"]
    assert main([*args, "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "resnet_lab", *args, "--out", str(tmp_path / "sharded")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "summary.json").read_text())
    b = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    for key in ("n", "num_classes", "k"):
        assert a[key] == b[key], key
    for key in ("top1", "top2", "ece", "nll"):
        assert b[key] == pytest.approx(a[key], abs=1e-9), key
    assert [r["count"] for r in a["reliability"]] == [r["count"] for r in b["reliability"]]
    assert a["data"]["skipped"] == b["data"]["skipped"] and len(b["data"]["skipped"]) == 2
    assert _read_csv(single / "per_class.csv") == _read_csv(tmp_path / "sharded" / "per_class.csv")
    assert proc.stdout.count("top-1") == 1  # only rank 0 reports


def test_tensor_data_shards_cover_the_set_once(tmp_path: Path) -> None:
    """Shapes/CIFAR under torchrun: each rank's `shard_indices` share, merged, is the whole set (rank by rank here,
    in one process: `Dist` is only rank and world size to the sharding)."""

    from resnet_lab.models.weights import load_checkpoint
    from resnet_lab.runtime.distributed import Dist
    from resnet_lab.training.evaluation import score_share

    loaded = load_checkpoint(SHAPES_MODEL)
    whole = score_share(loaded, "shapes", Dist(), n=37, batch_size=8).result
    parts = [score_share(loaded, "shapes", Dist(rank, 3, rank), n=37, batch_size=8).result for rank in range(3)]
    assert [p.n for p in parts] == [13, 12, 12]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert (merged.n, merged.correct_top1, merged.correct_topk) == (whole.n, whole.correct_top1, whole.correct_topk)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    assert merged.ece == pytest.approx(whole.ece, abs=1e-9)


def test_an_error_on_one_rank_ends_every_rank_at_once_and_is_printed_once(tmp_path: Path, red_blue) -> None:
    """Rank 1 fails; rank 0, done with its share, must not wait in the gather for a rank that left."""
    import os
    import subprocess
    import sys

    root, _, _ = red_blue
    ckpt = _checkpoint(tmp_path, "resnet20", ["red", "blue"], 2, "rb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         str(Path(__file__).with_name("one_rank_fails.py")), "evaluate", "--model", str(ckpt), "--data",
         f"folder:{root}", "--workers", "0", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,  # a hang would be the collective's minutes
    )
    assert proc.returncode != 0
    assert proc.stderr.count("evaluate: rank 1: this rank's share cannot be read") == 1, proc.stderr[-2000:]
    assert proc.stderr.count("this rank's share cannot be read") == 1  # said once, by rank 0; no traceback of ours
