"""Compare rendered files with the snapshots in a folder (UPDATE_SNAPSHOTS=1 rewrites the folder)."""

from __future__ import annotations

import os
from pathlib import Path


def assert_snapshots(files: list, folder: Path, test_file: str) -> None:
    """`files` have .name and .content; the folder holds exactly those files with those bytes."""
    if os.environ.get("UPDATE_SNAPSHOTS"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for f in files:
            (folder / f.name).write_text(f.content)
    assert sorted(f.name for f in files) == sorted(p.name for p in folder.iterdir())
    for f in files:
        assert f.content == (folder / f.name).read_text(), (
            f"{f.name} differs from its snapshot; if intended: UPDATE_SNAPSHOTS=1 pytest {test_file}"
        )
