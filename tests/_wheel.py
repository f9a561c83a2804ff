"""Build llmctl's wheel from the checkout, for the tests that install it into a fresh venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def build_wheel(dist: Path) -> Path:
    """`python -m build --wheel` into `dist`; returns the wheel."""
    pytest.importorskip("build", reason="needs the build package (llmctl[test])")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = dist.glob("llmctl-*.whl")
    return wheel
