"""Wiring of the root command: help, version, the error table, exit codes, the --json shape, import cost."""

from __future__ import annotations

import json
import re
import sys

import pytest
import typer
from typer.testing import CliRunner

from llmctl import __version__
from llmctl.cli.app import app

runner = CliRunner()
GROUPS = ["models", "systemd", "monitoring", "k8s", "health", "bench", "serve", "ps", "config", "usage"]
HEAVY = [
    "httpx",
    "huggingface_hub",
    "llama_cpp",
    "jinja2",
    "prometheus_client",
    "yaml",
    "pydantic",
    "fastapi",
    "uvicorn",
    "filelock",
    "psutil",
]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_group():
    """Exactly these commands, each named in --help as a word of its own (`serve` is not `server`)."""
    assert sorted(typer.main.get_command(app).commands) == sorted(GROUPS)
    result = invoke("--help")
    assert result.exit_code == 0
    for group in GROUPS:
        assert re.search(rf"(?<![\w-]){re.escape(group)}(?![\w-])", result.output), group


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_help(group):
    result = invoke(group, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"llmctl {__version__}"


def test_config_check_example_exits_0():
    from tests.unit.test_config import EXAMPLE

    result = invoke("config", "check", str(EXAMPLE))
    assert result.exit_code == 0, result.output


def test_misspelled_key_exits_2_with_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  chat:\n    model: smoke\n    prot: 8000\n")
    result = invoke("config", "check", str(bad))
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: services.chat.prot: unknown key (did you mean 'port'?)"
    assert result.stdout == ""


def test_invalid_yaml_exits_2_in_one_line_without_traceback(tmp_path, llmctl):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: }\n")
    proc = llmctl("config", "check", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "invalid YAML" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path, llmctl):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    proc = llmctl("config", "check", str(bad), env={"LLMCTL_DEBUG": "1"})
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr


def test_unknown_flag_is_usage_error():
    result = invoke("config", "show", "--bogus")
    assert result.exit_code == 2


def test_config_show_json_shape(write_config, monkeypatch):
    write_config("services:\n  chat:\n    model: smoke\n    port: 8001\n")
    monkeypatch.setenv("LLMCTL_HEALTH__RETRIES", "5")
    result = invoke("config", "show", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "config"
    assert doc["config"]["services"]["chat"]["port"] == 8001
    assert doc["config"]["health"]["retries"] == 5
    assert doc["sources"]["services.chat.port"] == "file"
    assert doc["sources"]["health.retries"] == "env:LLMCTL_HEALTH__RETRIES"
    assert doc["sources"]["health.timeout_s"] == "default"
    assert doc["file"].endswith("config.yaml")


def test_config_flag_beats_env(tmp_path, write_config):
    write_config("services:\n  chat:\n    model: smoke\n    port: 8001\n")
    other = tmp_path / "other.yaml"
    other.write_text("services:\n  chat:\n    model: smoke\n    port: 9001\n")
    result = invoke("--config", str(other), "config", "show", "--json")
    assert json.loads(result.stdout)["config"]["services"]["chat"]["port"] == 9001


def test_python_dash_m_and_console_script_agree(llmctl):
    proc = llmctl("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"llmctl {__version__}"


def loaded_modules(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    """The exact names in sys.modules after running `llmctl ARGV` in a fresh interpreter."""
    import os
    import subprocess

    code = (
        "import json, sys\n"
        "from llmctl.cli.app import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES=' + json.dumps(sorted(sys.modules)) + '\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES=")]
    assert line, proc.stderr[-500:]
    return set(json.loads(line[-1][len("MODULES=") :]))


def heavy_in(modules: set[str], heavy: list[str]) -> list[str]:
    """Which of `heavy` (packages) were imported: the package itself or any of its modules, by exact
    name (`serve` is not `server`, `yaml` is not `_yaml`)."""
    return sorted({m.split(".")[0] for m in modules} & set(heavy))


def test_the_module_check_matches_exact_names():
    assert heavy_in({"server", "pydantic_core", "yamllint", "os"}, ["serve", "pydantic", "yaml"]) == []
    assert heavy_in({"httpx._main", "yaml"}, ["httpx", "yaml"]) == ["httpx", "yaml"]


def test_help_imports_no_heavy_module():
    """After `llmctl --help` none of the heavy libraries is loaded (cron runs health every minute)."""
    assert heavy_in(loaded_modules(["--help"]), HEAVY) == []


@pytest.mark.parametrize("group", GROUPS)
def test_group_help_imports_no_heavy_module(group):
    assert heavy_in(loaded_modules([group, "--help"]), HEAVY) == []


# What cron runs every minute: `llmctl health` against a closed port. After the first run has cached
# its plan (llmctl/health/plan.py), a run imports none of these (benchmarks/bench_cold_start.py times it).
HEALTH_AVOIDS = [
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "pydantic",
    "pydantic_core",
    "yaml",
    "rich",
    "click",
    "jinja2",
    "huggingface_hub",
    "prometheus_client",
    "psutil",
    "llama_cpp",
    "email",
]


def test_a_health_run_imports_only_what_it_needs(write_config):
    import socket

    write_config("services:\n  chat: {model: smoke, port: 8001}\n")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    argv = ["health", "--url", f"http://127.0.0.1:{closed}", "--retries", "0"]
    first = loaded_modules(argv)
    assert "pydantic" in first  # the first run validates the config
    again = loaded_modules(argv)
    assert heavy_in(again, HEALTH_AVOIDS) == []
    assert "llmctl.health.probes" in again  # it did run the probes
