"""The config loader: every key of config.example.yaml, unknown keys, bad types, bad YAML, sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmctl.config import check_file, load_config
from llmctl.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"


def _leaves(data, prefix=""):
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, data


def test_example_loads_and_every_key_is_read():
    cfg = check_file(EXAMPLE)
    raw = yaml.safe_load(EXAMPLE.read_text())
    dumped = cfg.model_dump(mode="json")
    for key, value in _leaves(raw):
        node = dumped
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert cfg.services["chat"].model == "smoke"
    assert cfg.models["llama-1b"].repo == "bartowski/Llama-3.2-1B-Instruct-GGUF"


def test_example_documents_every_schema_key():
    """Each field of each section appears in config.example.yaml (so the example stays complete)."""
    from llmctl.schema import BenchDefaults, Config, HealthPolicy, Limits, ServiceSpec

    raw = yaml.safe_load(EXAMPLE.read_text())
    assert set(Config.model_fields) == set(raw)
    assert set(HealthPolicy.model_fields) == set(raw["health"])
    assert set(BenchDefaults.model_fields) == set(raw["bench"])
    assert set(ServiceSpec.model_fields) == set(raw["services"]["chat"])
    assert set(Limits.model_fields) == set(raw["services"]["chat"]["limits"])
    model_keys = set().union(*(set(m) for m in raw["models"].values()))
    from llmctl.schema import ModelSpec

    assert set(ModelSpec.model_fields) == model_keys
    from llmctl.schema import CircuitSpec, RoutingPolicy, UpstreamSpec

    for upstream in raw["upstreams"].values():
        assert set(UpstreamSpec.model_fields) == set(upstream)
    assert set(RoutingPolicy.model_fields) == set(raw["routing"])
    assert set(CircuitSpec.model_fields) == set(raw["routing"]["circuit"])
    from llmctl.schema import MonitoringSettings

    assert set(MonitoringSettings.model_fields) == set(raw["monitoring"])
    from llmctl.schema import K8sIngressSource, K8sSettings, K8sStorage

    assert set(K8sSettings.model_fields) == set(raw["k8s"])
    assert set(K8sStorage.model_fields) == set(raw["k8s"]["storage"])
    for source in raw["k8s"]["ingress_from"]:
        assert set(K8sIngressSource.model_fields) == set(source)


def test_empty_and_missing_default_file_give_defaults(home, monkeypatch):
    monkeypatch.delenv("LLMCTL_CONFIG")
    (home / "config.yaml").unlink()
    loaded = load_config()
    assert loaded.path is None
    assert loaded.config.health.timeout_s == 10.0
    assert loaded.source_of("health.timeout_s") == "default"


def test_unknown_key_names_the_path_and_suggests(write_config):
    path = write_config("services:\n  chat:\n    model: smoke\n    prot: 8000\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "services.chat.prot: unknown key (did you mean 'port'?)" in str(exc.value)
    assert exc.value.exit_code == ExitCode.USAGE


def test_unknown_top_level_key(write_config):
    with pytest.raises(ConfigError, match=r"helth: unknown key \(did you mean 'health'\?\)"):
        load_config(write_config("helth:\n  timeout_s: 3\n"))


def test_bad_type_and_range(write_config):
    with pytest.raises(ConfigError, match=r"health\.timeout_s: .*number"):
        load_config(write_config("health:\n  timeout_s: soon\n"))
    with pytest.raises(ConfigError, match=r"services\.chat\.port: .*65535"):
        load_config(write_config("services:\n  chat:\n    model: smoke\n    port: 70000\n"))
    with pytest.raises(ConfigError, match=r"services\.chat\.model: required key is missing"):
        load_config(write_config("services:\n  chat:\n    port: 8000\n"))


def test_model_spec_rules(write_config):
    with pytest.raises(ConfigError, match=r"models\.x: .*either 'repo' and 'file', or 'path'"):
        load_config(write_config("models:\n  x:\n    repo: a/b\n"))
    with pytest.raises(ConfigError, match=r"models\.x\.sha256: must be 64 hex digits"):
        load_config(write_config("models:\n  x:\n    repo: a/b\n    file: f.gguf\n    sha256: abc\n"))
    with pytest.raises(ConfigError, match=r"model name 'Bad Name'"):
        load_config(write_config("models:\n  Bad Name:\n    path: /x.gguf\n"))


def test_bad_yaml_is_one_line(write_config):
    path = write_config("services:\n  chat: [\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "\n" not in message
    assert "invalid YAML" in message and f"{path}:3:1" in message


def test_top_level_must_be_mapping(write_config):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write_config("- a\n- b\n"))


def test_missing_named_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_env_overrides_file_and_is_attributed(write_config, monkeypatch):
    path = write_config("services:\n  chat:\n    model: smoke\n    port: 8000\n")
    monkeypatch.setenv("LLMCTL_SERVICES__CHAT__PORT", "8123")
    monkeypatch.setenv("LLMCTL_HEALTH__RESTART", "false")
    loaded = load_config(path)
    assert loaded.config.services["chat"].port == 8123
    assert loaded.config.health.restart is False
    assert loaded.source_of("services.chat.port") == "env:LLMCTL_SERVICES__CHAT__PORT"
    assert loaded.source_of("services.chat.model") == "file"
    assert loaded.source_of("services.chat.host") == "default"


def test_env_override_errors_name_the_variable(write_config, monkeypatch):
    monkeypatch.setenv("LLMCTL_HEALTH__TIMEOUT", "3")
    with pytest.raises(ConfigError, match=r"health\.timeout: unknown key.*\(from LLMCTL_HEALTH__TIMEOUT\)"):
        load_config(write_config("version: 1\n"))


def test_config_is_frozen(write_config):
    cfg = load_config(write_config("version: 1\n")).config
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.health.timeout_s = 1  # type: ignore[misc]
