"""The rendered monitoring against the real programs, end to end on 127.0.0.1:

- a real `llmctl serve` (the smoke model, configured for a GPU, /metrics behind an API key) and a real
  `llmctl health --textfile` run against it: `promtool check metrics` is clean on both outputs, and
  every metric name the rendered rules and dashboard use is one of theirs (read from that output, not
  from a list here), or one the rules record, or Prometheus's own `up`;
- a real Prometheus (Debian's package) with the rendered scrape config and rules, scraping serve with
  the API key from the rendered credentials_file and a real node_exporter serving the health textfile,
  with 1 s scrape and evaluation intervals and `alert_for: 1s` from the test's config: `up` is 1,
  the recording rules produce series, and alerts fire when the service is stopped and when the
  health check then finds it CRITICAL.

Prometheus's HTTP API is polled with deadlines; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests._monitoring import grafana_exprs, substituted
from tests._serve import free_port, poll, start_server, stop_server, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.model]

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
missing = [
    name
    for name, found in (
        ("prometheus", shutil.which("prometheus")),
        ("promtool", shutil.which("promtool")),
        ("prometheus-node-exporter", NODE_EXPORTER),
    )
    if not found
]
if missing:
    pytestmark.append(
        pytest.mark.skip(reason=f"needs {', '.join(missing)} (apt-get install prometheus prometheus-node-exporter)")
    )

KEY = "sk-monitoring-e2e"


def exported_names(text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can carry, from its families' types (a family
    with labels but no child yet still has its HELP and TYPE lines)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "summary": ["", "_sum", "_count", "_created"],
            "gauge": [""],
            "info": ["_info"],
            "unknown": [""],
            "untyped": [""],
        }.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
        names.update(s.name for s in family.samples)
    return names


def selector_names(expr: str) -> set[str]:
    import promql_parser as promql

    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql.VectorSelector):
            assert node.name, f"a selector without a metric name: {expr}"
            names.add(node.name)

    promql.walk(promql.parse(expr), visit)
    return names


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


class Prometheus:
    def __init__(self, directory: Path, config: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str, **params) -> dict | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            r = httpx.get(self.url + path, params=params, timeout=5)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    def query(self, promql: str) -> list[dict]:
        doc = self.get("/api/v1/query", query=promql)
        return doc["data"]["result"] if doc else []

    def firing(self, alertname: str) -> list[dict]:
        doc = self.get("/api/v1/alerts")
        return [
            a
            for a in (doc or {"data": {"alerts": []}})["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_prometheus_scrapes_serve_and_alerts_when_it_stops(smoke_model, home: Path, tmp_path: Path):
    import llama_cpp

    from llmctl.config import load_config
    from llmctl.cli.monitoring import deployment
    from llmctl.monitoring.render import DASHBOARD_FILE, RULES_FILE, SCRAPE_FILE, render

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "api-keys").write_text(f"# the server's keys\n{KEY}\n")
    (keys / "chat.key").write_text(KEY + "\n")  # what Prometheus reads (monitoring.credentials_file)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    port, node_port, dead_port = free_port(), free_port(), free_port()
    config = f"""
services:
  chat:
    model: smoke
    port: {port}
    n_ctx: 256
    n_gpu_layers: -1
    api_keys_file: {keys / "api-keys"}
health:
  timeout_s: 10
  retries: 0
  restart: false
systemd:
  health_textfile: {textfiles / "llmctl.prom"}
upstreams:
  cloud: {{base_url: "http://127.0.0.1:{dead_port}/v1", default_model: m}}
monitoring:
  node_exporter: 127.0.0.1:{node_port}
  credentials_file: {keys}/{{service}}.key
  scrape_interval: 1s
  evaluation_interval: 1s
  rate_window: 10s
  alert_for: 1s
"""
    server = start_server(home, config, "chat")
    node = prom = None
    try:
        wait_healthy(server)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(
            server.url + "/v1/completions",
            headers=auth,
            timeout=120,
            json={"prompt": "Hello", "max_tokens": 4, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        assert httpx.get(server.url + "/health").json()["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload())

        # -- the real outputs: promtool check metrics, and the names they carry -----------------------------
        metrics_text = httpx.get(server.url + "/metrics", headers=auth).text
        proc = subprocess.run(
            [sys.executable, "-m", "llmctl", "health", "--json", "--textfile", str(textfiles / "llmctl.prom")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # OK, or WARNING: no GPU offload here
        textfile = (textfiles / "llmctl.prom").read_text()
        for name, text in (("/metrics", metrics_text), ("health textfile", textfile)):
            checked = promtool_check_metrics(text)
            assert checked.returncode == 0 and checked.stdout + checked.stderr == "", (
                name,
                checked.stdout,
                checked.stderr,
            )
        loaded = load_config()
        result = render(loaded.config, deployment(loaded))
        for f in result.files:
            (tmp_path / f.name).write_text(f.content)
        exported = exported_names(metrics_text) | exported_names(textfile)
        known = exported | set(result.records) | {"up"}
        rules = yaml.safe_load(result.get(RULES_FILE).content)
        board = json.loads(result.get(DASHBOARD_FILE).content)
        used: dict[str, set[str]] = {}
        for group in rules["groups"]:
            for rule in group["rules"]:
                used[rule.get("alert") or rule["record"]] = selector_names(rule["expr"])
        for expr in grafana_exprs(board):
            used[expr] = selector_names(substituted(expr))
        unknown = {where: names - known for where, names in used.items() if names - known}
        assert not unknown, f"metric names llmctl does not export: {unknown}"
        assert set().union(*used.values()) & exported >= {
            "llmctl_gpu_offload",
            "llmctl_health_gpu_offload",
            "llmctl_usage_ledger_dropped_total",
            "llmctl_route_cost_usd_total",
        }

        # -- a real node_exporter and a real Prometheus with the rendered files --------------------------
        with open(tmp_path / "node_exporter.log", "wb") as log:
            node = subprocess.Popen(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{node_port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={textfiles}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / RULES_FILE)],
            **yaml.safe_load((tmp_path / SCRAPE_FILE).read_text()),
        }
        prom = Prometheus(tmp_path, prom_config)
        poll(prom.ready, 60, "prometheus to be ready")

        def value(promql: str) -> float | None:
            res = prom.query(promql)
            return float(res[0]["value"][1]) if res else None

        poll(
            lambda: value('up{job="llmctl", service="chat", unit="llmctl-chat.service"}') == 1,
            60,
            "Prometheus to scrape serve with the API key (up == 1)",
        )
        poll(lambda: value('up{job="llmctl-health"}') == 1, 60, "Prometheus to scrape node_exporter")
        poll(
            lambda: value('llmctl_health_status{job="llmctl-health", service="chat"}') is not None,
            60,
            "the health textfile through node_exporter",
        )
        others = 'count({job="llmctl-health", __name__!~"llmctl_health_.*|up|scrape_.*|ALERTS.*"})'
        assert value(others) is None  # of node_exporter's metrics, only llmctl_health_* are kept
        poll(
            lambda: value('llamacpp:tokens_predicted_total{service="chat"}') is not None,
            60,
            "the llama-server names to be recorded",
        )
        poll(lambda: prom.query('service:llmctl_requests:rate10s{service="chat"}'), 60, "a recorded rate")
        assert value('llamacpp:tokens_predicted_total{service="chat"}') >= 1
        if not llama_cpp.llama_supports_gpu_offload():  # this build runs the GPU service on the CPU
            (alert,) = poll(
                lambda: (
                    prom.firing("LlmctlGpuOffloadLost")
                    and [a for a in prom.firing("LlmctlGpuOffloadLost") if a["labels"]["job"] == "llmctl"]
                ),
                60,
                "LlmctlGpuOffloadLost to fire",
            )
            assert alert["labels"]["service"] == "chat"
        assert not prom.firing("LlmctlServiceDown")

        # -- stop the service: ServiceDown fires; the next health run finds it CRITICAL -----------------
        assert stop_server(server) == 0
        (down,) = poll(lambda: prom.firing("LlmctlServiceDown"), 60, "LlmctlServiceDown to fire")
        assert down["labels"]["severity"] == "critical"
        assert {k: down["labels"][k] for k in ("job", "service", "unit", "instance")} == {
            "job": "llmctl",
            "service": "chat",
            "unit": "llmctl-chat.service",
            "instance": f"127.0.0.1:{port}",
        }
        assert down["annotations"]["summary"] == "llmctl service chat is down"
        assert "health chat" in down["annotations"]["runbook"]
        proc = subprocess.run(
            [sys.executable, "-m", "llmctl", "health", "--textfile", str(textfiles / "llmctl.prom")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        (critical,) = poll(lambda: prom.firing("LlmctlHealthCritical"), 60, "LlmctlHealthCritical to fire")
        assert critical["labels"]["service"] == "chat"
    finally:
        stop_server(server)
        for proc in (node, prom):
            if isinstance(proc, Prometheus):
                proc.stop()
            elif proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
