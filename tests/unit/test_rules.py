"""One place per rule, and every caller uses it: the API-key file format, bind address -> the address
a client on the host dials, service -> unit name, OpenAI's error body with Retry-After. Each rule is
pinned here once; the tests also check that the callers (health, the unit renderer, the upstreams,
k8s render, serve) agree with it.
(Names and hashes: tests/unit/test_text.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llmctl.apierror import error_body, error_event, error_response, retry_after_header
from llmctl.config import validate
from llmctl.errors import ConfigError, UsageError
from llmctl.keys import (
    CREDENTIAL_NAME,
    credential_file,
    credential_name,
    first_key,
    first_key_shell,
    load_api_keys,
    parse_api_keys,
    parse_keys,
    read_keys,
)
from llmctl.netutil import connect_host, is_loopback
from llmctl.unitname import HEALTH_UNIT, unit_name

# -- the API-key file format ------------------------------------------------------------------------

KEY_FILE = "\n# ops key below\n  k1  \n\t\nk2\n#k3\nk1\n   # indented comment\nk4 \n"


def test_key_file_format():
    """One key per line, stripped; blank and '#' lines skipped; duplicates once; the first is sent."""
    assert parse_keys(KEY_FILE) == ("k1", "k2", "k4")
    assert parse_keys("") == () and parse_keys("# only\n\n") == ()
    assert parse_keys("a\r\nb\r\n") == ("a", "b")  # CRLF files from another editor
    keys = parse_api_keys(KEY_FILE)
    assert [k.secret for k in keys] == [b"k1", b"k2", b"k4"]
    assert all(k.id.startswith("key-") and len(k.id) == 16 for k in keys) and "k1" not in repr(keys)


def test_key_file_errors_name_the_setting(tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text(KEY_FILE)
    assert read_keys(path, "x") == ("k1", "k2", "k4") and first_key(path, "x") == "k1"
    cases = {"missing": None, "empty": "# none\n\n", "latin1": b"k\xe9y\n", "dir": "dir"}
    messages = {}
    for name, content in cases.items():
        p = tmp_path / name
        if content == "dir":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        elif content is not None:
            p.write_text(content)
        with pytest.raises(ConfigError) as info:
            read_keys(p, "services.chat.api_keys_file")
        messages[name] = str(info.value)
        assert str(info.value).startswith("services.chat.api_keys_file: "), info.value
        assert "\n" not in str(info.value)
    assert "not found" in messages["missing"] and "holds no API keys" in messages["empty"]
    assert "not UTF-8" in messages["latin1"] and "directory" in messages["dir"]


def test_the_shell_form_printed_for_people_finds_the_same_first_key(tmp_path: Path):
    """k8s render prints `kubectl create secret ... metrics-key=<(sed ...)`: the same rule in sed."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    import shlex

    for text in (KEY_FILE, "k-only", "# a\n\n   \n  spaced key  \nnext\n", "\t# tab comment\nreal\n"):
        path = tmp_path / "k"
        path.write_text(text)
        out = subprocess.run(
            [sh, "-c", first_key_shell(shlex.quote(str(path)))], capture_output=True, text=True, check=True
        ).stdout
        assert out == first_key(path, "x") + "\n", text


def test_credentials(tmp_path: Path):
    assert CREDENTIAL_NAME == "api-keys" and credential_name() == "api-keys"
    assert credential_name("chat") == "api-keys-chat"
    (tmp_path / "api-keys").write_text("k\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert credential_file(["api-keys-chat", "api-keys"], env) == tmp_path / "api-keys"
    assert credential_file(["api-keys"], {}) is None
    (tmp_path / "api-keys-chat").mkdir()  # not a file: skipped
    assert credential_file(["api-keys-chat", "api-keys"], env) == tmp_path / "api-keys"


def test_every_reader_uses_the_format(tmp_path: Path):
    """health's key, an upstream's key, the server's keys: all from the one parser."""
    from llmctl.health.targets import config_targets
    from llmctl.upstreams.config import routing_for

    keys = tmp_path / "keys"
    keys.write_text(KEY_FILE)
    cfg = validate(
        {
            "services": {"chat": {"model": "smoke", "api_keys_file": str(keys)}},
            "upstreams": {"up": {"base_url": "http://h/v1", "api_key_file": str(keys)}},
            "routing": {"strategy": "up"},
        }
    )
    (target,) = config_targets(cfg, [], environ={})
    assert target.api_key == "k1"
    assert routing_for(cfg, "chat", {}).upstreams[0].api_key == "k1"
    server_keys, source = load_api_keys(None, str(keys), "services.chat.api_keys_file", {})
    assert [k.secret for k in server_keys] == [b"k1", b"k2", b"k4"] and source == str(keys)
    from llmctl.serve import settings as serve_settings

    assert serve_settings.load_api_keys is load_api_keys  # resolve_settings reads the keys with it
    # a key file health cannot use is that service's setup error (UNKNOWN), naming the setting
    keys.write_text("# none\n")
    (target,) = config_targets(cfg, [], environ={})
    assert target.api_key is None and target.setup_error == (
        f"cannot read an API key: services.chat.api_keys_file: {keys} holds no API keys (one per line)"
    )
    with pytest.raises(ConfigError, match=r"^upstreams\.up\.api_key_file: .* holds no API keys"):
        routing_for(cfg, "chat", {})


def test_where_the_servers_keys_come_from(tmp_path: Path):
    """The systemd credential `api-keys` wins over --api-keys-file, which wins over the config's file;
    none of them: no keys (an open server)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / CREDENTIAL_NAME).write_text("k-cred\n")
    flag, conf = tmp_path / "flag", tmp_path / "conf"
    flag.write_text("k-flag\n")
    conf.write_text("k-conf\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    where = "services.chat.api_keys_file"
    for args, environ, secret, source in [
        ((str(flag), str(conf)), env, b"k-cred", creds / CREDENTIAL_NAME),
        ((None, None), env, b"k-cred", creds / CREDENTIAL_NAME),
        ((str(flag), str(conf)), {}, b"k-flag", flag),
        ((None, str(conf)), {}, b"k-conf", conf),
        ((None, str(conf)), {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}, b"k-conf", conf),
    ]:
        keys, got = load_api_keys(*args, where, environ)
        assert ([k.secret for k in keys], got) == ([secret], str(source)), (args, environ)
    assert load_api_keys(None, None, where, {}) == ((), None)
    with pytest.raises(ConfigError, match=r"^--api-keys-file: .*not found"):
        load_api_keys(str(tmp_path / "nope"), str(conf), where, {})
    with pytest.raises(ConfigError, match=r"^services\.chat\.api_keys_file: .*not found"):
        load_api_keys(None, str(tmp_path / "nope"), where, {})


# -- bind address -> the address a client on this host dials -----------------------------------------

BINDS = [
    "",
    "0.0.0.0",
    "::",
    "[::]",
    "127.0.0.1",
    "127.0.0.2",
    "::1",
    "[::1]",
    "localhost",
    "10.0.0.5",
    "fd00::5",
    "llm.example.internal",
]


@pytest.mark.parametrize("bind", BINDS)
def test_bind_address_to_dial_address(bind: str):
    expected = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "[::1]": "::1"}
    assert connect_host(bind) == expected.get(bind, bind)


@pytest.mark.parametrize("bind", [b for b in BINDS if b != ""])
def test_what_health_dials_is_what_its_unit_allows(bind: str, tmp_path: Path):
    """The health unit's IPAddressAllow= and RestrictAddressFamilies= come from the same rule as the
    address health dials: the sandbox can never block the probe."""
    import ipaddress

    from llmctl.health.targets import config_targets
    from llmctl.paths import Paths
    from llmctl.units.render import RenderOptions, render

    cfg = validate({"services": {"chat": {"model": "/srv/m.gguf", "host": bind, "allow_unverified_path": True}}})
    (target,) = config_targets(cfg, [], environ={})
    assert target.host == connect_host(bind)
    unit = (
        render(
            cfg,
            RenderOptions(
                llmctl="/usr/bin/llmctl",
                config_path="/etc/llmctl/config.yaml",
                paths=Paths("home", tmp_path, tmp_path, tmp_path / "s", tmp_path / "c"),
            ),
        )
        .get(HEALTH_UNIT)
        .content
    )
    allow = [line for line in unit.splitlines() if line.startswith("IPAddressAllow=")]
    assert allow == (["IPAddressAllow=localhost"] if is_loopback(target.host) else []), unit
    families = next(line for line in unit.splitlines() if line.startswith("RestrictAddressFamilies=")).split("=")[1]
    try:
        version = ipaddress.ip_address(target.host).version
        assert f"AF_INET{'6' if version == 6 else ''}" in families.split()
    except ValueError:  # a name: either family
        assert {"AF_INET", "AF_INET6"} <= set(families.split())


# -- service -> unit name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (None, "llmctl-chat.service"),
        ("llm-chat", "llm-chat.service"),
        ("llm-chat.service", "llm-chat.service"),
        ("llm\\x2dchat", "llm\\x2dchat.service"),
    ],
)
def test_service_to_unit_name(unit: str | None, expected: str, tmp_path: Path):
    """The unit the renderer writes, the unit health restarts and the unit the monitoring names."""
    from llmctl.cli.monitoring import deployment
    from llmctl.config import LoadedConfig
    from llmctl.health.targets import config_targets
    from llmctl.paths import Paths
    from llmctl.units.render import RenderOptions, render

    assert unit_name("chat", unit) == expected
    cfg = validate({"services": {"chat": {"model": "/srv/m.gguf", "unit": unit}}})
    paths = Paths("home", tmp_path, tmp_path, tmp_path / "s", tmp_path / "c")
    rendered = render(cfg, RenderOptions(llmctl="/usr/bin/llmctl", config_path="/etc/llmctl/config.yaml", paths=paths))
    assert [f.name for f in rendered.files if f.service == "chat"] == [expected]
    (target,) = config_targets(cfg, [], environ={})
    assert target.unit == expected
    assert deployment(LoadedConfig(config=cfg, path=None, paths=paths)).units == {"chat": expected}


@pytest.mark.parametrize(
    "unit",
    [
        "../../etc/passwd",
        "x\nExecStartPre=/bin/evil",
        "-x",
        ".x",
        "a b",
        "llmctl-health",
        "llmctl-health.service",
        "x.timer.service/",
        "a" * 250,
    ],
)
def test_bad_unit_names_are_config_errors(unit: str):
    with pytest.raises(UsageError, match=r"^services\.chat\.unit: "):
        unit_name("chat", unit)
    with pytest.raises(ConfigError, match=r"services\.chat\.unit: "):
        validate({"services": {"chat": {"model": "smoke", "unit": unit}}})


# -- OpenAI's error body and Retry-After -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (1.5, "2"), (2.5, "3"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str):
    """A client that waits as told never comes back before the limit has passed."""
    assert retry_after_header(wait) == header


def test_the_error_body_and_who_writes_it():
    """One body, one Retry-After rule: serve's gate and routes, its streams, and the upstream router."""
    pytest.importorskip("starlette", reason="the server's stack: llmctl[serve]")
    import asyncio
    import json

    from llmctl.serve.engine import QueueFull
    from llmctl.serve.responses import engine_error_response
    from llmctl.upstreams.config import RoutingConfig
    from llmctl.upstreams.router import Router

    assert error_body("Nope \ud800", "invalid_request_error", "bad", "messages[0].\udfff") == {
        "error": {
            "message": "Nope \\ud800",
            "type": "invalid_request_error",
            "param": "messages[0].\\udfff",
            "code": "bad",
        }
    }
    assert error_body("m", "server_error", None)["error"]["param"] is None
    event = error_event("m", "server_error", "c")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == error_body("m", "server_error", "c")
    plain = error_response(400, "m")
    assert plain.status_code == 400 and "retry-after" not in plain.headers
    assert json.loads(plain.body) == error_body("m", "invalid_request_error", None)

    served = engine_error_response(QueueFull("the queue is full", retry_after=2.5))
    assert served.status_code == 503 and served.headers["retry-after"] == "3"
    assert json.loads(served.body) == error_body("the queue is full", "server_error", "queue_full")

    airgap = RoutingConfig(
        strategy="none",
        upstreams=(),
        airgap=True,
        privacy_headers=(),
        privacy_patterns=(),
        failures=3,
        cooldown_s=30.0,
        retries=0,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
    )
    routed = asyncio.run(Router(airgap, served_model="m").handle(None, "chat", QueueFull("full", retry_after=2.5), {}))
    assert routed.status_code == 503 and routed.headers["retry-after"] == "3"
    assert set(json.loads(routed.body)["error"]) == {"message", "type", "param", "code"}
    assert json.loads(routed.body)["error"]["code"] == "local_unavailable_airgap"
