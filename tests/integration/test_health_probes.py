"""Probes and the run against real HTTP servers on 127.0.0.1 (tests/health_standin.py).

The restarter here is a plain callable that changes the stand-in's behaviour (a restart that fixes
the service, or one that does not): the run only ever sees a callable, as with the CLI's command.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llmctl.health import policy as pol
from llmctl.health.probes import ProbeSettings, Target
from llmctl.health.report import report_doc
from llmctl.health.run import HealthLocked, RestartOutcome, Status, check_services, run_health
from tests.health_standin import HangServer, StandIn, free_port

FAST = ProbeSettings(timeout_s=1.0, retries=1, retry_delay_s=0.05, slow_ms=2000, check_gpu=True)
POLICY = pol.PolicySettings(failures_before_restart=1, backoff_initial_s=0, restart_budget=3, budget_window_s=3600)


class Clock:
    def __init__(self, start: float = 2_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def __call__(self, event: str, level: str = "info", **fields) -> None:
        self.items.append({"event": event, "level": level, **fields})

    def names(self) -> list[str]:
        return [e["event"] for e in self.items]


def target(port: int, name: str = "chat", *, unit: str | None = "llmctl-chat.service", **kw) -> Target:
    return Target(
        name=name,
        host="127.0.0.1",
        port=port,
        base_url=f"http://127.0.0.1:{port}",
        model=kw.pop("model", "smoke"),
        unit=unit,
        **kw,
    )


def run(targets, state=None, *, settings=FAST, policy=POLICY, restarter=None, clock=None, events=None, **kw):
    return asyncio.run(
        check_services(
            targets,
            state or pol.HealthState(),
            settings=settings,
            policy=policy,
            restarter=restarter,
            clock=clock or Clock(),
            log=events or Events(),
            poll_s=0.05,
            **kw,
        )
    )


def only(report):
    assert len(report.services) == 1
    return report.services[0]


def test_healthy_service_is_ok():
    with StandIn() as s:
        report, state = run([target(s.port)])
        requests = list(s.server.requests)
    r = only(report)
    assert report.status is Status.OK and r.status is Status.OK
    assert [p.probe for p in r.check.probes] == ["tcp", "health", "models", "completion"]
    assert all(p.ok for p in r.check.probes) and r.latency_ms is not None
    assert r.summary.startswith("chat ") and r.summary.endswith("ms")
    assert ("POST", "/v1/completions") in requests
    assert state.get("chat").consecutive_failures == 0 and state.get("chat").last_ok is not None


def test_port_answers_but_inference_hangs_is_critical():
    events = Events()
    with StandIn(mode="hang_completions") as s:
        report, state = run([target(s.port, unit=None)], events=events)
    r = only(report)
    assert r.status is Status.CRITICAL
    failed = r.check.failed
    assert failed.probe == "completion" and failed.error == "timed out after 1s"
    assert [p.ok for p in r.check.probes] == [True, True, True, False]
    assert r.check.attempts == 2 and events.names().count("probe_failed") == 2
    assert "completion: timed out after 1s (2 attempts)" in r.summary


def test_accepts_but_never_answers_is_critical():
    with HangServer() as h:
        r = only(run([target(h.port, unit=None)])[0])
    assert r.status is Status.CRITICAL and r.check.failed.probe == "health"
    assert r.check.failed.error.startswith("timed out")


def test_closed_port_is_refused():
    r = only(run([target(free_port(), unit=None)])[0])
    assert r.status is Status.CRITICAL
    assert (r.check.failed.probe, r.check.failed.error) == ("tcp", "connection refused")


def test_loading_model_fails_health_with_503():
    with StandIn(mode="loading") as s:
        r = only(run([target(s.port, unit=None)])[0])
    assert r.check.failed.probe == "health" and "503" in r.check.failed.error


def test_wrong_model_fails_the_models_probe():
    with StandIn(model="other") as s:
        r = only(run([target(s.port, unit=None)])[0])
    assert r.check.failed.probe == "models"
    assert "'smoke' not listed" in r.check.failed.error and "other" in r.check.failed.error


def test_first_listed_model_when_none_is_expected():
    with StandIn(model="llama") as s:
        r = only(run([target(s.port, unit=None, model=None)])[0])
    assert r.status is Status.OK and r.check.model == "llama"


def test_api_key_is_sent_and_never_logged():
    key = "sk-test-secret-123"
    with StandIn(api_key=key) as s:
        events = Events()
        good, _ = run([target(s.port, unit=None, api_key=key)], events=events)
        bad, _ = run([target(s.port, unit=None)], events=events)
    assert only(good).status is Status.OK
    r = only(bad)
    assert r.check.failed.probe == "models" and r.check.failed.error.startswith("HTTP 401")
    everything = json.dumps(report_doc(good)) + json.dumps(report_doc(bad)) + json.dumps(events.items) + repr(good)
    assert key not in everything


def test_slow_completion_is_warning_not_failure():
    settings = ProbeSettings(timeout_s=5, retries=0, retry_delay_s=0, slow_ms=50)
    with StandIn(mode="slow", delay_s=0.2) as s:
        report, _ = run([target(s.port)], settings=settings)
    r = only(report)
    assert r.status is Status.WARNING and r.action == "none"
    assert "slower than 50ms" in r.summary


@pytest.mark.parametrize(
    ("offload", "status", "gpu"), [(True, Status.OK, "active"), (False, Status.WARNING, "inactive")]
)
def test_gpu_offload_reported_by_the_server(offload, status, gpu):
    with StandIn(gpu_offload=offload) as s:
        r = only(run([target(s.port, gpu=True)])[0])
    assert r.status is status and r.check.gpu == gpu
    assert r.action == "none"  # degraded, not down: no restart


def test_gpu_offload_unconfirmable_is_a_note_not_an_alarm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here (nor on this machine)
    with StandIn() as s:
        r = only(run([target(s.port, gpu=True)])[0])
    assert r.status is Status.OK and r.check.gpu == "unknown"
    assert "GPU offload not confirmed" in r.summary and "nvidia-smi" in r.summary


def test_gpu_not_checked_when_disabled():
    settings = ProbeSettings(timeout_s=1, retries=0, retry_delay_s=0, check_gpu=False)
    with StandIn() as s:
        r = only(run([target(s.port, gpu=True)], settings=settings)[0])
    assert r.status is Status.OK and r.check.gpu is None


def test_hung_service_does_not_spoil_the_others():
    with StandIn() as a, StandIn() as b, HangServer() as h:
        report, _ = run(
            [target(a.port, "a", unit=None), target(h.port, "hung", unit=None), target(b.port, "b", unit=None)]
        )
    assert [(r.name, r.status) for r in report.services] == [
        ("a", Status.OK),
        ("hung", Status.CRITICAL),
        ("b", Status.OK),
    ]
    assert report.status is Status.CRITICAL


# -- restarts --------------------------------------------------------------------------------------


def test_restart_that_fixes_the_service_is_warning_recovered():
    events = Events()
    calls = []
    with StandIn(mode="fail_completions") as s:

        def restarter(t: Target) -> RestartOutcome:
            calls.append(t.unit)
            s.mode = "ok"
            return RestartOutcome(True, "done", "fake-restart")

        report, state = run([target(s.port)], restarter=restarter, events=events, recovery_timeout_s=10)
    r = only(report)
    assert calls == ["llmctl-chat.service"]
    assert r.status is Status.WARNING and r.recovered is True and r.action == "restarted"
    assert (
        r.summary.startswith("chat recovered after restart") and "was: completion: HTTP 500: engine failed" in r.summary
    )
    assert r.after_restart.ok
    names = events.names()
    assert names.index("restart_issued") < names.index("recovered")
    st = state.get("chat")
    assert len(st.restarts) == 1 and st.consecutive_failures == 0 and st.streak == 1


def test_restart_that_fails_is_critical():
    with StandIn(mode="fail_completions") as s:
        r = only(run([target(s.port)], restarter=lambda t: RestartOutcome(False, "systemctl exited 5"))[0])
    assert r.status is Status.CRITICAL and r.action == "restart_failed"
    assert "restart failed: systemctl exited 5" in r.summary
    assert r.restarts_in_window == 1  # a failed restart still counts against the budget


def test_restart_without_recovery_is_critical():
    with StandIn(mode="fail_completions") as s:
        r = only(run([target(s.port)], restarter=lambda t: RestartOutcome(True, "ok"), recovery_timeout_s=1)[0])
    assert r.status is Status.CRITICAL and r.recovered is False
    assert "restarted, not recovered within 1s" in r.summary


def test_budget_spent_over_runs_with_injected_clock():
    policy = pol.PolicySettings(backoff_initial_s=0, restart_budget=1, budget_window_s=3600)
    clock = Clock()
    calls = []

    def restarter(t: Target) -> RestartOutcome:
        calls.append(clock())
        return RestartOutcome(False, "nope")

    with StandIn(mode="fail_completions") as s:
        _, state = run([target(s.port)], policy=policy, restarter=restarter, clock=clock)
        clock.now += 60
        events = Events()
        report, state = run([target(s.port)], state, policy=policy, restarter=restarter, clock=clock, events=events)
        assert len(calls) == 1
        clock.now += 3600  # the first restart leaves the window
        run([target(s.port)], state, policy=policy, restarter=restarter, clock=clock)
    r = only(report)
    assert r.status is Status.CRITICAL and r.action == "skipped" and r.decision.reason == "budget"
    assert "no restart: restart budget spent: 1 restarts in the last 3600s (budget 1)" in r.summary
    assert "restart_skipped" in events.names() and "restart_issued" not in events.names()
    assert len(calls) == 2


def test_dry_run_restarts_nothing():
    calls = []
    with StandIn(mode="fail_completions") as s:
        r = only(
            run([target(s.port)], restarter=lambda t: calls.append(t) or RestartOutcome(True, ""), dry_run=True)[0]
        )
    assert calls == [] and r.action == "would_restart"
    assert "would restart llmctl-chat.service (dry run)" in r.summary


def test_adhoc_url_is_never_restarted():
    calls = []
    with StandIn(mode="fail_completions") as s:
        report, state = run([target(s.port, "url", unit=None)], restarter=lambda t: calls.append(t))
    assert calls == [] and only(report).action == "none" and state == pol.HealthState()


def test_missing_key_file_is_unknown_for_that_service_only():
    with StandIn() as s:
        report, _ = run([target(s.port, "a"), target(s.port, "b", setup_error="cannot read an API key from /x")])
    assert [r.status for r in report.services] == [Status.OK, Status.UNKNOWN]
    assert report.status is Status.UNKNOWN


# -- the lock and the state file -------------------------------------------------------------------


def test_second_run_exits_unknown_while_the_lock_is_held(tmp_path):
    from filelock import FileLock

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with StandIn() as s, FileLock(str(state_dir / pol.LOCK_FILE)):
        with pytest.raises(HealthLocked, match="another llmctl health run holds"):
            run_health([target(s.port)], state_dir=state_dir, settings=FAST, policy=POLICY, restarter=None)


def test_run_saves_state_and_dry_run_does_not(tmp_path):
    state_dir = tmp_path / "state"
    with StandIn(mode="fail_completions") as s:
        run_health([target(s.port)], state_dir=state_dir, settings=FAST, policy=POLICY, restarter=None, dry_run=True)
        assert not (state_dir / pol.STATE_FILE).exists()
        run_health(
            [target(s.port)],
            state_dir=state_dir,
            settings=FAST,
            policy=POLICY,
            restarter=lambda t: RestartOutcome(False, "no"),
        )
    saved = pol.load_state(state_dir / pol.STATE_FILE).get("chat")
    assert saved.consecutive_failures == 1 and len(saved.restarts) == 1


def test_corrupt_state_is_reset_with_a_warning(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / pol.STATE_FILE).write_text("{not json")
    events = Events()
    with StandIn() as s:
        report = run_health(
            [target(s.port)], state_dir=state_dir, settings=FAST, policy=POLICY, restarter=None, log=events
        )
    assert report.status is Status.OK and "state_reset" in events.names()
    assert pol.load_state(state_dir / pol.STATE_FILE).get("chat").last_ok is not None


@pytest.mark.parametrize(
    ("listed", "status", "gpu"), [("self", Status.OK, "active"), ("other", Status.WARNING, "inactive")]
)
def test_gpu_offload_from_nvidia_smi(monkeypatch, tmp_path, listed, status, gpu):
    """A fake nvidia-smi (no GPU on this machine): it lists our pid, or another one, as a compute app.
    The stand-in serves from this process, so the pid behind the port is ours."""
    import os

    pid = os.getpid() if listed == "self" else 999_999_999
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = --query-compute-apps=pid ] || exit 9\necho {pid}\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with StandIn() as s:  # its /health does not report gpu_offload
        r = only(run([target(s.port, gpu=True)])[0])
    assert r.status is status and r.check.gpu == gpu
