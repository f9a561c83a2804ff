"""`llmctl health` wiring: exit codes (monitoring-plugin convention), output modes, flags, the lock.

Services are real HTTP servers on 127.0.0.1 (tests/health_standin.py); the restart command is a
real command (a Python one-liner) configured through health.restart_command.
"""

from __future__ import annotations

import json
import sys

import pytest
import typer
from typer.testing import CliRunner

from llmctl.cli import health as health_cli
from llmctl.cli.app import app
from tests.health_standin import StandIn, free_port

runner = CliRunner()
FAST = "health: {timeout_s: 1, retries: 0, retry_delay_s: 0, recovery_timeout_s: 2, backoff_initial_s: 0}\n"


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), catch_exceptions=False, env=env)


def service(name: str, port: int, **extra) -> str:
    fields = ", ".join(
        [f"model: {extra.pop('model', 'smoke')}", f"port: {port}", *(f"{k}: {v}" for k, v in extra.items())]
    )
    return f"  {name}: {{{fields}}}\n"


def config(write_config, *services: str, health: str = FAST) -> None:
    write_config("version: 1\nservices:\n" + "".join(services) + health)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- UNKNOWN: could not check ----------------------------------------------------------------------


def test_nothing_configured_is_unknown():
    r = invoke("health")
    assert r.exit_code == 3
    assert r.stdout == "UNKNOWN - no services configured and no --url given: nothing to check\n"
    assert r.stderr.startswith("Error: no services configured")


def test_unknown_service_is_unknown(write_config):
    config(write_config, service("chat", 8000))
    r = invoke("health", "nope")
    assert r.exit_code == 3 and "unknown service 'nope' (configured: chat)" in r.stdout


def test_bad_config_is_unknown_not_usage(write_config):
    write_config("services:\n  chat:\n    model: smoke\n    prot: 8000\n")
    r = invoke("health")
    assert r.exit_code == 3
    assert r.stderr.strip() == "Error: services.chat.prot: unknown key (did you mean 'port'?)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "abc"], "--timeout 'abc': expected a number"),
        (["--timeout", "0"], "--timeout '0': must be > 0"),
        (["--retries", "-1"], "--retries '-1': must be >= 0"),
        (["--retries", "1.5"], "--retries '1.5': expected an integer"),
        (["--url", "ftp://x"], "--url 'ftp://x': expected http://HOST[:PORT]"),
        (["--model", "m"], "--model and --api-key go with --url"),
    ],
)
def test_bad_values_are_unknown(args, message):
    r = invoke("health", *args)
    assert r.exit_code == 3, r.output
    assert message in r.stderr


def test_unknown_flag_exits_3_with_the_proposed_registration():
    """Typer's parser exits 2 on an unknown flag before health runs. Registered with
    health.CONTEXT_SETTINGS (a one-line change in app.py), the flag reaches health, which exits 3."""
    probe = typer.Typer()
    probe.command("health", context_settings=health_cli.CONTEXT_SETTINGS)(health_cli.main)
    r = runner.invoke(probe, ["--bogus"], catch_exceptions=False)
    assert r.exit_code == 3 and "no such option: --bogus" in r.stderr


def test_lock_held_is_unknown_at_once(write_config, home):
    from filelock import FileLock

    with StandIn() as s:
        config(write_config, service("chat", s.port))
        (home / "state").mkdir()
        with FileLock(str(home / "state" / "health.lock")):
            r = invoke("health")
            r2 = invoke("health", "--wait", "0.2")
    assert r.exit_code == 3 and r.stdout.startswith("UNKNOWN - another llmctl health run holds")
    assert r2.exit_code == 3 and "(waited 0.2s)" in r2.stdout


# -- OK / WARNING / CRITICAL -----------------------------------------------------------------------


def test_ok_nagios_line_with_perfdata(write_config):
    with StandIn() as s:
        config(write_config, service("chat", s.port))
        r = invoke("health")
    assert r.exit_code == 0, r.output
    line = r.stdout.strip()
    assert line.startswith("OK - chat ") and line.count("\n") == 0
    summary, perf = line.split(" | ")
    assert summary.endswith("ms")
    assert perf.startswith("'chat_latency'=") and perf.endswith("ms;2000;1000")
    assert r.stderr == ""


def test_quiet_prints_nothing_when_ok(write_config):
    with StandIn() as s:
        config(write_config, service("chat", s.port))
        r = invoke("health", "--quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")


def test_quiet_still_speaks_when_not_ok(write_config):
    with StandIn(mode="fail_completions") as s:
        config(write_config, service("chat", s.port))
        r = invoke("health", "--quiet", "--no-restart")
    assert r.exit_code == 2
    assert r.stdout.startswith("CRITICAL - chat completion: HTTP 500: engine failed; no restart: restart disabled")
    evs = events(r.stderr)
    assert [e["event"] for e in evs] == ["probe_failed", "check_failed", "restart_skipped"]
    assert all({"ts", "level", "event", "service"} <= e.keys() for e in evs)


def test_selected_services_only_and_worst_status_wins(write_config):
    with StandIn() as ok, StandIn(mode="fail_completions") as bad:
        config(write_config, service("a", ok.port), service("b", bad.port))
        only_a = invoke("health", "a")
        both = invoke("health", "--no-restart")
    assert only_a.exit_code == 0 and only_a.stdout.count("\n") == 1
    assert both.exit_code == 2
    assert [ln.split(" - ")[0] for ln in both.stdout.splitlines()] == ["OK", "CRITICAL"]


def test_json_shape(write_config):
    with StandIn() as s:
        config(write_config, service("chat", s.port))
        r = invoke("health", "--json")
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "health"
    assert doc["status"] == "OK" and doc["exit_code"] == 0
    (svc,) = doc["services"]
    assert svc["name"] == "chat" and svc["status"] == "OK" and svc["latency_ms"] > 0
    assert [p["probe"] for p in svc["check"]["probes"]] == ["tcp", "health", "models", "completion"]
    assert svc["policy"]["restart_budget_left"] == 3


def test_unknown_in_json(write_config):
    r = invoke("health", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 3 and doc["status"] == "UNKNOWN" and "nothing to check" in doc["error"]


def test_restart_command_placeholders_and_recovery(write_config, tmp_path):
    record = tmp_path / "restarted.txt"
    with StandIn(mode="hang_completions") as s:
        # The "restart" records its arguments; the stand-in is fixed from outside when it has run.
        cmd = [
            sys.executable,
            "-c",
            "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))",
            str(record),
            "{unit}",
            "{service}",
            "x{unit}y",
        ]
        config(
            write_config,
            service("chat", s.port, unit="custom.service"),
            health=FAST.replace("}", f", restart_command: {json.dumps(cmd)}}}"),
        )

        import threading

        def fix_when_restarted():
            import time

            deadline = time.monotonic() + 30
            while not record.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            s.mode = "ok"

        t = threading.Thread(target=fix_when_restarted)
        t.start()
        r = invoke("health")
        t.join()
    assert record.read_text() == "custom.service chat xcustom.servicey"
    assert r.exit_code == 1, r.output
    assert r.stdout.startswith("WARNING - chat recovered after restart")
    names = [e["event"] for e in events(r.stderr)]
    assert names[-3:] == ["restart_issued", "restart_done", "recovered"]


def test_dry_run_and_no_restart_run_nothing(write_config, tmp_path, home):
    record = tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(record)!r}, 'w').write('x')"]
    with StandIn(mode="fail_completions") as s:
        config(
            write_config, service("chat", s.port), health=FAST.replace("}", f", restart_command: {json.dumps(cmd)}}}")
        )
        dry = invoke("health", "--dry-run")
        no = invoke("health", "--no-restart")
    assert not record.exists()
    assert dry.exit_code == 2 and "would restart llmctl-chat.service (dry run)" in dry.stdout
    assert no.exit_code == 2 and "no restart: restart disabled" in no.stdout


def test_restart_command_missing_is_critical(write_config):
    with StandIn(mode="fail_completions") as s:
        config(
            write_config,
            service("chat", s.port),
            health=FAST.replace("}", ', restart_command: ["/nonexistent/restart", "{unit}"]}'),
        )
        r = invoke("health")
    assert r.exit_code == 2
    assert "restart failed: /nonexistent/restart: no such file or directory" in r.stdout.lower()


def test_adhoc_url_and_api_key_from_env():
    with StandIn(api_key="k-1") as s:
        ok = invoke("health", "--url", f"{s.url}/v1", env={"OPENAI_API_KEY": "k-1"})
        bad = invoke("health", "--url", s.url, "--retries", "0", env={"OPENAI_API_KEY": "wrong"})
    assert ok.exit_code == 0 and ok.stdout.startswith("OK - url ")
    assert bad.exit_code == 2 and "HTTP 401" in bad.stdout
    assert "wrong" not in bad.stdout + bad.stderr


def test_service_key_file_and_systemd_credential(write_config, tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\nk-file\nk-second\n")
    with StandIn(api_key="k-file") as s:
        config(write_config, service("chat", s.port, api_keys_file=str(keys)))
        assert invoke("health").exit_code == 0
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "api-keys").write_text("k-cred\n")
        r = invoke("health", "--no-restart", env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert r.exit_code == 2 and "HTTP 401" in r.stdout  # the credential wins over the file
        s.server.api_key = "k-cred"
        assert invoke("health", env={"CREDENTIALS_DIRECTORY": str(creds)}).exit_code == 0


def test_unreadable_key_file_is_unknown_for_that_service(write_config, tmp_path):
    with StandIn() as s:
        config(write_config, service("a", s.port), service("b", s.port, api_keys_file=str(tmp_path / "missing")))
        r = invoke("health")
    assert r.exit_code == 3
    lines = r.stdout.splitlines()
    assert lines[0].startswith("OK - a ")
    assert lines[1].startswith("UNKNOWN - b cannot read an API key: services.b.api_keys_file: API keys file not found")


def test_state_persists_between_runs(write_config, home):
    with StandIn(mode="fail_completions") as s:
        config(write_config, service("chat", s.port), health=FAST.replace("}", ", failures_before_restart: 2}"))
        first = invoke("health", "--no-restart")
        second = invoke("health", "--dry-run")
    assert "no restart: restart disabled" in first.stdout
    assert "would restart" in second.stdout  # 2 consecutive failures: the threshold is met
    state = json.loads((home / "state" / "health-state.json").read_text())
    assert state["services"]["chat"]["consecutive_failures"] == 1  # --dry-run saved nothing


# -- textfile --------------------------------------------------------------------------------------


def _families(path) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(path.read_text())}


def test_textfile_parses_with_prometheus_client(write_config, tmp_path):
    out = tmp_path / "textfile" / "llmctl_health.prom"
    with StandIn() as ok, StandIn(mode="fail_completions") as bad:
        config(write_config, service("chat", ok.port), service("broken", bad.port))
        r = invoke("health", "--quiet", "--no-restart", "--textfile", str(out))
    assert r.exit_code == 2
    fam = _families(out)
    status = {s.labels["service"]: s.value for s in fam["llmctl_health_status"].samples}
    assert status == {"chat": 0, "broken": 2}
    up = {s.labels["service"]: s.value for s in fam["llmctl_health_up"].samples}
    assert up == {"chat": 1, "broken": 0}
    assert fam["llmctl_health_run_status"].samples[0].value == 2
    assert [s.labels["service"] for s in fam["llmctl_health_latency_seconds"].samples] == ["chat"]
    probes = {(s.labels["service"], s.labels["probe"]): s.value for s in fam["llmctl_health_probe_ok"].samples}
    assert probes[("broken", "completion")] == 0 and probes[("chat", "completion")] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["llmctl_health.prom"]  # no temp file left


def test_textfile_says_unknown_when_the_run_cannot_check(tmp_path):
    out = tmp_path / "h.prom"
    r = invoke("health", "--textfile", str(out))
    assert r.exit_code == 3
    assert _families(out)["llmctl_health_run_status"].samples[0].value == 3


def test_closed_port_reports_critical_with_restart_failure(write_config):
    config(write_config, service("chat", free_port()), health=FAST.replace("}", ', restart_command: ["false"]}'))
    r = invoke("health")
    assert r.exit_code == 2
    assert r.stdout.startswith("CRITICAL - chat tcp: connection refused; restart failed: false exited 1")
