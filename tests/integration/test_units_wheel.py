"""The templates really ship: build the wheel, install it (not editable) into a fresh venv, render there
(the units and the monitoring).

The fresh venv gets the wheel's dependencies from pip's configured index and cache; it runs from a
directory outside the checkout so nothing can import the source tree instead of the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests._wheel import build_wheel

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO / "tests" / "snapshots" / "units" / "example"
TEMPLATES = sorted(str(p.relative_to(REPO / "templates")) for p in (REPO / "templates").rglob("*") if p.is_file())
MONITORING_SNAPSHOTS = REPO / "tests" / "snapshots" / "monitoring" / "example"


@pytest.mark.slow
def test_wheel_ships_templates_and_renders_from_a_fresh_venv(tmp_path: Path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in TEMPLATES:
        assert f"llmctl/templates/{name}" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import llmctl.templating as t; print(t.templates_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not the checkout's

    out = tmp_path / "units"
    proc = subprocess.run(
        [
            str(venv / "bin/llmctl"),
            "--config",
            str(REPO / "config.example.yaml"),
            "systemd",
            "render",
            "--output-dir",
            str(out),
            "--llmctl",
            "/opt/llmctl/bin/llmctl",
            "--config-path",
            "/etc/llmctl/config.yaml",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for snap in SNAPSHOTS.iterdir():
        assert (out / snap.name).read_text() == snap.read_text(), snap.name

    # Without --llmctl, ExecStart names the fresh venv's own llmctl.
    proc = subprocess.run(
        [str(venv / "bin/llmctl"), "--config", str(REPO / "config.example.yaml"), "systemd", "render", "chat"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"ExecStart={venv}/bin/llmctl --system " in proc.stdout

    # The monitoring templates render from the wheel too.
    out = tmp_path / "monitoring"
    proc = subprocess.run(
        [
            str(venv / "bin/llmctl"),
            "--config",
            str(REPO / "config.example.yaml"),
            "monitoring",
            "render",
            "--output-dir",
            str(out),
            "--config-path",
            "/etc/llmctl/config.yaml",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for snap in MONITORING_SNAPSHOTS.iterdir():
        assert (out / snap.name).read_text() == snap.read_text(), snap.name

    # The Kubernetes templates ship too (templates/k8s): the same manifests as from the checkout.
    out = tmp_path / "k8s"
    proc = subprocess.run(
        [
            str(venv / "bin/llmctl"),
            "--config",
            str(REPO / "config.example.yaml"),
            "k8s",
            "render",
            "--image",
            "registry.example.com/llmctl@sha256:" + "0" * 64,
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    k8s_snapshots = REPO / "tests" / "snapshots" / "k8s" / "example"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in k8s_snapshots.iterdir())
    for snap in k8s_snapshots.iterdir():
        assert (out / snap.name).read_text() == snap.read_text(), snap.name
