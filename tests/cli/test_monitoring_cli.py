"""`llmctl monitoring render` wiring: outputs, --json, --output-dir, --config-path, exit codes of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmctl.cli.app import app

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
TEST_CONFIG = REPO / "tests" / "monitoring" / "config.yaml"
SNAPSHOTS = REPO / "tests" / "snapshots" / "monitoring" / "example"
FILES = ["llmctl-scrape.yml", "llmctl.rules.yml", "llmctl-dashboard.json"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_render_to_stdout_matches_the_snapshots():
    result = invoke("--config", str(EXAMPLE), "monitoring", "render", "--config-path", "/etc/llmctl/config.yaml")
    assert result.exit_code == 0, result.output
    parts = result.stdout.split("==> ")[1:]
    assert [p.split(" <==\n", 1)[0] for p in parts] == FILES
    for part in parts:
        name, body = part.split(" <==\n", 1)
        assert body.rstrip("\n") == (SNAPSHOTS / name).read_text().rstrip("\n")
    # what a person should know goes to stderr: the example has no health textfile
    assert "Note: systemd.health_textfile is not set" in result.stderr


def test_output_dir_writes_the_files_atomically_and_prints_their_paths(tmp_path: Path):
    out = tmp_path / "prometheus" / "llmctl"  # created
    result = invoke("--config", str(TEST_CONFIG), "monitoring", "render", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / f) for f in FILES]
    assert sorted(os.listdir(out)) == sorted(FILES)  # no temp files left
    assert (out / "llmctl.rules.yml").stat().st_mode & 0o777 == 0o644
    before = (out / "llmctl.rules.yml").read_text()
    assert 'job="llmctl"' in before
    # the config changes, render again: the files are replaced
    changed = tmp_path / "changed.yaml"
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["monitoring"]["job"] = "llm-prod"
    changed.write_text(yaml.safe_dump(data))
    assert invoke("--config", str(changed), "monitoring", "render", "--output-dir", str(out)).exit_code == 0
    after = (out / "llmctl.rules.yml").read_text()
    assert 'job="llm-prod"' in after and 'job="llmctl"' not in after
    assert sorted(os.listdir(out)) == sorted(FILES)


def test_json_shape():
    result = invoke("--config", str(TEST_CONFIG), "monitoring", "render", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "monitoring.render"
    assert [(f["name"], f["kind"]) for f in doc["files"]] == list(zip(FILES, ["scrape", "rules", "dashboard"]))
    assert all(f["content"] for f in doc["files"])
    assert "LlmctlServiceDown" in doc["alerts"] and "llamacpp:requests_deferred" in doc["records"]
    assert any("/etc/prometheus/llmctl-chat.key" in n for n in doc["notes"])
    assert result.stderr == ""


def test_json_with_output_dir_gives_paths(tmp_path: Path):
    result = invoke("--config", str(TEST_CONFIG), "monitoring", "render", "--json", "--output-dir", str(tmp_path))
    doc = json.loads(result.stdout)
    assert [f["path"] for f in doc["files"]] == [str(tmp_path / f) for f in FILES]
    assert all("content" not in f for f in doc["files"])


def test_runbooks_name_the_config_in_use_unless_it_is_the_default(tmp_path: Path):
    config = tmp_path / "my config.yaml"
    config.write_text(TEST_CONFIG.read_text())
    rules = invoke("--config", str(config), "monitoring", "render").stdout
    assert f"llmctl --config '{config}' health" in rules  # shell-quoted: the path has a space
    rules = invoke("--config", str(config), "monitoring", "render", "--config-path", "/etc/llmctl/config.yaml").stdout
    assert "llmctl health {{ $labels.service }}" in rules and "--config" not in rules.split("runbook:", 1)[1]
    rules = invoke("--config", str(config), "monitoring", "render", "--config-path", "/srv/llm.yaml").stdout
    assert "llmctl --config /srv/llm.yaml health" in rules


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\n", "Error: services: no service is configured, so there is nothing to monitor"),
        (
            "services: {chat: {model: smoke}}\nmonitoring: {alert_for: 5 min}\n",
            "Error: monitoring.alert_for: '5 min' is not a Prometheus duration such as 30s, 5m or 1h30m",
        ),
        (
            "services: {chat: {model: smoke}}\nmonitoring: {ttft_p95: 3}\n",
            "Error: monitoring.ttft_p95: unknown key (did you mean 'ttft_p95_s'?)",
        ),
        (
            "services: {chat: {model: smoke}}\nmonitoring: {alert_labels: {severity: page}}\n",
            "Error: monitoring.alert_labels: 'severity' is set by the rules themselves",
        ),
        (
            "services: {chat: {model: smoke, host: 'a b'}}\n",
            "Error: services.chat.host: 'a b' is not a host name or address Prometheus can scrape",
        ),
        (
            "services: {chat: {model: smoke, unit: 'x y'}}\n",
            "Error: services.chat.unit: 'x y' is not a valid unit name",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = invoke("--config", str(config), "monitoring", "render", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0].startswith(message), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert not out.exists()  # nothing written


def test_output_dir_that_is_a_file_exits_2(tmp_path: Path):
    target = tmp_path / "file"
    target.write_text("x")
    result = invoke("--config", str(TEST_CONFIG), "monitoring", "render", "--output-dir", str(target))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: --output-dir {target}: not a directory"
    assert target.read_text() == "x"


def test_unwritable_output_dir_exits_1(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("--config", str(TEST_CONFIG), "monitoring", "render", "--output-dir", str(blocker / "sub"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot write {blocker / 'sub' / FILES[0]}: ")
    assert "Hint:" in result.stderr


def test_help_does_not_import_jinja2_or_yaml():
    import subprocess
    import sys

    code = (
        "import sys; from llmctl.cli.app import app\n"
        "try:\n    app(['monitoring', 'render', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('jinja2', 'yaml', 'pydantic', 'prometheus_client') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
