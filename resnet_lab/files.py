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


def unwritable(path: str | os.PathLike, what: str = "file", makes_folders: bool = True) -> str | None:
    """Why no `what` ("file" or "folder") can be written at `path`, or None; tried before the work, without leaving
    anything behind, so an hour's run does not end in a traceback at its first save. Refused: an empty path, a
    folder where a file goes (a trailing slash included) or a file where a folder goes, and a place whose folder
    takes no new file (a temporary one is made and removed). With `makes_folders` (the caller makes the missing
    folders) the nearest folder that exists is tried; without, the file's own folder must exist."""
    text = os.fspath(path)
    if not text.strip():
        return f"must be a {what} path (got an empty one)"
    path = Path(text).expanduser()
    if what == "file" and (text.endswith(("/", os.sep)) or path.is_dir()):  # Path() drops a trailing slash
        return f"{text} is a folder; give a name for the file(s) in it, e.g. {path / 'model'}"
    if what == "folder" and path.exists() and not path.is_dir():
        return f"{text} is a file; give a folder"
    where = path if what == "folder" else path.parent
    while makes_folders and not where.exists() and where != where.parent:
        where = where.parent
    if not where.exists():
        return f"its folder {where} does not exist; make it first"
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        return f"cannot write a {what} there: {where} takes no new file ({e.strerror or type(e).__name__})"
    return None


def check_writable(path: str | os.PathLike, option: str) -> None:
    """ValueError naming `option` unless files can be written at `path` (`unwritable`), then its folder made:
    `path` names files (`path.safetensors`, `path.<run>...`), which would land beside a folder, not in it."""
    reason = unwritable(path)
    if reason:
        raise ValueError(f"{option} {reason}")
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
