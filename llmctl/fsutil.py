"""Atomic writes: whatever a daemon or another tool reads is never seen half-written.

Temp file in the same directory, fsync, os.replace, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, mode: int = 0o644, *, binary: bool = False) -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit it replaces `path` atomically.

    On any exception the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    with atomic_open(path, mode) as fh:
        fh.write(text)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_open(path, mode, binary=True) as fh:
        fh.write(data)


def commit_file(tmp: Path, dest: Path) -> None:
    """Move a finished, fsynced file into place and make the rename durable."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
