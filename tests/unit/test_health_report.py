"""Renderers (Nagios line, perfdata, JSON, textfile, log lines) and target building."""

from __future__ import annotations

import json

import pytest

from llmctl.errors import NotFound, UsageError
from llmctl.health import report as rep
from llmctl.health.probes import CheckResult, ProbeResult, ProbeSettings
from llmctl.health.run import HealthReport, ServiceResult, Status, worst
from llmctl.health.targets import config_targets, url_target

SETTINGS = ProbeSettings(timeout_s=10, slow_ms=2000)


def _ok(name="chat", latency=123.4) -> ServiceResult:
    check = CheckResult(True, (ProbeResult("tcp", True, 1.0), ProbeResult("completion", True, latency)), 1, latency)
    return ServiceResult(
        name,
        "http://127.0.0.1:8000",
        Status.OK,
        f"{name} {latency:.0f}ms",
        latency_ms=latency,
        check=check,
        restart_budget_left=3,
    )


def test_nagios_line_and_perfdata():
    assert rep.nagios_line(_ok(), SETTINGS) == "OK - chat 123ms | 'chat_latency'=123ms;2000;10000"


def test_perfdata_unknown_value_and_one_line_always():
    r = ServiceResult("chat", "u", Status.CRITICAL, "chat tcp:\nconnection   refused")
    assert rep.nagios_line(r, SETTINGS) == "CRITICAL - chat tcp: connection refused | 'chat_latency'=U;2000;10000"


def test_worst_status_orders_critical_above_unknown():
    assert worst([]) is Status.OK
    assert worst([Status.OK, Status.WARNING]) is Status.WARNING
    assert worst([Status.WARNING, Status.UNKNOWN]) is Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRITICAL, Status.OK]) is Status.CRITICAL


def test_textfile_parses_and_is_written_atomically(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    report = HealthReport((_ok(), _ok("b", 5.0)), Status.OK, started_at=1_700_000_000.0, duration_s=0.25)
    path = tmp_path / "collector" / "health.prom"
    rep.write_textfile(path, rep.textfile_bytes(report))
    fams = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert fams["llmctl_health_run_timestamp_seconds"].samples[0].value == 1_700_000_000.0
    lat = {s.labels["service"]: s.value for s in fams["llmctl_health_latency_seconds"].samples}
    assert lat == {"chat": pytest.approx(0.1234), "b": pytest.approx(0.005)}
    assert fams["llmctl_health_restart_budget_left"].samples[0].value == 3
    assert [p.name for p in path.parent.iterdir()] == ["health.prom"]


def test_log_line_is_one_json_object_without_keys():
    line = rep.log_line("restart_issued", "warning", {"service": "chat", "api_key": "sk-x", "skip": None}, 0.0)
    doc = json.loads(line)
    assert doc == {"ts": "1970-01-01T00:00:00.000Z", "level": "warning", "event": "restart_issued", "service": "chat"}
    assert "\n" not in line


def test_report_doc_is_json_serialisable():
    report = HealthReport((_ok(),), Status.OK, started_at=0.0, duration_s=0.1)
    doc = rep.report_doc(report)
    assert json.loads(json.dumps(doc))["services"][0]["check"]["probes"][1]["probe"] == "completion"


# -- targets ---------------------------------------------------------------------------------------


def _config(text: str):
    import yaml

    from llmctl.config import validate

    return validate(yaml.safe_load(text))


def test_config_targets_defaults_and_selection():
    cfg = _config(
        "services:\n"
        "  b: {model: smoke, host: 0.0.0.0, port: 8001, unit: custom.service, gpu: true}\n"
        "  a: {model: llama, port: 8002, n_gpu_layers: -1}\n"
        "  c: {model: smoke, host: '::', port: 8003}\n"
    )
    a, b, c = config_targets(cfg, [])
    assert (a.name, a.unit, a.gpu, a.model, a.base_url) == (
        "a",
        "llmctl-a.service",
        True,
        "llama",
        "http://127.0.0.1:8002",
    )
    assert (b.unit, b.host, b.gpu) == ("custom.service", "127.0.0.1", True)
    assert c.base_url == "http://[::1]:8003"
    assert [t.name for t in config_targets(cfg, ["c", "a", "c"])] == ["c", "a"]
    with pytest.raises(NotFound, match="unknown service 'x' \\(configured: a, b, c\\)"):
        config_targets(cfg, ["x"])


def test_key_file_first_key_and_credentials(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("\n# ops key below\n  k1  \nk2\n")
    cfg = _config(f"services:\n  a: {{model: smoke, api_keys_file: {keys}}}\n")
    (t,) = config_targets(cfg, [])
    assert t.api_key == "k1" and "k1" not in repr(t)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-keys").write_text("k-cred\n")
    (t,) = config_targets(cfg, [], environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert t.api_key == "k-cred"
    (creds / "api-keys-a").write_text("k-cred-a\n")  # the health unit loads one credential per service
    (t,) = config_targets(cfg, [], environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert t.api_key == "k-cred-a"
    keys.write_text("# nothing\n")
    (t,) = config_targets(cfg, [])
    assert t.api_key is None and "holds no API keys" in t.setup_error


@pytest.mark.parametrize(
    ("url", "base", "port"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", 8000),
        ("http://localhost:8000/v1/", "http://localhost:8000", 8000),
        ("http://[::1]:9000/prefix", "http://[::1]:9000/prefix", 9000),
        ("https://example.internal", "https://example.internal:443", 443),
    ],
)
def test_url_target(url, base, port):
    t = url_target(url)
    assert (t.base_url, t.port, t.unit) == (base, port, None)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h", "http://h:99999", "http://h/?a=1"])
def test_bad_url(url):
    with pytest.raises(UsageError):
        url_target(url)
