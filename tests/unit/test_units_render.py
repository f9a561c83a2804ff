"""Rendering the units: snapshots, determinism, GPU variants, secrets, ExecStart, errors.

Snapshots live in tests/snapshots/units/<config>/; regenerate them with
`UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/test_units_render.py` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmctl import __version__
from llmctl.config import check_file, validate
from llmctl.errors import NotFound, UsageError
from llmctl.paths import Paths
from llmctl.units.render import RenderOptions, exec_line, quote_arg, render
from tests._snapshots import assert_snapshots

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO / "tests" / "snapshots" / "units"
EXAMPLE = REPO / "config.example.yaml"
FLEET = SNAPSHOTS / "fleet.yaml"
LLMCTL = "/opt/llmctl/bin/llmctl"  # fixed, so the snapshots do not depend on where the venv is
CONFIG = "/etc/llmctl/config.yaml"


def _paths(root: Path) -> Paths:
    return Paths("home", root, root, root / "state", root / "cache")


def _render(config_file: Path, home: Path, **kw):
    options = RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home), **kw)
    return render(check_file(config_file), options)


def _unit(content: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in content.splitlines() if line.startswith(key + "=")]


@pytest.mark.parametrize("config_file", [EXAMPLE, FLEET], ids=["example", "fleet"])
def test_snapshots(config_file: Path, home: Path):
    result = _render(config_file, home)
    assert_snapshots(result.files, SNAPSHOTS / config_file.stem.replace("config.", ""), __file__)


def test_rendering_is_deterministic_and_names_the_version(home: Path):
    first = _render(FLEET, home)
    second = _render(FLEET, home)
    assert [(f.name, f.content.encode()) for f in first.files] == [(f.name, f.content.encode()) for f in second.files]
    for f in first.files:
        assert f"Rendered by llmctl {__version__}" in f.content.splitlines()[0], f.name


def test_cpu_server_is_sandboxed_without_devices(home: Path):
    chat = _render(EXAMPLE, home).get("llmctl-chat.service").content
    for setting in (
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "PrivateDevices=yes",
        "ProcSubset=pid",
        "IPAddressAllow=localhost",
        "IPAddressDeny=any",
        "MemoryMax=8G",
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3",
        "StartLimitBurst=5",
    ):
        assert setting in chat.splitlines(), setting
    assert _unit(chat, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert _unit(chat, "RestrictAddressFamilies") == ["AF_UNIX AF_INET"]
    assert not _unit(chat, "DeviceAllow")
    assert not _unit(chat, "ReadWritePaths")  # the server writes nothing


def test_timeout_stop_exceeds_the_graceful_shutdown(home: Path):
    gpu = _render(FLEET, home).get("llmctl-gpu.service").content
    assert _unit(gpu, "TimeoutStopSec") == ["40s"]  # shutdown_timeout_s 30 + 10


@pytest.mark.parametrize("gpu_keys", ["n_gpu_layers: -1", "n_gpu_layers: 20", "gpu: true"])
def test_gpu_services_keep_the_sandbox_and_reach_the_gpu(gpu_keys: str, home: Path, tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"services:\n  g:\n    model: smoke\n    {gpu_keys}\n")
    unit = _render(cfg, home).get("llmctl-g.service").content
    lines = unit.splitlines()
    assert "DeviceAllow=char-nvidia* rw" in lines
    assert "DeviceAllow=char-drm rw" in lines and "DeviceAllow=char-kfd rw" in lines
    assert "ProcSubset=all" in lines
    assert "DevicePolicy=closed" in lines
    assert not any(line.startswith("PrivateDevices=") for line in lines)
    assert _unit(unit, "SupplementaryGroups") == ["video render"]
    assert _unit(unit, "SystemCallFilter") == ["@system-service", "~@privileged"]
    for setting in ("ProtectSystem=strict", "NoNewPrivileges=yes", "DynamicUser=yes", "CapabilityBoundingSet="):
        assert setting in lines


def test_exec_start_uses_absolute_paths_and_the_store_layout(home: Path):
    result = _render(FLEET, home)
    chat = _unit(result.get("llmctl-chat.service").content, "ExecStart")[0].split()
    assert chat == [
        LLMCTL,
        "--system",
        "--config",
        CONFIG,
        "serve",
        "chat",
        "--model",
        "/var/lib/llmctl/models/smoke/gemma-3-270m-q4_k_m.gguf",
    ]
    gpu = _unit(result.get("llmctl-gpu.service").content, "ExecStart")[0].split()
    assert gpu[-1] == "/var/lib/llmctl/models/llama-1b/Llama-3.2-1B-Instruct-Q4_K_M.gguf"


def test_exec_start_names_every_model_of_a_multi_model_service(home: Path, tmp_path: Path):
    config = tmp_path / "multi.yaml"
    config.write_text(
        "version: 1\nmodels:\n  llama-1b:\n    repo: bartowski/Llama-3.2-1B-Instruct-GGUF\n"
        "    file: Llama-3.2-1B-Instruct-Q4_K_M.gguf\n"
        "services:\n  multi:\n    models: [smoke, llama-1b]\n    max_loaded: 1\n"
    )
    unit = _render(config, home).get("llmctl-multi.service").content
    assert _unit(unit, "ExecStart")[0].split()[4:] == [
        "serve",
        "multi",
        "--model",
        "/var/lib/llmctl/models/smoke/gemma-3-270m-q4_k_m.gguf",
        "--model",
        "/var/lib/llmctl/models/llama-1b/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
    ]


def test_exec_start_uses_the_lock_entrys_path_when_installed(home: Path):
    (home / "models.lock").write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "llama-1b": {
                        "file": "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
                        "path": "llama-1b/renamed.gguf",
                        "size": 1,
                        "sha256": "0" * 64,
                        "pulled_at": "2026-01-01T00:00:00Z",
                    }
                },
            }
        )
    )
    gpu = _render(FLEET, home).get("llmctl-gpu.service").content
    assert _unit(gpu, "ExecStart")[0].endswith(" --model /var/lib/llmctl/models/llama-1b/renamed.gguf")


def test_secrets_arrive_as_credentials_never_on_the_command_line(home: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("sk-very-secret-key\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"services:\n  chat:\n    model: smoke\n    api_keys_file: {keys}\n")
    result = _render(cfg, home)
    chat = result.get("llmctl-chat.service").content
    assert _unit(chat, "LoadCredential") == [f"api-keys:{keys}"]
    health = result.get("llmctl-health.service").content
    assert _unit(health, "LoadCredential") == [f"api-keys-chat:{keys}"]
    for f in result.files:
        assert "sk-very-secret-key" not in f.content
        for line in _unit(f.content, "ExecStart"):
            assert str(keys) not in line and "key" not in line.lower()
        assert not _unit(f.content, "Environment")


def test_health_runs_as_its_own_user_and_writes_only_its_state(home: Path):
    result = _render(FLEET, home)
    health = result.get("llmctl-health.service").content
    assert _unit(health, "User") == ["llmctl-health"]
    assert "DynamicUser=yes" not in health
    assert _unit(health, "StateDirectory") == ["llmctl/state"]
    assert _unit(health, "ReadWritePaths") == ["-/var/lib/node_exporter/textfile_collector"]
    assert _unit(health, "ExecStart")[0].split()[4:] == [
        "health",
        "--quiet",
        "--textfile",
        "/var/lib/node_exporter/textfile_collector/llmctl.prom",
    ]
    assert _unit(health, "CapabilityBoundingSet") == [""]
    timer = result.get("llmctl-health.timer").content
    assert _unit(timer, "OnUnitInactiveSec") == ["30s"]
    rules = result.get("50-llmctl-health.rules").content
    assert 'subject.user == "llmctl-health"' in rules
    assert '["llmctl-chat.service", "llmctl-gpu.service", "llm-public.service"]' in rules
    assert "llmctl-health.service" not in rules.split("var units")[1]
    sysusers = result.get("llmctl.conf").content
    assert re.search(r"^u llmctl-health - ", sysusers, re.M)


def test_public_service_on_a_privileged_port(home: Path):
    public = _render(FLEET, home).get("llm-public.service").content
    assert _unit(public, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert _unit(public, "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    assert not _unit(public, "IPAddressAllow")  # listening for the world: no loopback allow-list
    assert not _unit(public, "MemoryMax")


def test_only_the_named_services(home: Path):
    options = RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home))
    result = render(check_file(FLEET), options, ["gpu"])
    names = [f.name for f in result.files]
    assert "llmctl-gpu.service" in names and "llmctl-chat.service" not in names
    assert "llmctl-health.service" in names


def test_unknown_service_is_not_found(home: Path):
    options = RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home))
    with pytest.raises(NotFound, match="no service 'nope'"):
        render(check_file(FLEET), options, ["nope"])


def test_paths_that_cannot_go_into_a_unit_are_refused(home: Path):
    config = validate({"services": {"chat": {"model": "smoke", "api_keys_file": "/etc/llmctl/my keys"}}})
    with pytest.raises(UsageError, match="services.chat.api_keys_file"):
        render(config, RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home)))
    with pytest.raises(UsageError, match="absolute"):
        render(config, RenderOptions(llmctl="llmctl", config_path=CONFIG))


def test_templates_are_strict_and_escape_every_value(home: Path):
    import jinja2

    from llmctl.units.escape import Rendered
    from llmctl.units.render import _Templates

    env = _Templates()
    for fmt in ("systemd", "polkit", "sysusers"):
        assert env._envs[fmt].undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        env.render("systemd", "health.timer.j2", {"header": Rendered("#")})
    # A value a template prints goes through its format's escaper, unless it is Rendered already.
    timer = env.render(
        "systemd", "health.timer.j2", {"header": Rendered("# h"), "interval": "1%", "health_unit": "x.service"}
    )
    assert "OnBootSec=1%%" in timer
    with pytest.raises(UsageError, match="control character"):
        env.render(
            "systemd",
            "health.timer.j2",
            {"header": Rendered("# h"), "interval": "1min\nExecStart=/x", "health_unit": "x.service"},
        )


def test_exec_arguments_are_quoted_and_escaped():
    assert quote_arg("/usr/bin/llmctl") == "/usr/bin/llmctl"
    assert quote_arg("/srv/my models/a.gguf") == '"/srv/my models/a.gguf"'
    assert quote_arg("/srv/100%/a$b.gguf") == '"/srv/100%%/a$$b.gguf"'
    assert exec_line(["/x", "--system", "-q"]) == "/x --system -q"
    assert quote_arg("-x", first=True) == '"-x"'


def test_world_unreadable_model_gives_a_warning(home: Path, tmp_path: Path):
    model = home / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    model.chmod(0o600)
    (home / "models.lock").write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "smoke": {
                        "file": model.name,
                        "path": "smoke/" + model.name,
                        "size": 4,
                        "sha256": "0" * 64,
                        "pulled_at": "2026-01-01T00:00:00Z",
                    }
                },
            }
        )
    )
    result = _render(EXAMPLE, home)
    assert any("not world-readable" in w and "smoke" in w for w in result.warnings)


def test_user_units(home: Path):
    result = _render(EXAMPLE, home, user=True)
    names = [f.name for f in result.files]
    assert names == ["llmctl-chat.service", "llmctl-health.service", "llmctl-health.timer"]
    chat = result.get("llmctl-chat.service").content
    assert "--user" in _unit(chat, "ExecStart")[0].split()
    assert "DynamicUser=yes" not in chat and "User=" not in chat
    assert _unit(chat, "ProtectHome") == ["read-only"]
    assert _unit(chat, "ExecStart")[0].endswith(f"{home}/models/smoke/gemma-3-270m-q4_k_m.gguf")
    assert "WantedBy=default.target" in chat
    # The home is read-only to it but for the state directory, where the usage ledger lives;
    # install creates that directory (a missing one would be skipped: the "-" prefix).
    assert _unit(chat, "ReadWritePaths") == [f"-{home}/state"]
    assert "StateDirectory" not in chat
    assert result.directories == (f"{home}/state",)


def test_server_units_write_only_serves_state_directory(home: Path):
    """System mode: StateDirectory= is where `llmctl serve` puts the usage ledger and where
    `llmctl usage` reads it (Paths.serve_state_dir), not the health check's directory (another user)."""
    result = _render(FLEET, home)
    expected = "/var/lib/llmctl/serve"
    system = Paths(
        "system", Path("/etc/llmctl"), Path("/var/lib/llmctl"), Path("/var/lib/llmctl/state"), Path("/var/cache/llmctl")
    )
    assert str(system.serve_state_dir) == expected and str(system.state_dir) != expected
    for f in result.files:
        if f.kind == "service" and f.name != "llmctl-health.service":
            assert _unit(f.content, "StateDirectory") == [expected.removeprefix("/var/lib/")], f.name
            assert _unit(f.content, "StateDirectoryMode") == ["0700"]
            assert "ReadWritePaths" not in f.content
    health = result.get("llmctl-health.service").content
    assert _unit(health, "StateDirectory") == ["llmctl/state"]
    assert result.directories == ()


def test_polkit_rule_allows_only_restarts_of_the_listed_units_by_the_health_user(home: Path):
    """polkitd cannot run here; node runs the same JavaScript against the same polkit API shape."""
    from tests._node import polkit_decisions

    rules = _render(FLEET, home).get("50-llmctl-health.rules").content
    assert polkit_decisions(
        rules,
        [
            ["llmctl-health", "restart", "llmctl-chat.service", None],
            ["llmctl-health", "try-restart", "llm-public.service", None],
            ["llmctl-health", "stop", "llmctl-chat.service", None],
            ["llmctl-health", "start", "llmctl-chat.service", None],
            ["llmctl-health", "restart", "sshd.service", None],
            ["llmctl-health", "restart", "llmctl-health.service", None],
            ["nobody", "restart", "llmctl-chat.service", None],
            ["llmctl-health", "restart", "llmctl-chat.service", "org.freedesktop.systemd1.manage-unit-files"],
        ],
    ) == ["yes", "yes", "no", "no", "no", "no", "no", "no"]


@pytest.mark.parametrize(
    "services, message",
    [
        ({"a": {"model": "smoke", "unit": "../../etc/passwd"}}, "services.a.unit"),
        ({"a": {"model": "smoke", "unit": "x\nExecStartPre=/bin/evil"}}, "services.a.unit"),
        ({"a": {"model": "smoke", "unit": "llmctl-health"}}, "the health check's unit"),
        ({"a": {"model": "smoke", "unit": "x"}, "b": {"model": "smoke", "unit": "x.service"}}, "same unit name"),
    ],
)
def test_unit_names_that_could_escape_are_refused(services, message, home: Path):
    options = RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home))
    with pytest.raises(UsageError, match=message):
        render(validate({"services": services}), options)


def test_health_interval_must_be_a_time_span(home: Path):
    options = RenderOptions(llmctl=LLMCTL, config_path=CONFIG, paths=_paths(home))
    with pytest.raises(UsageError, match="health.interval"):
        render(validate({"health": {"interval": "1min\n5s"}}), options)
    ok = render(validate({"health": {"interval": "1h 30min"}}), options).get("llmctl-health.timer").content
    assert "OnUnitInactiveSec=1h 30min" in ok
