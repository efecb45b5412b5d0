"""bench_small_data: the split is shared and stratified, the written folder is what the set holds, and one tiny run
fills the table and the CSV (its accuracy is the benchmark's business, not checked here)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")
from benchmarks import bench_small_data as B  # noqa: E402


def test_the_split_is_stratified_disjoint_and_seeded():
    s = B.digits()
    tr, te = B.split(s.labels, 0)
    assert len(s.labels) == 1797 and s.images.shape == (1797, 8, 8) and s.images.max() == 255
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797 and abs(len(te) / 1797 - B.TEST_SHARE) < 0.01
    share = np.bincount(s.labels[te], minlength=10) / np.bincount(s.labels, minlength=10)
    assert np.all(np.abs(share - B.TEST_SHARE) < 0.02)
    assert np.array_equal(B.split(s.labels, 0)[1], te) and not np.array_equal(B.split(s.labels, 1)[1], te)


def test_the_folder_holds_each_image_under_its_class(tmp_path):
    s = B.digits()
    root = B.write_folder(tmp_path / "f", s.images[:20], s.labels[:20])
    files = sorted(root.glob("*/*.png"))
    assert len(files) == 20 and {f.parent.name for f in files} == {str(y) for y in s.labels[:20]}
    img = Image.open(root / str(s.labels[3]) / "00003.png")
    assert img.size == (B.SIZE, B.SIZE)
    small = np.asarray(img.resize((8, 8), Image.BOX), dtype=np.float64)  # back to 8x8: the scan's own layout
    assert np.corrcoef(small.ravel(), s.images[3].ravel())[0, 1] > 0.9


def test_one_tiny_run_fills_the_table_and_the_csv(tmp_path):
    # the real train and evaluate commands, run through `resnet_lab.__main__.main` in this process (two fresh
    # interpreters cost more than the tiny run itself); one epoch of 120 images' training part
    rows = B.run(["digits"], [0], ["--steps", "1", "--batch-size", "32"], limit=120, tmp=tmp_path,
                 command=B.resnet_lab_here)
    methods = [r["method"] for r in rows]
    assert methods == ["SVC(gamma=0.001)", "SVC, C and gamma by 5-fold CV on train", "logistic regression",
                       "ResNet-20, default recipe"]
    for r in rows:
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["ece"] <= 1.0 and r["seconds"] > 0 and r["n_test"] == 36
    assert rows[-1]["steps"] >= 1 and rows[-1]["kept"] in ("EMA", "raw weights") and rows[-1]["batch"] == 32
    assert 0.1 <= rows[-1]["temperature"] <= 10  # the small folder's default: a temperature fitted on its val split
    text = B.table(rows)
    assert text.count("\n") == 1 + len(methods) and "| digits | ResNet-20, default recipe | 1 |" in text
    with open(B.write_csv(rows, tmp_path / "rows.csv")) as f:
        assert [r["method"] for r in csv.DictReader(f)] == methods
