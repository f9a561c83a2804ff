"""`llmctl ps` wiring: targets (services, --url), keys, exit codes, --json. The servers are real HTTP
servers on 127.0.0.1 (tests/health_standin.py: no /status, so ps falls back to /v1/models); the
real `llmctl serve` is in tests/integration/test_serve_multimodel.py."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmctl.cli.app import app
from tests.health_standin import StandIn, free_port

runner = CliRunner()


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), catch_exceptions=False, env=env)


def test_url_without_status_endpoint_lists_v1_models():
    s = StandIn(model="m1").start()
    try:
        r = invoke("ps", "--url", s.url, "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        (server,) = doc["servers"]
        assert (doc["kind"], server["ok"], server["source"]) == ("ps", True, "models")
        assert server["models"] == [{"id": "m1", "status": "unknown"}]
        r = invoke("ps", "--url", s.url)
        assert r.exit_code == 0 and "m1" in r.stdout and "unknown" in r.stdout
    finally:
        s.stop()


def test_configured_services_with_their_key_and_a_down_one(write_config, tmp_path):
    s = StandIn(model="m1", api_key="k-1").start()
    keys = tmp_path / "keys"
    keys.write_text("k-1\n")
    down = free_port()
    try:
        write_config(
            f"version: 1\nservices:\n  up: {{model: smoke, port: {s.port}, api_keys_file: {keys}}}\n"
            f"  down: {{model: smoke, port: {down}}}\n"
        )
        r = invoke("ps", "--json")
        assert r.exit_code == 1, r.output
        servers = {x["name"]: x for x in json.loads(r.stdout)["servers"]}
        assert servers["up"]["ok"] and servers["up"]["models"][0]["id"] == "m1"
        assert not servers["down"]["ok"] and servers["down"]["error"]
        r = invoke("ps", "up", "--json")
        assert r.exit_code == 0, r.output
        r = invoke("ps", "--url", s.url)  # no key
        assert r.exit_code == 1 and "HTTP 401" in r.output and "API key" in r.output
        assert invoke("ps", "--url", s.url, "--api-key", "k-1").exit_code == 0
    finally:
        s.stop()


def test_usage_errors_exit_2(write_config):
    write_config("version: 1\n")
    r = invoke("ps")
    assert r.exit_code == 2 and "no services are configured" in r.output
    r = invoke("ps", "svc", "--url", "http://127.0.0.1:1")
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke("ps", "--url", "ftp://x")
    assert r.exit_code == 2
