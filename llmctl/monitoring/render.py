"""Render the monitoring of the configured services: a Prometheus scrape config, alert and recording
rules, and a Grafana dashboard, from the Jinja2 templates in templates/monitoring/.

Deterministic: the same config gives the same bytes. Every value from the config goes through the
escaper of the format it lands in (llmctl.monitoring.escape); each rendered file is parsed back
(YAML, JSON) before it is returned, so a template mistake is an exception here, never a broken file
on a monitoring host. jinja2 and yaml are imported inside the functions that use them.

The templates use [[ ]] / [% %] / [# #] as delimiters: alert annotations are Go templates
({{ $labels.service }}) and stay readable as they are.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmctl import __version__
from llmctl.errors import UsageError
from llmctl.monitoring import escape
from llmctl.netutil import connect_host, host_port

if TYPE_CHECKING:
    from llmctl.schema import Config

SCRAPE_FILE = "llmctl-scrape.yml"
RULES_FILE = "llmctl.rules.yml"
DASHBOARD_FILE = "llmctl-dashboard.json"
GRAFANA_SCHEMA_VERSION = 42  # the classic dashboard model's last schema version (Grafana 12)
QUANTILES = ("0.5", "0.95", "0.99")
MARKER = "Rendered by llmctl"

_DURATION_PART = re.compile(r"([0-9]+)(ms|y|w|d|h|m|s)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


@dataclass(frozen=True)
class Deployment:
    """What the rest of llmctl deploys, named the way monitoring needs it. The CLI fills it from the
    unit renderer and the upstreams' config (features do not import each other)."""

    units: Mapping[str, str]  # service -> its systemd unit
    health_service: str  # the health check's unit
    health_timer: str  # and its timer
    cloud_routes: tuple[str, ...] = ()  # the route labels (upstream:<name>) of cloud upstreams
    llmctl: str = "llmctl"  # how a runbook runs llmctl (with --config when it is not the default)


@dataclass(frozen=True)
class MonitoringFile:
    name: str  # file name, e.g. llmctl.rules.yml
    kind: str  # "scrape" | "rules" | "dashboard"
    content: str


@dataclass(frozen=True)
class MonitoringResult:
    files: tuple[MonitoringFile, ...]
    alerts: tuple[str, ...]  # the alert names in the rules, in order
    records: tuple[str, ...]  # the recorded metric names
    notes: tuple[str, ...] = field(default_factory=tuple)  # what a person should know (not errors)

    def get(self, name: str) -> MonitoringFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


def runbook_llmctl(config_path: str | None, default_path: str | None = None) -> str:
    """`llmctl`, with `--config PATH` (shell-quoted) unless it is the default config."""
    if config_path is None or config_path == default_path:
        return "llmctl"
    return f"llmctl --config {shlex.quote(config_path)}"


def duration_seconds(value: str) -> float:
    """Seconds in a Prometheus duration (validated by the config schema)."""
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def _environment():
    from llmctl.templating import environment

    env = environment(
        "monitoring",
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
    )
    env.filters.update(
        yaml=escape.yaml_value,
        json=escape.json_value,
        promql=escape.promql_str,
        promql_alternatives=escape.promql_alternatives,
        number=escape.promql_number,
        gotmpl=escape.gotmpl_text,
    )
    return env


def _value_map(*values: tuple[int, str, str]) -> list[dict]:
    """Grafana value mappings: a number shown as a word in a colour."""
    return [
        {
            "type": "value",
            "options": {
                str(v): {"text": text, "color": color, "index": i} for i, (v, text, color) in enumerate(values)
            },
        }
    ]


def _target(name: str, host: str, port: int, override: str | None) -> str:
    from llmctl.schema import HOST_RE

    host = override if override is not None else connect_host(host)
    if not HOST_RE.fullmatch(host):
        where = "monitoring.target_host" if override is not None else f"services.{name}.host"
        raise UsageError(f"{where}: {host!r} is not a host name or address Prometheus can scrape")
    return host_port(host.strip("[]"), port)


def render(config: Config, deployment: Deployment) -> MonitoringResult:
    """The scrape config, the rules and the dashboard for every configured service."""
    import yaml

    m = config.monitoring
    if not config.services:
        raise UsageError(
            "services: no service is configured, so there is nothing to monitor",
            hint="add a service under services: (see config.example.yaml)",
        )
    health = config.systemd.health_textfile is not None
    services: list[dict[str, Any]] = []
    for name, spec in config.services.items():
        unit = deployment.units.get(name)
        if unit is None:
            raise UsageError(f"services.{name}: no systemd unit name was given for it")
        services.append(
            {
                "name": name,
                "unit": unit,
                "target": _target(name, spec.host, spec.port, m.target_host),
                "credentials_file": (
                    m.credentials_file.replace("{service}", name)
                    if spec.api_keys_file and not spec.public_metrics
                    else None
                ),
                "queue_length": spec.limits.queue_length,
            }
        )
    window = m.rate_window
    ctx: dict[str, Any] = {
        "version": __version__,
        "header": f"# {MARKER} {__version__}. Do not edit: change the config and run `llmctl monitoring render` again.",
        "m": m,
        "services": services,
        "health": health,
        "node_exporter": m.node_exporter,
        "window": window,
        "rate": f"rate{window}",
        "range": f"[{window}]",
        "quantiles": QUANTILES,
        "by": "job, instance, service, unit",
        "stale_seconds": duration_seconds(m.health_stale_after),
        "cloud_routes": list(deployment.cloud_routes),
        "fallback_ratio": m.max_cloud_fallback_percent / 100,
        "llmctl": deployment.llmctl,
        "health_service": deployment.health_service,
        "health_timer": deployment.health_timer,
        "schema_version": GRAFANA_SCHEMA_VERSION,
        "up_mappings": _value_map((1, "UP", "green"), (0, "DOWN", "red")),
        "health_mappings": _value_map(
            (0, "OK", "green"), (1, "WARNING", "yellow"), (2, "CRITICAL", "red"), (3, "UNKNOWN", "purple")
        ),
        "gpu_mappings": _value_map((1, "GPU", "green"), (0, "CPU", "red")),
        "circuit_mappings": _value_map((0, "closed", "green"), (1, "half-open", "yellow"), (2, "open", "red")),
    }

    def alert_labels(severity: str) -> str:
        """An alert's labels as a YAML flow mapping: severity, then monitoring.alert_labels. Prometheus
        expands alert labels as Go templates, as it does annotations."""
        pairs = [("severity", severity), *sorted(m.alert_labels.items())]
        return (
            "{"
            + ", ".join(f"{escape.yaml_value(k)}: {escape.yaml_value(escape.gotmpl_text(v))}" for k, v in pairs)
            + "}"
        )

    ctx["alert_labels"] = alert_labels
    env = _environment()
    scrape = env.get_template("scrape.yml.j2").render(**ctx)
    rules = env.get_template("rules.yml.j2").render(**ctx)
    dashboard = env.get_template("dashboard.json.j2").render(**ctx)

    # Parsed back: a template mistake fails here, in tests, not in Prometheus or Grafana.
    yaml.safe_load(scrape)
    rules_doc = yaml.safe_load(rules)
    alerts = tuple(r["alert"] for g in rules_doc["groups"] for r in g["rules"] if "alert" in r)
    records = tuple(dict.fromkeys(r["record"] for g in rules_doc["groups"] for r in g["rules"] if "record" in r))
    board = json.dumps(json.loads(dashboard), indent=2, ensure_ascii=False) + "\n"

    notes = []
    keyed = [s["name"] for s in services if s["credentials_file"]]
    if keyed:
        notes.append(
            "Prometheus reads one API key for "
            + ", ".join(keyed)
            + " from "
            + ", ".join(sorted({s["credentials_file"] for s in services if s["credentials_file"]}))
            + " (one key of the service's api_keys_file, readable by the prometheus user)"
        )
    if not health:
        notes.append("systemd.health_textfile is not set: no health job and no health alerts")
    if not deployment.cloud_routes:
        notes.append("no cloud upstream is configured: no cloud fallback alert")
    files = (
        MonitoringFile(SCRAPE_FILE, "scrape", scrape),
        MonitoringFile(RULES_FILE, "rules", rules),
        MonitoringFile(DASHBOARD_FILE, "dashboard", board),
    )
    return MonitoringResult(files, alerts, records, tuple(notes))
