from __future__ import annotations

from pathlib import Path

from llmctl.paths import resolve_paths


def test_llmctl_home_overrides_everything(home):
    p = resolve_paths(system=True)
    assert p.mode == "home"
    assert p.models_dir == home / "models"
    assert p.lockfile == home / "models.lock"
    assert p.state_dir == home / "state"


def test_user_mode_uses_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMCTL_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    p = resolve_paths(system=False)
    assert p.mode == "user"
    assert p.config_file == tmp_path / "cfg" / "llmctl" / "config.yaml"
    assert p.models_dir == tmp_path / "data" / "llmctl" / "models"
    assert p.state_dir == tmp_path / "state" / "llmctl"


def test_system_mode(monkeypatch):
    monkeypatch.delenv("LLMCTL_HOME")
    p = resolve_paths(system=True)
    assert p.mode == "system"
    assert p.config_file == Path("/etc/llmctl/config.yaml")
    assert p.models_dir == Path("/var/lib/llmctl/models")
