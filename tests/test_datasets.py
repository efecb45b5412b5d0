"""CIFAR-10/100 in the real python-pickle format, written here and read by the real loaders."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_lab.data.datasets import DatasetError, cifar_root, expected_files, load_cifar
from resnet_lab.data.folders import FolderSplit, image_folder, stratified_split
from resnet_lab.data.images import eval_transform
from resnet_lab.training.augment import train_transform

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


# ----------------------------------------------------------------------------- image folders


def _image(cls: int, i: int) -> Image.Image:
    """Learnable content: class 0 has horizontal stripes, class 1 vertical ones, with per-image noise."""
    rng = np.random.default_rng(100 * cls + i)
    rows, cols = np.mgrid[0:40, 0:48]
    plane = ((rows if cls == 0 else cols) // 5 % 2 * 200).astype(np.uint8)
    arr = np.stack([plane] * 3, -1).astype(np.int16) + rng.integers(-20, 20, (40, 48, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_folder(root: Path, per_class: dict[str, int], bad: bool = True) -> list[Path]:
    """An ImageFolder tree of JPEG and PNG files (alternating); with `bad`, a truncated JPEG and a text file named
    .jpg in the first class. Returns the bad files."""
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            ext = "jpg" if i % 2 == 0 else "png"
            _image(c, i).save(root / name / f"{i:03d}.{ext}")
    if not bad:
        return []
    first = root / next(iter(per_class))
    buf = io.BytesIO()
    _image(0, 99).save(buf, "JPEG")
    (first / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (first / "notes.jpg").write_text("not an image at all\n")
    return [first / "truncated.jpg", first / "notes.jpg"]


TINY_CFG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.875,
            "interpolation": "bilinear"}


def _split(root: Path, **kw) -> FolderSplit:
    kw.setdefault("train_transform", train_transform(TINY_CFG))
    kw.setdefault("val_transform", eval_transform(TINY_CFG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return image_folder(root, **kw)


def test_folder_classes_counts_and_bad_files_reported_once(tmp_path: Path) -> None:
    """Classes come from sorted sub-folders; the truncated JPEG and the text file are each warned about once
    (path and reason), listed in `skipped`, and in neither split; the counts add up to the good files."""
    bad = write_folder(tmp_path, {"zebra": 10, "ant": 10})
    bad.append(tmp_path / "ant" / "bomb.png")  # 9000x8000 = 72 MP in a few kB: over decode_image's pixel limit
    Image.new("1", (9000, 8000)).save(bad[-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = image_folder(tmp_path, val_fraction=0.2, seed=0)
    assert split.classes == ("ant", "zebra") and split.layout == "split"
    assert sorted(p for p, _ in split.skipped) == sorted(map(str, bad))
    reasons = dict(split.skipped)
    assert "truncated or corrupt" in reasons[str(bad[0])] and "not an image" in reasons[str(bad[1])]
    assert "9000x8000 = 72,000,000 pixels, more than the limit" in reasons[str(bad[2])]
    for b in bad:
        assert sum(str(b) in str(w.message) for w in caught) == 1
    used = {p for p, _ in split.train.samples + split.val.samples}
    assert not used & set(map(str, bad))
    assert split.counts == {"train": {"ant": 8, "zebra": 8}, "val": {"ant": 2, "zebra": 2}}
    labels = {Path(p).parent.name: y for p, y in split.train.samples}
    assert labels == {"ant": 0, "zebra": 1}


def test_stratified_split_is_deterministic_disjoint_and_seeded(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 12, "b": 7}, bad=False)
    one, two = _split(tmp_path, seed=3), _split(tmp_path, seed=3)
    assert one.val.samples == two.val.samples and one.train.samples == two.train.samples
    other = _split(tmp_path, seed=4)
    assert set(other.val.samples) != set(one.val.samples)
    train, val = set(one.train.samples), set(one.val.samples)
    assert not train & val and len(train | val) == 19
    assert one.counts["val"] == {"a": 1, "b": 1}  # round(0.1 * n), but at least 1 per class
    # independent of the order the files are listed in
    samples = list(one.train.samples + one.val.samples)
    t1, v1 = stratified_split(samples, 2, 0.3, seed=5)
    t2, v2 = stratified_split(samples[::-1], 2, 0.3, seed=5)
    assert (t1, v1) == (t2, v2) and len(v1) == round(0.3 * 12) + round(0.3 * 7)
    single = stratified_split([("x/0.png", 0), ("y/0.png", 1), ("y/1.png", 1)], 2, 0.1, seed=0)
    assert single[1] == [("y/0.png", 1)] or single[1] == [("y/1.png", 1)]  # a 1-file class stays in train


def test_train_val_folders_used_and_class_lists_must_match(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"cat": 4, "dog": 4}, bad=False)
    write_folder(tmp_path / "val", {"cat": 2, "dog": 3}, bad=False)
    split = _split(tmp_path)
    assert split.layout == "train/val"
    assert split.counts == {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 3}}
    assert all("/val/" in p for p, _ in split.val.samples)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "dogs")
    with pytest.raises(DatasetError, match=r"only in train/: \['dog'\]; only in val/: \['dogs'\]"):
        _split(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_over_folder_completes_with_good_samples_only(tmp_path: Path, workers: int) -> None:
    """A DataLoader epoch yields every good sample once, as tensors of the model's input size, even when a file
    goes bad after the scan (it is replaced by the next good sample instead of stopping the epoch)."""
    write_folder(tmp_path, {"a": 6, "b": 6})
    split = _split(tmp_path, val_fraction=0.25)
    ds = split.train
    broken = ds.samples[2][0]
    Path(broken).write_bytes(b"\xff\xd8\xff garbage")  # bad after the scan
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.shape == (len(ds), 3, 32, 32) and torch.isfinite(images).all()
    assert labels.tolist() == [y for _, y in ds.samples[:2]] + [ds.samples[3][1]] + [y for _, y in ds.samples[3:]]
    if workers == 0:  # in worker processes the record stays there; the scan's `skipped` is what the caller gets
        assert [p for p, _ in ds.skipped] == [broken] and sum(broken in str(w.message) for w in caught) == 1


def test_imbalance_warns_with_counts(tmp_path: Path) -> None:
    write_folder(tmp_path, {"many": 24, "few": 2}, bad=False)
    with pytest.warns(UserWarning, match=r"imbalanced .*22/1.*'few': 1, 'many': 22"):
        image_folder(tmp_path, val_fraction=0.1)
    balanced = tmp_path / "balanced"
    write_folder(balanced, {"x": 4, "y": 4}, bad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image_folder(balanced)


def test_empty_or_classless_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class sub-folders"):
        image_folder(tmp_path)
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        image_folder(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        image_folder(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _image(0, 0).save(tmp_path / "a" / "0.png")
    with pytest.raises(DatasetError, match=r"no readable training images for the class\(es\) \['b'\]"):
        image_folder(tmp_path)
    with pytest.raises(DatasetError, match="val_fraction"):
        image_folder(tmp_path, val_fraction=1.0)


def test_train_transform_is_random_resized_crop_and_flip_at_input_size_above_64_px() -> None:
    tf = train_transform({**TINY_CFG, "input_size": (3, 96, 96)})
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert "ColorJitter" not in names
    assert tf(_image(0, 0)).shape == (3, 96, 96)
