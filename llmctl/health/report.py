"""Renderers of a HealthReport: Nagios lines, JSON, Prometheus textfile, structured log lines.

They return strings or write files; the CLI decides what goes where.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from llmctl.health.probes import CheckResult, ProbeSettings
from llmctl.health.run import HealthReport, ServiceResult, Status
from llmctl.text import printable


def plugin_text(text: object) -> str:
    """Text for a monitoring-plugin line: one line, control characters made visible, and no '|'
    (it starts the performance data: a server's error text must not be able to forge it)."""
    return printable(" ".join(str(text).split())).replace("|", "/")


def _label(name: str) -> str:
    """A perfdata label (Nagios plugin guidelines): quoted, a quote doubled, no '=' (it ends the label)."""
    return "'" + plugin_text(name).replace("=", "_").replace("'", "''") + "'"


def perfdata(res: ServiceResult, settings: ProbeSettings) -> str:
    """`'chat_latency'=123ms;2000;10000` (warn = slow_ms, crit = the probe timeout); U when unknown."""
    value = "U" if res.latency_ms is None else f"{res.latency_ms:.0f}ms"
    crit = f"{settings.timeout_s * 1000:.0f}"
    return f"{_label(res.name + '_latency')}={value};{settings.slow_ms};{crit}"


def nagios_line(res: ServiceResult, settings: ProbeSettings) -> str:
    return f"{res.status.name} - {plugin_text(res.summary)} | {perfdata(res, settings)}"


def nagios_lines(report: HealthReport, settings: ProbeSettings) -> list[str]:
    lines = [nagios_line(r, settings) for r in report.services]
    lines += [unknown_line(note) for note in report.notes]
    return lines


def unknown_line(text: object) -> str:
    """The line of a run that could not check (or a note about one that could not record)."""
    return f"{Status.UNKNOWN.name} - {plugin_text(text)}"


def _check_doc(res: CheckResult | None) -> dict[str, Any] | None:
    if res is None:
        return None
    return {
        "ok": res.ok,
        "attempts": res.attempts,
        "latency_ms": res.latency_ms,
        "model": res.model,
        "gpu": res.gpu,
        "gpu_detail": res.gpu_detail,
        "probes": [{"probe": p.probe, "ok": p.ok, "ms": p.ms, "error": p.error} for p in res.probes],
    }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def service_doc(res: ServiceResult) -> dict[str, Any]:
    return {
        "name": res.name,
        "url": res.url,
        "status": res.status.name,
        "exit_code": int(res.status),
        "summary": res.summary,
        "latency_ms": res.latency_ms,
        "check": _check_doc(res.check),
        "action": res.action,
        "decision": None
        if res.decision is None
        else {"reason": res.decision.reason, "message": res.decision.message, "retry_at": _iso(res.decision.retry_at)},
        "restart": None
        if res.restart is None
        else {"ok": res.restart.ok, "detail": res.restart.detail, "command": res.restart.command},
        "recovered": res.recovered,
        "after_restart": _check_doc(res.after_restart),
        "policy": {
            "consecutive_failures": res.consecutive_failures,
            "restarts_in_window": res.restarts_in_window,
            "restart_budget_left": res.restart_budget_left,
            "last_restart": _iso(res.last_restart),
        },
    }


def report_doc(report: HealthReport) -> dict[str, Any]:
    """The payload of `llmctl health --json` (emit_json adds schema_version and kind)."""
    return {
        "status": report.status.name,
        "exit_code": report.exit_code,
        "started_at": _iso(report.started_at),
        "duration_s": report.duration_s,
        "dry_run": report.dry_run,
        "notes": list(report.notes),
        "services": [service_doc(r) for r in report.services],
    }


# -- Prometheus textfile ---------------------------------------------------------------------------


def textfile_bytes(report: HealthReport | None, *, status: Status | None = None, now: float | None = None) -> bytes:
    """The node_exporter textfile. Without a report (the run could not check): the run status only."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    run_status = Gauge(
        "llmctl_health_run_status", "Overall result: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", registry=reg
    )
    run_ts = Gauge("llmctl_health_run_timestamp_seconds", "When the last health run started", registry=reg)
    run_status.set(int(report.status if report else (status if status is not None else Status.UNKNOWN)))
    run_ts.set(report.started_at if report else (now if now is not None else 0.0))
    if report is not None:
        Gauge("llmctl_health_run_duration_seconds", "How long the last health run took", registry=reg).set(
            report.duration_s
        )
        labels = ["service"]
        st = Gauge("llmctl_health_status", "Per service: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", labels, registry=reg)
        up = Gauge("llmctl_health_up", "1 when the service answered every probe", labels, registry=reg)
        lat = Gauge("llmctl_health_latency_seconds", "One-token completion latency", labels, registry=reg)
        probe_ok = Gauge("llmctl_health_probe_ok", "1 when the probe passed", ["service", "probe"], registry=reg)
        probe_s = Gauge("llmctl_health_probe_duration_seconds", "Probe duration", ["service", "probe"], registry=reg)
        fails = Gauge("llmctl_health_consecutive_failures", "Consecutive failed runs", labels, registry=reg)
        restarts = Gauge("llmctl_health_restarts_in_window", "Restarts inside the budget window", labels, registry=reg)
        budget = Gauge("llmctl_health_restart_budget_left", "Restarts left in the budget window", labels, registry=reg)
        restarted = Gauge("llmctl_health_restarted", "1 when this run restarted the service", labels, registry=reg)
        last = Gauge(
            "llmctl_health_last_restart_timestamp_seconds", "When the service was last restarted", labels, registry=reg
        )
        gpu = Gauge(
            "llmctl_health_gpu_offload",
            "GPU services: 1 offload active, 0 not (absent: not known)",
            labels,
            registry=reg,
        )
        for r in report.services:
            st.labels(r.name).set(int(r.status))
            final = r.after_restart or r.check
            up.labels(r.name).set(1 if final is not None and final.ok else 0)
            if r.latency_ms is not None:
                lat.labels(r.name).set(r.latency_ms / 1000)
            if final is not None:
                for p in final.probes:
                    probe_ok.labels(r.name, p.probe).set(1 if p.ok else 0)
                    probe_s.labels(r.name, p.probe).set(p.ms / 1000)
            fails.labels(r.name).set(r.consecutive_failures)
            restarts.labels(r.name).set(r.restarts_in_window)
            if r.restart_budget_left is not None:
                budget.labels(r.name).set(r.restart_budget_left)
            restarted.labels(r.name).set(1 if r.restart is not None else 0)
            if r.last_restart is not None:
                last.labels(r.name).set(r.last_restart)
            if final is not None and final.gpu in ("active", "inactive"):
                gpu.labels(r.name).set(1 if final.gpu == "active" else 0)
    return generate_latest(reg)


def write_textfile(path: str | Path, data: bytes) -> None:
    """Atomically: temp file beside it (a dot name, not *.prom, so the collector skips it), fsync, rename."""
    from llmctl.fsutil import atomic_write_bytes

    atomic_write_bytes(Path(path), data, mode=0o644)


# -- structured log lines --------------------------------------------------------------------------


def log_line(event: str, level: str, fields: dict[str, Any], now: float) -> str:
    doc: dict[str, Any] = {"ts": _iso_ms(now), "level": level, "event": event}
    for k, v in fields.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if k in ("api_key", "key", "authorization"):  # never, whatever a caller passes
            continue
        doc[k] = v
    return json.dumps(doc, default=str, separators=(",", ":"))


def _iso_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
