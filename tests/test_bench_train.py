"""bench_train --pipeline: its CIFAR writer produces the real on-disk format, and one tiny CPU run fills its table."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from benchmarks import bench_train as B
from resnet_lab.data.datasets import load_cifar


def test_written_cifar_is_read_back_pixel_exact_by_load_cifar(tmp_path):
    folder = B.write_cifar10(tmp_path, n_train=23, n_test=7, seed=3)
    raw = (folder / "data_batch_2").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, as the published batches
    d = pickle.loads(raw, encoding="bytes")
    assert set(d) == {b"batch_label", b"data", b"labels", b"filenames"}
    images, labels, classes = load_cifar("cifar10", tmp_path, train=True, checksum=False)
    assert classes == list(B.CIFAR10_NAMES) and images.shape == (23, 3, 32, 32) and images.dtype == torch.uint8
    first = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    n1 = len(first[b"labels"])
    assert np.array_equal(images[:n1].reshape(n1, -1).numpy(), first[b"data"])
    assert labels[:n1].tolist() == first[b"labels"]
    test_images, _, _ = load_cifar("cifar10", tmp_path, train=False, checksum=False)
    assert len(test_images) == 7


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return B.bench_pipeline("resnet20", n=48, n_folder=30, batch=8, device=torch.device("cpu"), workers=0, steps=1,
                            warmup=1, compile_too=False, channels_last=False, tmp=tmp_path_factory.mktemp("pipe"))


def test_pipeline_table_has_every_source_at_both_precisions(rows):
    assert [(r["precision"], r["source"]) for r in rows] == [
        (p, s) for p in ("fp32", "bf16") for s in ("synthetic", "cifar", "folder")]
    for r in rows:
        assert "error" not in r and r["steps_s"] > 0 and r["images_s"] == pytest.approx(8 * r["steps_s"])
    synthetic = {r["precision"]: r["steps_s"] for r in rows if r["source"] == "synthetic"}
    for r in rows:
        assert r["ratio"] == pytest.approx(synthetic[r["precision"]] / r["steps_s"])


def test_a_compile_that_fails_at_its_first_call_is_a_row_not_a_crash(tmp_path, monkeypatch, capsys):
    import resnet_lab.training.train

    def broken(model, enabled, log):
        if not enabled:
            return model

        def fail(x):
            raise RuntimeError("no C++ compiler\nmore")

        return fail

    monkeypatch.setattr(resnet_lab.training.train, "maybe_compile", broken)
    rows = B.bench_pipeline("resnet20", n=24, n_folder=20, batch=8, device=torch.device("cpu"), workers=0, steps=1,
                            warmup=1, compile_too=True, channels_last=True, tmp=tmp_path)
    compiled = [r for r in rows if r["compile"]]
    assert len(compiled) == 6 and all(r["error"] == "RuntimeError: no C++ compiler" for r in compiled)
    assert all("error" not in r for r in rows if not r["compile"])
    out = capsys.readouterr().out
    assert out.count("failed: RuntimeError: no C++ compiler") == 6 and B.HEADER in out
