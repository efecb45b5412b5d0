"""Files written whole or not at all: a crash, a full disk or a kill mid-write leaves the previous file (or none),
never half of one that a later run or the app would read as corrupt weights or a truncated training state."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """A temporary path in `path`'s folder to write to; on a clean exit it is synced and renamed over `path`
    (`os.replace`: atomic on one file system), on an error removed. `mode`: the file's permissions (mkstemp
    makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the data on disk before the name points at it
            os.fsync(f.fileno())
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike, option: str) -> None:
    """ValueError naming `option` unless a file can be written at `path` (its folder made if missing): checked
    before the work, so an hour's training does not end in a traceback at its first save. A folder is refused:
    `path` names files (`path.safetensors`, `path.<run>...`), which would land beside the folder, not in it."""
    if str(path).endswith(("/", os.sep)) or Path(path).is_dir():  # Path() drops a trailing slash: read it first
        raise ValueError(f"{option} {path} is a folder; give a name for the files in it, e.g. {Path(path) / 'model'}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {path.parent}/ ({e.strerror or e})") from e
