"""An uploaded zip of <class>/<image> folders (training/zipdata.py): good images become tensors, a bad image is
skipped and listed, and a zip that is corrupt, a bomb, too many files or names paths outside its folder is refused
whole with its reason. Nothing is extracted: the test checks that the folder around the zip stays as it was."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_lab.training import zipdata
from resnet_lab.training.datasets import DatasetError


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], **infos: zipfile.ZipInfo) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in infos.values():
            zf.writestr(info, b"x")
    return path


def _good(top: str = "") -> dict[str, bytes]:
    members = {}
    for c, color in (("red", (250, 10, 10)), ("blue", (10, 10, 250))):
        for i in range(5):
            members[f"{top}{c}/{i}.png"] = _png(color)
    return members


@pytest.mark.parametrize("top", ["", "photos/"])
def test_a_good_zip_gives_normalized_tensors_and_a_held_out_part_per_class(tmp_path, top):
    before = sorted(tmp_path.iterdir())
    z = _zip(tmp_path / "mine.zip", {**_good(top), f"{top}notes.txt": b"hi", "__MACOSX/._x.png": b"junk"})
    images = zipdata.load_zip(z, size=16, seed=3)
    assert images.classes == ["blue", "red"]
    assert images.x_train.shape == (8, 3, 16, 16) and images.x_val.shape == (2, 3, 16, 16)
    assert sorted(images.y_val.tolist()) == [0, 1]  # one of each class held out
    assert torch.allclose(images.x_train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)  # its own mean and std
    red = images.x_train[images.y_train == 1][0]
    assert red[0].mean() > red[2].mean()  # the red images are red after normalization too
    assert [name for name, _ in images.skipped] == [f"{top}notes.txt"]
    assert sorted(tmp_path.iterdir()) == before + [z]  # nothing extracted beside it
    again = zipdata.load_zip(z, size=16, seed=3)
    assert torch.equal(again.x_val, images.x_val)  # the split comes from its own generator


def test_a_corrupt_image_is_skipped_and_listed_and_the_rest_is_used(tmp_path):
    members = _good()
    members["red/broken.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    members["blue/empty.png"] = b""
    images = zipdata.load_zip(_zip(tmp_path / "z.zip", members))
    assert len(images.y_train) + len(images.y_val) == 10
    skipped = dict(images.skipped)
    assert set(skipped) == {"red/broken.jpg", "blue/empty.png"} and all(skipped.values())


@pytest.mark.parametrize("name", ["../evil/x.png", "/etc/x.png", "C:/x/y.png", "a/../../b/c.png"])
def test_a_zip_naming_paths_outside_its_folder_is_refused(tmp_path, name):
    with pytest.raises(DatasetError, match="outside its own folder"):
        zipdata.load_zip(_zip(tmp_path / "z.zip", {**_good(), name: _png((0, 0, 0))}))


def test_a_symbolic_link_in_the_zip_is_refused(tmp_path):
    link = zipfile.ZipInfo("red/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(DatasetError, match="outside its own folder"):
        zipdata.load_zip(_zip(tmp_path / "z.zip", _good(), link=link))


def test_a_zip_bomb_is_refused_before_anything_is_read(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("red/a.png", _png((1, 2, 3)))
        zf.writestr("blue/b.png", b"\0" * (50 * 2**20))  # 50 MiB of zeros: ~50 KiB compressed
    assert z.stat().st_size < 2**20
    with pytest.raises(DatasetError, match="zip bomb"):
        zipdata.load_zip(z)


def test_too_many_files_or_too_many_bytes_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(zipdata, "MAX_FILES", 6)
    with pytest.raises(DatasetError, match="at most 6"):
        zipdata.load_zip(_zip(tmp_path / "many.zip", _good()))
    monkeypatch.setattr(zipdata, "MAX_FILES", 5000)
    monkeypatch.setattr(zipdata, "MAX_BYTES", 1000)
    with pytest.raises(DatasetError, match="expands to"):
        zipdata.load_zip(_zip(tmp_path / "big.zip", _good()))


def test_a_member_longer_than_its_header_says_is_a_bad_file_not_a_bomb(tmp_path):
    z = _zip(tmp_path / "z.zip", _good())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("red/0.png")
        info.file_size = 10  # a lying header: read no further than it declares
        with pytest.raises(zipfile.BadZipFile, match="CRC"):  # zipfile stops at the declared size, then checks
            zipdata._read(zf, info)


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 truncated", "not a readable zip"),
    (b"just text", "not a readable zip"),
])
def test_a_file_that_is_not_a_zip_is_refused(tmp_path, content, message):
    (tmp_path / "z.zip").write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        zipdata.load_zip(tmp_path / "z.zip")


def test_one_class_or_only_bad_files_is_refused_with_what_was_found(tmp_path):
    one = {f"red/{i}.png": _png((200, 0, 0)) for i in range(4)}
    with pytest.raises(DatasetError, match="at least 2 classes"):
        zipdata.load_zip(_zip(tmp_path / "one.zip", one))
    bad = {"red/a.png": b"junk", "blue/b.png": b"junk"}
    with pytest.raises(DatasetError, match="skipped: red/a.png: this file is not an image"):
        zipdata.load_zip(_zip(tmp_path / "bad.zip", bad))


def test_fuzzed_zips_are_refused_or_read_never_crash(tmp_path):
    """Random byte flips in a good zip: a clear DatasetError, or images with the bad ones skipped."""
    good = _zip(tmp_path / "good.zip", _good()).read_bytes()
    rng = np.random.default_rng(0)
    for i in range(40):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=8):
            data[pos] = int(rng.integers(0, 256))
        (tmp_path / "f.zip").write_bytes(bytes(data))
        try:
            images = zipdata.load_zip(tmp_path / "f.zip")
        except DatasetError:
            continue
        assert len(images.y_train) + len(images.y_val) + len(images.skipped) >= 2, i


def test_the_playground_trains_on_an_uploaded_zip_and_lists_what_it_skipped(tmp_path, monkeypatch):
    from resnet_lab.ui import playground as ui

    members = _good()
    members["red/broken.png"] = b"junk"
    z = _zip(tmp_path / "mine.zip", members)
    monkeypatch.setattr(ui, "UPDATE_S", 0.05)
    *_, last = ui.train(20, True, "he", "sgd", 0.05, 4, 3, 0, 16, str(z), "zip-session", [])
    status, files = last[0], last[7]
    assert "8 to train on, 2 held out, 2 classes (blue, red)" in status and "`red/broken.png`" in status
    from resnet_lab.checkpoints import load_checkpoint

    loaded = load_checkpoint(files[1])
    assert loaded.meta["classes"] == ["blue", "red"] and loaded.meta["data"]["name"] == "zip"
    assert loaded.model.fc.out_features == 2
