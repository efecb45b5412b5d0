"""CIFAR-10/100 in the real python-pickle format, written here and read by the real loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_lab.datasets import DatasetError, cifar_root, expected_files, load_cifar

N = 20  # images per batch


def _batch(rng: np.random.Generator, n_classes: int, label_key: bytes | str, tag: str) -> dict:
    """A batch dict as the official files hold it (keys as a `encoding="bytes"` reader sees them)."""
    k = (lambda s: s.encode()) if isinstance(label_key, bytes) else (lambda s: s)
    return {
        k("batch_label"): f"{tag} of 1".encode(),
        k("data"): rng.integers(0, 256, (N, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, n_classes, N)],
        k("filenames"): [f"img_{tag}_{i}.png".encode() for i in range(N)],
    }


def write_cifar10(root: Path) -> dict[str, dict]:
    """CIFAR-10 with bytes keys, pickled at protocol 2 as Python 2 did (numpy data goes through _codecs.encode)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f: _batch(rng, 10, b"labels", f) for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]}
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": N, b"num_vis": 3072}
    for f, d in {**batches, "batches.meta": meta}.items():
        (folder / f).write_bytes(pickle.dumps(d, protocol=2))
    return batches


def write_cifar100(root: Path) -> dict[str, dict]:
    """CIFAR-100 with str keys (what `encoding="latin1"` gives torchvision), default protocol."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {f: {**_batch(rng, 100, "fine_labels", f), "coarse_labels": [0] * N} for f in ("train", "test")}
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    for f, d in {**batches, "meta": meta}.items():
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)
    return batches


def _key(d: dict, name: str):
    return d[name.encode()] if name.encode() in d else d[name]


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_reads_pixel_exact_in_torchvisions_chw_order(tmp_path, train):
    """Row-major [3072] = R plane, G plane, B plane, each 32x32: a wrong reshape or an HWC order moves pixels."""
    batches = write_cifar10(tmp_path)
    images, labels, classes = load_cifar("cifar10", tmp_path, train=train, checksum=False)
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    assert images.dtype == torch.uint8 and images.shape == (N * len(files), 3, 32, 32)
    assert labels.dtype == torch.int64 and classes == [f"class{i}" for i in range(10)]
    raw = np.concatenate([batches[f][b"data"] for f in files])
    assert labels.tolist() == sum((batches[f][b"labels"] for f in files), [])
    assert torch.equal(images.reshape(len(raw), -1), torch.from_numpy(raw))
    for idx in (0, len(raw) // 2 + 3, len(raw) - 1):  # an independent reading of the format, pixel by pixel
        for c, y, x in ((0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 2)):
            assert int(images[idx, c, y, x]) == int(raw[idx, c * 1024 + y * 32 + x])


def test_cifar100_reads_fine_labels_and_names(tmp_path):
    batches = write_cifar100(tmp_path)
    images, labels, classes = load_cifar("cifar100", tmp_path, train=False, checksum=False)
    assert images.shape == (N, 3, 32, 32) and len(classes) == 100 and classes[7] == "fine7"
    assert labels.tolist() == batches["test"]["fine_labels"]
    assert torch.equal(images.reshape(N, -1), torch.from_numpy(batches["test"]["data"]))


def test_checksum_refuses_files_that_are_not_the_official_ones(tmp_path):
    """torchvision's md5 check really runs (no mock) and its error comes back pointing at --no-checksum."""
    write_cifar10(tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)md5 check failed.*not found or corrupted.*--no-checksum"):
        load_cifar("cifar10", tmp_path, train=True, checksum=True)


def _write_marker(path: str) -> None:
    Path(path).write_text("ran")


class _Payload:
    def __init__(self, reduce_to: tuple) -> None:
        self.reduce_to = reduce_to

    def __reduce__(self) -> tuple:
        return self.reduce_to


@pytest.mark.parametrize("kind,target", [("function", "data_batch_3"), ("os.system", "data_batch_3"),
                                         ("function", "batches.meta")])
def test_a_batch_carrying_code_is_refused_before_anything_runs(tmp_path, kind, target):
    """A plain `pickle.load` (what torchvision does) would call these; the restricted unpickler names the
    file and the global and calls nothing: the marker file is never written. Afterwards a plain load of the
    same file writes it, so the file really was hostile."""
    import os

    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / target
    if kind == "os.system":
        payload, global_name = _Payload((os.system, (f"touch {marker}",))), "system"
    else:
        payload, global_name = _Payload((_write_marker, (str(marker),))), "_write_marker"
    d = pickle.loads(path.read_bytes())
    d[b"filenames" if target != "batches.meta" else b"num_vis"] = payload
    path.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetError, match=rf"(?s){target}.*refused.*{global_name}"):
        load_cifar("cifar10", tmp_path, train=True, checksum=False)
    assert not marker.exists()
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")  # the unrestricted load torchvision does runs the payload
    assert marker.exists()


def test_missing_files_give_one_clear_error_fast(tmp_path, monkeypatch):
    """Offline and nothing there: names the folder and every expected file, and never touches the network
    (so it cannot hang on a timeout or a retry loop), with or without the md5 check."""
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the network was tried"))
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", tmp_path, train=True, checksum=False)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "--download" in msg
    for f in expected_files("cifar10", train=True, checksum=False):
        assert f in msg
    with pytest.raises(DatasetError, match=r"lacks .*test_batch"):  # torchvision checks both splits' files
        load_cifar("cifar10", tmp_path, train=True, checksum=True)
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetError, match=r"cifar100 not found.*lacks meta"):
        load_cifar("cifar100", tmp_path, train=True, checksum=False)


def test_download_where_the_network_is_unreachable_fails_at_the_probe(tmp_path, monkeypatch):
    """One short probe, then a clear error: torchvision's download (with its retries) is never reached."""
    import socket

    import torchvision.datasets as tvd

    probes = []

    def refuse(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tvd.CIFAR10, "download", lambda self: pytest.fail("torchvision's download was reached"))
    with pytest.raises(DatasetError, match="unreachable"):
        load_cifar("cifar10", tmp_path, download=True)
    assert len(probes) == 1 and probes[0][1] is not None and probes[0][1] <= 5


def test_cifar_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_LAB_DATA", str(tmp_path / "env"))
    assert cifar_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert cifar_root(None) == tmp_path / "env"
    monkeypatch.delenv("RESNET_LAB_DATA")
    assert cifar_root(None) == Path.home() / ".cache" / "resnet_lab" / "data"


def test_unknown_dataset_and_malformed_batch_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_cifar("cifar11", tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR pickle"):
        load_cifar("cifar10", tmp_path, train=False, checksum=False)
