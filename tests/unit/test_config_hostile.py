"""Hostile config files (issue 13, items 5, 6 and 12): control characters anywhere, names with a
trailing newline, YAML that would exhaust the host. Each is one ConfigError (exit 2) naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from llmctl.config import MAX_DEPTH, check_file, load_config, validate
from llmctl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "config.example.yaml").read_text())
INJECTION = "/srv/m.gguf\n[Service]\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'"


def _string_slots(data, path=()):
    """Every place in the example config that holds a string: values, list items, mapping keys."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield ("key", (*path, k))
            yield from _string_slots(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _string_slots(v, (*path, i))
    elif isinstance(data, str):
        yield ("value", path)


def _mutate(data, slot, evil: str):
    kind, path = slot
    doc = copy.deepcopy(data)
    node = doc
    for p in path[:-1]:
        node = node[p]
    last = path[-1]
    if kind == "value":
        node[last] = node[last] + evil
    else:
        node[last + evil] = node.pop(last)
    return doc


SLOTS = list(_string_slots(EXAMPLE))


def test_the_example_has_many_string_slots():
    assert len(SLOTS) > 20


@pytest.mark.parametrize("evil", ["\n", "\r", "\0", "\x1b[2J", "\u2028", "\x85"])
def test_a_control_character_is_refused_in_every_string_of_the_config(evil: str):
    """By construction: whatever key a string sits under, validation refuses a control character
    in it, and the error names where (the key path)."""
    for slot in SLOTS:
        doc = _mutate(EXAMPLE, slot, evil)
        with pytest.raises(ConfigError) as exc:
            validate(doc)
        message = str(exc.value)
        top = str(slot[1][0])
        assert message.startswith(top) and "\n" not in message and evil not in message, (slot, message)


def test_the_issue_injection_is_refused_with_its_key_path():
    with pytest.raises(ConfigError, match=r"^services\.chat\.model: .*control character, U\+000A"):
        validate({"services": {"chat": {"model": INJECTION}}})


@pytest.mark.parametrize(
    "doc, where",
    [
        ({"models": {"evil\n": {"path": "/srv/a.gguf"}}}, "models"),
        ({"services": {"chat\n": {"model": "smoke"}}}, "services"),
        ({"upstreams": {"up\n": {"base_url": "http://x/v1"}}}, "upstreams"),
        ({"systemd": {"health_user": "llmctl-health\n"}}, "systemd.health_user"),
        ({"systemd": {"server_user": "llmctl\n"}}, "systemd.server_user"),
        ({"systemd": {"gpu_groups": ["video\n"]}}, "systemd.gpu_groups"),
        ({"services": {"x": {"model": "smoke", "memory_max": "8G\n"}}}, "services.x.memory_max"),
        ({"models": {"m": {"repo": "a/b", "file": "f.gguf", "sha256": "a" * 64 + "\n"}}}, "models.m.sha256"),
    ],
)
def test_names_with_a_trailing_newline_are_refused(doc, where):
    """Issue 13 item 6: `$` matched before the newline; every name check is a fullmatch now."""
    with pytest.raises(ConfigError) as exc:
        validate(doc)
    assert str(exc.value).startswith(where)


@pytest.mark.parametrize(
    "doc, where",
    [
        ({"systemd": {"health_user": "Root"}}, "systemd.health_user"),
        ({"systemd": {"gpu_groups": ["video", "a b"]}}, "systemd.gpu_groups"),
        ({"services": {"x": {"model": "smoke", "memory_max": "8 G"}}}, "services.x.memory_max"),
        ({"health": {"timeout_s": float("inf")}}, "health.timeout_s"),
        ({"health": {"timeout_s": float("nan")}}, "health.timeout_s"),
    ],
)
def test_other_malformed_values_are_refused(doc, where):
    with pytest.raises(ConfigError) as exc:
        validate(doc)
    assert str(exc.value).startswith(where)


def _bomb() -> str:
    """The billion laughs in YAML: nine levels of nine aliases, 9**9 values once expanded."""
    text = "a: &a {" + ", ".join(f"k{j}: x" for j in range(9)) + "}\n"
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        text += f"{cur}: &{cur} {{" + ", ".join(f"k{j}: *{prev}" for j in range(9)) + "}\n"
    return text


@pytest.mark.parametrize(
    "text, message",
    [
        (_bomb(), "more than 100000 values"),
        ("health: " + "[" * 50_000 + "]" * 50_000 + "\n", f"nested deeper than {MAX_DEPTH} levels"),
        ("services: {chat: {model: smoke, port: 1" + "0" * 5000 + "}}\n", "Exceeds the limit"),
        ("a: &a [*a]\n", "after expanding aliases"),  # a list that holds itself
    ],
)
def test_hostile_yaml_is_one_line_error_without_exhausting_the_host(write_config, text, message):
    """Issue 13 item 12: `config show` and `health` expanded the alias bomb (5.9 GB) or printed a
    traceback; the loader every command uses now stops at the bound."""
    path = write_config(text)
    for load in (lambda: load_config(path), lambda: check_file(path)):
        with pytest.raises(ConfigError) as exc:
            load()
        assert message in str(exc.value) and "\n" not in str(exc.value)


def test_env_override_with_an_endless_number_is_a_config_error(write_config, monkeypatch):
    monkeypatch.setenv("LLMCTL_SERVICES__CHAT__PORT", "1" + "0" * 5000)
    with pytest.raises(ConfigError, match=r"services\.chat\.port: .*\(from LLMCTL_SERVICES__CHAT__PORT\)"):
        load_config(write_config("services: {chat: {model: smoke}}\n"))


def test_anchors_within_the_bounds_still_work(write_config):
    text = (
        "services:\n  a: {model: smoke, limits: &lim {max_tokens: 64}}\n  b: {model: smoke, port: 8001, limits: *lim}\n"
    )
    cfg = load_config(write_config(text)).config
    assert cfg.services["b"].limits.max_tokens == 64
