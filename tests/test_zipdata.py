"""An uploaded zip of <class>/<image> folders (data/zipdata.py): good images become tensors, a bad image is
skipped and listed, and a zip that is corrupt, a bomb, too many files or names paths outside its folder is refused
whole with its reason. Nothing is extracted: the test checks that the folder around the zip stays as it was."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_lab.data import images as data
from resnet_lab.data import zipdata
from resnet_lab.data.datasets import DatasetError


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


def _one_bit(side: int) -> bytes:
    """A black 1-bit PNG of side x side: a few KB whatever the side (the pixel bomb of the issue)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels are decoded from here on (PIL's `ImageFile.load`)."""
    from PIL import ImageFile

    seen, load = [], ImageFile.ImageFile.load

    def spy(self):
        if self.tile:  # pixels still to decode (a loaded image's load() returns at once)
            seen.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


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
    scan = zipdata.scan_zip(z)  # what the upload shows, from the headers: what the run then gets
    assert scan.counts == {"blue": 5, "red": 5} and (scan.n_train, scan.n_val) == (8, 2)


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


def test_a_pixel_bomb_zip_is_refused_from_its_headers_before_any_pixel_is_decoded(tmp_path, decoded):
    """The issue's upload: a 1-bit PNG of 8000x8000 (64 MP, at the per-image limit) is 7.8 KB and took 0.3 s to
    decode; stored in a zip (1x: no ratio to catch), 400 of them held the app's long-job slot for 3 minutes. A zip
    whose images hold more than MAX_TOTAL_PIXELS is refused on their headers, naming the limit and an image."""
    bomb = _one_bit(8000)
    assert len(bomb) < 10_000 and Image.open(io.BytesIO(bomb)).size == (8000, 8000)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        for i in range(zipdata.MAX_TOTAL_PIXELS // data.MAX_PIXELS + 1):
            zf.writestr(f"{('red', 'blue')[i % 2]}/{i}.png", bomb)
    for read in (zipdata.load_zip, zipdata.scan_zip):
        with pytest.raises(DatasetError, match=f"more than {zipdata.MAX_TOTAL_PIXELS:,} pixels in all .*8000x8000"):
            read(z)
    assert decoded == []


def test_an_image_over_the_pixel_limit_is_skipped_from_its_header_when_the_zip_is_uploaded(tmp_path, decoded):
    """Each image's header is read on upload (`scan_zip`): one over `data.MAX_PIXELS` is skipped with the limit,
    nothing decoded; the scan counts each kind's pixels for the estimate (JPEG and 16-bit decode at other rates)."""
    huge = _one_bit(9000)
    assert len(huge) < 20_000
    buf = io.BytesIO()
    Image.new("RGB", (50, 20)).save(buf, format="JPEG")
    deep = io.BytesIO()
    Image.fromarray(np.full((10, 30), 4000, np.uint16)).save(deep, format="PNG")
    z = _zip(tmp_path / "z.zip", {**_good(), "red/huge.png": huge, "blue/5.jpg": buf.getvalue(),
                                  "red/5.png": deep.getvalue()})
    scan = zipdata.scan_zip(z)
    assert scan.skipped == [("red/huge.png", f"the image is 9000x9000 = 81,000,000 pixels, more than the limit of "
                                             f"{data.MAX_PIXELS:,}; downscale it and try again")]
    assert scan.counts == {"blue": 6, "red": 6} and scan.pixels == {"jpeg": 1000, "wide": 300, "8-bit": 12_000}
    assert decoded == []
    images = zipdata.load_zip(z, size=16)
    assert (9000, 9000) not in decoded and images.skipped == scan.skipped and len(decoded) == 12


def test_a_class_with_one_image_is_refused_saying_how_many_each_class_needs(tmp_path):
    """One image per class gave an empty held-out set (and the visitor a RuntimeError from torch's max()); a
    class left with one image once the others failed to decode is refused too."""
    one_each = _zip(tmp_path / "one.zip", {"red/a.png": _png((200, 0, 0)), "blue/b.png": _png((0, 0, 200))})
    for read in (zipdata.load_zip, zipdata.scan_zip):
        with pytest.raises(DatasetError, match="each class needs at least 2 usable images, one to train on and one "
                                               "to hold out, but 'blue' has 1, 'red' has 1"):
            read(one_each)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(noise, "PNG")
    cut = noise.getvalue()[:len(noise.getvalue()) // 2]  # the header reads, the pixels do not
    members = {**{k: v for k, v in _good().items() if not k.startswith("red/")}, "red/a.png": _png((200, 0, 0)),
               "red/cut.png": cut}
    z = _zip(tmp_path / "cut.zip", members)
    assert zipdata.scan_zip(z).counts == {"blue": 5, "red": 2}
    with pytest.raises(DatasetError, match="'red' has 1; skipped: red/cut.png"):
        zipdata.load_zip(z)


def test_stop_is_honoured_between_images_while_the_zip_is_read(tmp_path, decoded):
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 3

    with pytest.raises(zipdata.ReadStopped, match="after reading 3 of the zip's 10 images"):
        zipdata.load_zip(_zip(tmp_path / "z.zip", _good()), stop=stop)
    assert len(decoded) == 3


def test_too_many_files_or_too_many_bytes_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(zipdata, "MAX_FILES", 6)
    with pytest.raises(DatasetError, match="at most 6"):
        zipdata.load_zip(_zip(tmp_path / "many.zip", _good()))
    monkeypatch.setattr(zipdata, "MAX_FILES", 5000)
    monkeypatch.setattr(zipdata, "MAX_BYTES", 1000)
    with pytest.raises(DatasetError, match="expands to"):
        zipdata.load_zip(_zip(tmp_path / "big.zip", _good()))


def _lie_about_size(path: Path, name: str, size: int) -> None:
    """Rewrite the uncompressed size `name`'s local header and central directory entry declare (as a bomb would)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        struct.pack_into("<I", data, zf.getinfo(name).header_offset + 22, size)
    at = next(i for i in range(len(data)) if data[i:i + 4] == b"PK\x01\x02"
              and data[i + 46:i + 46 + len(name)] == name.encode())
    struct.pack_into("<I", data, at + 24, size)
    path.write_bytes(bytes(data))


def test_a_member_that_expands_past_its_declared_size_is_never_held_past_it(tmp_path):
    """A bomb that lies: a PNG whose entry declares 100,000 bytes (so the ratio check passes, and its header is
    read) while its deflate stream goes on to 64 MiB. Reading stops at the declared size: the member is a damaged
    file (its CRC cannot match), the rest is used, and the 64 MiB never exist in memory (zlib's output is counted
    by tracemalloc)."""
    import tracemalloc

    z = tmp_path / "liar.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _good().items():
            zf.writestr(name, data)
        zf.writestr("red/bomb.png", _png((9, 9, 9)) + b"\0" * (64 * 2**20))
    _lie_about_size(z, "red/bomb.png", 100_000)
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("red/bomb.png")
        assert info.file_size == 100_000 and info.compress_size * 200 > 100_000  # the whole-zip checks see no bomb
    tracemalloc.start()
    try:
        images = zipdata.load_zip(z, size=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(images.y_train) + len(images.y_val) == 10
    assert images.skipped == [("red/bomb.png", "damaged in the zip (BadZipFile)")]
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB held while reading"


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
    from resnet_lab.models.checkpoints import load_checkpoint

    loaded = load_checkpoint(files[1])
    assert loaded.meta["classes"] == ["blue", "red"] and loaded.meta["data"]["name"] == "zip"
    assert loaded.model.fc.out_features == 2


def test_the_playground_checks_a_zip_on_upload_and_counts_its_reading_in_the_estimate(tmp_path, monkeypatch):
    """The upload runs the header check at once (the estimate's event listens to the zip too): its classes and
    counts, or the one-sentence refusal; the time to read the images is in the estimate and in the refusal of a
    run too long for the live slot (it was left out: 187 s of reading went uncounted)."""
    import gradio as gr

    from resnet_lab.runtime import cost
    from resnet_lab.ui import playground as ui

    with gr.Blocks() as demo:
        ui.build_tab()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    zip_box, estimate = by_id["playground-zip"], by_id["playground-estimate"]
    assert any((zip_box._id, "change") in [(t[0], t[1]) for t in fn.targets] and estimate in fn.outputs
               for fn in demo.fns.values())

    controls = (20, True, "he", "sgd", 0.05, 4, 30, 0, 16)
    z = _zip(tmp_path / "mine.zip", {**_good(), "red/notes.txt": b"hi"})
    text = ui.estimate_text(*controls, upload=str(z))
    assert text.startswith("Your zip: 2 classes (images: blue 5, red 5), 8 to train on, 2 held out. Skipped 1 ")
    assert "reading your images" in text and "⚠️" not in text
    one_each = _zip(tmp_path / "one.zip", {"red/a.png": _png((200, 0, 0)), "blue/b.png": _png((0, 0, 200))})
    assert ui.estimate_text(*controls, upload=str(one_each)).startswith("⚠️ each class needs at least 2 usable images")

    monkeypatch.setattr(cost, "_measured_decode", lambda period=0: dict.fromkeys(("jpeg", "wide", "8-bit"), 0.1))
    assert "Longer than a live run may take" in ui.estimate_text(*controls, upload=str(z))  # 10 x 1200 px x 0.1 s
    run = ui.train(*controls, str(z), "slow-zip", [])
    status = next(run)[0]  # the status line first says the run did not start and why, then the error
    assert status.startswith("**not started**") and "reading your images 20.0 min" in status
    with pytest.raises(gr.Error, match=r"reading your images 20\.0 min"):
        next(run)


def test_a_batch_larger_than_the_zips_training_images_says_which_is_used(tmp_path, monkeypatch):
    from resnet_lab.models.checkpoints import load_checkpoint
    from resnet_lab.ui import playground as ui

    z = _zip(tmp_path / "mine.zip", _good())  # 8 to train on
    controls = (20, True, "he", "sgd", 0.05, 32, 3, 0, 16)
    said = "Batch size 8 is used: your zip gives 8 images to train on, fewer than the batch size of 32."
    assert said in ui.estimate_text(*controls, upload=str(z)) and "3 steps of 8 images" in ui.estimate_text(
        *controls, upload=str(z))
    monkeypatch.setattr(ui, "UPDATE_S", 0.05)
    *_, last = ui.train(*controls, str(z), "batch-session", [])
    assert said in last[0]
    assert load_checkpoint(last[7][1]).meta["playground"]["batch_size"] == 8


def test_a_stop_while_the_zip_is_read_ends_the_run_before_it_trains(tmp_path, monkeypatch):
    from resnet_lab.ui import playground as ui

    sized = ui.refuse
    monkeypatch.setattr(ui, "refuse", lambda *a: (sized(*a), ui.stop("zip-stop")))
    *_, last = ui.train(20, True, "he", "sgd", 0.05, 4, 30, 0, 16, str(_zip(tmp_path / "z.zip", _good())),
                        "zip-stop", [])
    assert last[0] == ("**stopped** while reading your zip (stopped after reading 0 of the zip's 10 images): "
                       "nothing was trained.") and "zip-stop" not in ui._runs


def _ico(png: bytes, side: int = 16) -> bytes:
    """An ICO whose directory declares `side` x `side` and whose one entry is `png` (any size)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(png), 22) + png


def test_an_image_in_a_format_we_do_not_read_is_skipped_from_its_header_with_no_pixel_decoded(tmp_path, decoded):
    """PIL's ICO reader decodes its embedded PNG while the file is opened, at the PNG's size, not the 16x16 its
    header declares: a 20 KB `icon.png` of 12000x12000 took 144 MB and 0.4 s at each upload's header scan (up to
    PIL's own bomb limit, 179 MP). Only the formats the messages name (JPEG, PNG, WebP, GIF, BMP, TIFF) are opened."""
    other = io.BytesIO()
    Image.new("RGB", (40, 30)).save(other, format="PPM")
    z = _zip(tmp_path / "z.zip", {**_good(), "red/icon.png": _ico(_one_bit(2000)), "blue/x.png": other.getvalue()})
    scan = zipdata.scan_zip(z)
    assert decoded == []
    assert dict(scan.skipped) == {n: "this file is not an image we can read (supported: JPEG, PNG, WebP, GIF, BMP, "
                                     "TIFF)" for n in ("red/icon.png", "blue/x.png")}
    with pytest.raises(data.ImageError, match="not an image we can read"):
        data.decode_image(_ico(_one_bit(2000)))
    assert decoded == []


def _tiff_with_far_tags(tags: int, size: int) -> bytes:
    """A valid 4x4 TIFF of `size` bytes whose first IFD holds `tags` extra tags, each pointing at data at its end
    (an IFD reader seeks there and back for every one). Every 100th byte random: it compresses ~100x, under
    MAX_RATIO."""
    body = bytearray(size)
    body[::100] = np.random.default_rng(0).integers(0, 256, len(body[::100]), dtype=np.uint8).tobytes()
    far = size - 64
    short = [(256, 4), (257, 4), (258, 8), (259, 1), (262, 1), (278, 4)]
    entries = [(t, 3, 1, struct.pack("<HH", v, 0)) for t, v in short]
    entries += [(273, 4, 1, struct.pack("<I", far)), (279, 4, 1, struct.pack("<I", 16))]
    entries += [(40000 + i, 1, 16, struct.pack("<I", far + 16)) for i in range(tags)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *e) for e in sorted(entries))
    head = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    body[:len(head)] = head
    return bytes(body)


def test_a_header_that_seeks_back_and_forth_reads_its_member_once(tmp_path, monkeypatch):
    """zipfile re-inflates a member from its start on every backward seek, and PIL's TIFF reader seeks to each
    tag's data and back: a 1.7 MB zip with one 64 MiB TIFF of 100 far tags took 23 s of the upload's header scan
    (time ~ tags x size, unbounded by any limit). The header is read from the bytes inflated so far, kept, so a
    member is inflated at most once, whatever its header does."""
    tif = _tiff_with_far_tags(40, 2**20)
    assert Image.open(io.BytesIO(tif)).size == (4, 4)
    z = _zip(tmp_path / "z.zip", {**_good(), "red/far.tif": tif})
    inflated, read = [], zipfile.ZipExtFile.read

    def counting(self, n=-1):
        out = read(self, n)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    scan = zipdata.scan_zip(z)
    assert scan.counts == {"blue": 5, "red": 6}
    with zipfile.ZipFile(z) as zf:
        total = sum(i.file_size for i in zf.infolist())
    assert sum(inflated) <= total, f"{sum(inflated) / 2**20:.0f} MiB inflated for {total / 2**20:.1f} MiB of members"


def test_a_zip_made_with_backslashes_reads_its_classes(tmp_path):
    """Some Windows tools write `red\\0.png`: the same folders (`_unsafe` already reads `\\` as a separator)."""
    z = _zip(tmp_path / "z.zip", {name.replace("/", "\\"): d for name, d in _good("photos/").items()})
    assert zipdata.scan_zip(z).counts == {"blue": 5, "red": 5}
    assert zipdata.load_zip(z, size=16).classes == ["blue", "red"]


def test_an_encrypted_member_is_skipped_saying_so(tmp_path):
    """A password-protected member was listed as 'damaged in the zip (RuntimeError)'."""
    z = _zip(tmp_path / "z.zip", {**_good(), "red/secret.png": _png((9, 9, 9))})
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        data[zf.getinfo("red/secret.png").header_offset + 6] |= 1  # the local header's "encrypted" flag
    at = data.rindex(b"red/secret.png") - 46  # its central directory entry (after the members)
    assert data[at:at + 4] == b"PK\x01\x02"
    data[at + 8] |= 1
    z.write_bytes(bytes(data))
    assert zipdata.scan_zip(z).skipped == [("red/secret.png", "the file is encrypted in the zip; zip it again "
                                                              "without a password")]


def test_a_long_thin_image_is_cropped_before_it_is_resized(tmp_path, monkeypatch):
    """`_square` resized the shorter side to the image size, then cropped: a 1-bit PNG of 200,000x1 (a few hundred
    bytes, 0.2 MP, far under every limit) became a 6,400,000x32 RGB image (614 MB) at 32 px, and one of
    64,000,000x1 would ask for 196 GB. Only the centre square is resampled, so nothing larger than the net's
    input is made."""
    thin = io.BytesIO()
    Image.new("1", (100_000, 1), 1).save(thin, format="PNG")
    made, resize = [], Image.Image.resize

    def spy(self, size, *args, **kwargs):
        made.append(size[0] * size[1])
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    images = zipdata.load_zip(_zip(tmp_path / "z.zip", {**_good(), "red/thin.png": thin.getvalue()}), size=32)
    assert len(images.y_train) + len(images.y_val) == 11 and max(made) <= 32 * 32
    white = (torch.tensor([1.0, 1.0, 1.0]) - torch.tensor(images.mean)) / torch.tensor(images.std)
    x = torch.cat([images.x_train, images.x_val])
    assert any(torch.allclose(img, white.view(3, 1, 1).expand(3, 32, 32), atol=1e-4) for img in x)  # its white
