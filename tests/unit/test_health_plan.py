"""health's plan: what a run takes from the validated config, cached in the state dir under a key of
everything that could change it (llmctl/health/plan.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmctl.errors import ConfigError
from llmctl.health import plan as hp

CONFIG = "services:\n  chat: {model: smoke, port: 8001, host: '::', unit: llm-chat}\nhealth: {timeout_s: 4}\n"


def _load(monkeypatch, env: dict[str, str] | None = None, **kw) -> hp.HealthPlan:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return hp.load_plan(None, system=None, **kw)


def _cache(home: Path) -> Path:
    return home / "state" / hp.PLAN_FILE


def test_the_plan_is_what_the_rules_make_of_the_config(write_config, home, monkeypatch):
    write_config(CONFIG)
    plan = _load(monkeypatch)
    (chat,) = plan.services
    assert (chat.host, chat.port, chat.unit, chat.gpu) == ("::1", 8001, "llm-chat.service", False)
    assert plan.probe.timeout_s == 4 and plan.policy.restart_budget == 3 and plan.restart_command is None
    assert plan.state_dir == home / "state"
    cached = _cache(home)
    assert cached.is_file() and cached.stat().st_mode & 0o777 == 0o600
    assert _load(monkeypatch) == plan  # read back from the cache: the same plan


def test_a_second_run_reads_the_cache_and_validates_nothing(write_config, home, monkeypatch):
    write_config(CONFIG)
    _load(monkeypatch)
    from llmctl import config

    def no_validation(*a, **kw):
        raise AssertionError("validated although the cache matched")

    monkeypatch.setattr(config, "load_config", no_validation)
    assert _load(monkeypatch).services[0].port == 8001


@pytest.mark.parametrize("change", ["file", "env", "code"])
def test_anything_that_changes_the_plan_changes_the_key(change, write_config, home, monkeypatch):
    path = write_config(CONFIG)
    assert _load(monkeypatch).services[0].port == 8001
    if change == "file":
        path.write_text(CONFIG.replace("8001", "8002"))
    elif change == "env":
        monkeypatch.setenv("LLMCTL_SERVICES__CHAT__PORT", "8002")
    else:  # a module that makes plans changed (an editable install): the same config gives a new key
        monkeypatch.setattr(hp, "_CODE", (*hp._CODE, "keys.py"))
        path.write_text(CONFIG.replace("8001", "8002"))  # so that the new plan can be told apart
    assert _load(monkeypatch).services[0].port == 8002


def test_a_bad_config_is_an_error_not_the_old_plan(write_config, home, monkeypatch):
    path = write_config(CONFIG)
    _load(monkeypatch)
    path.write_text(CONFIG.replace("port: 8001", "prot: 8001"))
    with pytest.raises(ConfigError, match="services.chat.prot: unknown key"):
        _load(monkeypatch)


def _forge(home: Path, monkeypatch, command: list[str]) -> Path:
    """The cache, rewritten with a restart_command of someone else's choosing and the right key."""
    cached = _cache(home)
    doc = json.loads(cached.read_text())
    doc["restart_command"] = command
    cached.write_text(json.dumps(doc))
    return cached


@pytest.mark.parametrize("how", ["group-writable", "world-writable", "symlink"])
def test_a_cache_others_could_write_is_not_trusted(how, write_config, home, monkeypatch, tmp_path):
    write_config(CONFIG)
    _load(monkeypatch)
    cached = _forge(home, monkeypatch, ["/bin/sh", "-c", "evil"])
    os.chmod(cached, 0o600)
    assert _load(monkeypatch).restart_command == ("/bin/sh", "-c", "evil")  # ours, 0600: trusted
    _forge(home, monkeypatch, ["/bin/sh", "-c", "evil"])
    if how == "symlink":
        elsewhere = tmp_path / "plan.json"
        elsewhere.write_bytes(cached.read_bytes())
        os.chmod(elsewhere, 0o600)
        cached.unlink()
        cached.symlink_to(elsewhere)
    else:
        os.chmod(cached, 0o620 if how == "group-writable" else 0o602)
    assert _load(monkeypatch).restart_command is None  # validated again from the config
    assert not cached.is_symlink() and cached.stat().st_mode & 0o777 == 0o600  # and replaced


@pytest.mark.parametrize("junk", ["", "{", "[]", '{"version": 1}', '{"version": 99, "key": "x"}', "\xff"])
def test_a_corrupt_cache_is_validated_again(junk, write_config, home, monkeypatch):
    write_config(CONFIG)
    _load(monkeypatch)
    key = json.loads(_cache(home).read_text())["key"]
    _cache(home).write_text(junk.replace('"x"', json.dumps(key)), encoding="latin-1")
    assert _load(monkeypatch).services[0].port == 8001
    assert json.loads(_cache(home).read_text())["key"] == key


def test_no_cache_without_write_and_no_secret_in_it(write_config, home, monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-secret\n")
    write_config(CONFIG.replace("unit: llm-chat", f"unit: llm-chat, api_keys_file: {keys}"))
    _load(monkeypatch, write=False)  # --dry-run saves nothing
    assert not _cache(home).exists()
    plan = _load(monkeypatch)
    assert plan.services[0].api_keys_file == str(keys)
    assert "sk-secret" not in _cache(home).read_text()


def test_the_plan_of_a_missing_named_config_is_the_loaders_error(home, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCTL_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        _load(monkeypatch)
