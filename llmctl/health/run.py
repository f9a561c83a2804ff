"""One health run: probe every target concurrently -> decide -> restart -> wait for recovery -> probe.

Held under a file lock in the state dir, so two runs on a host never overlap; the policy state
(consecutive failures, restarts, backoff) is loaded before and saved, atomically, after.

The restart itself is a callable the caller passes in (the CLI builds it from
`health.restart_command`); this module never knows how a unit is restarted.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.health import policy as pol
from llmctl.health.probes import CheckResult, Log, ProbeSettings, Target, _no_log, check, check_once, make_client


class Status(enum.IntEnum):
    """The monitoring-plugin states; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# CRITICAL is worse than UNKNOWN when several services are summed up into one exit code.
_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: Sequence[Status]) -> Status:
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


class HealthLocked(LlmctlError):
    """Another health run holds the lock."""


@dataclass(frozen=True)
class RestartOutcome:
    ok: bool
    detail: str
    command: str = ""


Restarter = Callable[[Target], RestartOutcome]


@dataclass(frozen=True)
class ServiceResult:
    name: str
    url: str
    status: Status
    summary: str  # what follows "STATUS - " in the Nagios line
    latency_ms: float | None = None
    check: CheckResult | None = None  # the first check (with its retries)
    after_restart: CheckResult | None = None  # the last probe after a restart
    action: str = "none"  # none | restarted | restart_failed | skipped | would_restart
    decision: pol.Decision | None = None
    restart: RestartOutcome | None = None
    recovered: bool | None = None
    consecutive_failures: int = 0
    restarts_in_window: int = 0
    restart_budget_left: int | None = None
    last_restart: float | None = None


@dataclass(frozen=True)
class HealthReport:
    services: tuple[ServiceResult, ...]
    status: Status
    started_at: float
    duration_s: float
    dry_run: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return int(self.status)


def _probe_text(res: CheckResult) -> str:
    failed = res.failed
    what = f"{failed.probe}: {failed.error}" if failed else "failed"
    return what + (f" ({res.attempts} attempts)" if res.attempts > 1 else "")


def _ok_text(target: Target, res: CheckResult, settings: ProbeSettings) -> tuple[Status, str]:
    latency = f"{res.latency_ms:.0f}ms" if res.latency_ms is not None else ""
    text = f"{target.name} {latency}".rstrip()
    notes = []
    status = Status.OK
    if res.slow(settings):
        status = Status.WARNING
        notes.append(f"slower than {settings.slow_ms}ms")
    if res.gpu == "inactive":  # known to run on the CPU: degraded
        status = Status.WARNING
        notes.append(res.gpu_detail or "GPU offload not active")
    elif res.gpu == "unknown":  # could not tell (e.g. the sandboxed health unit): say so, no alarm
        notes.append(res.gpu_detail or "GPU offload not confirmed")
    if res.attempts > 1:
        notes.append(f"after {res.attempts} attempts")
    return status, text + (", " + "; ".join(notes) if notes else "")


async def _recover(client: Any, target: Target, settings: ProbeSettings, deadline: float, poll_s: float) -> CheckResult:
    """Probe until the service answers every probe or the deadline (monotonic) passes."""
    while True:
        res = await check_once(client, target, settings)
        if res.ok or time.monotonic() >= deadline:
            return res
        await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


async def _one(
    client: Any,
    target: Target,
    state: pol.ServiceState,
    *,
    settings: ProbeSettings,
    policy: pol.PolicySettings,
    restarter: Restarter | None,
    recovery_timeout_s: float,
    dry_run: bool,
    clock: Callable[[], float],
    log: Log,
    poll_s: float,
) -> tuple[ServiceResult, pol.ServiceState | None]:
    url = target.base_url
    if target.setup_error:
        log("check_skipped", "error", service=target.name, error=target.setup_error)
        return ServiceResult(target.name, url, Status.UNKNOWN, f"{target.name} {target.setup_error}"), None

    res = await check(client, target, settings, log=log)
    now = clock()
    tracked = target.unit is not None  # ad-hoc URLs keep no state and are never restarted

    def result(status: Status, summary: str, st: pol.ServiceState, **kw: Any) -> ServiceResult:
        at = clock()
        return ServiceResult(
            target.name,
            url,
            status,
            summary,
            check=res,
            consecutive_failures=st.consecutive_failures,
            restarts_in_window=len(pol.restarts_in_window(st, policy, at)),
            restart_budget_left=pol.budget_left(st, policy, at) if tracked else None,
            last_restart=st.last_restart,
            **kw,
        )

    if res.ok:
        new = pol.record_success(state, policy, now)
        status, text = _ok_text(target, res, settings)
        if status is not Status.OK:
            log("degraded", "warning", service=target.name, detail=text)
        return result(status, text, new, latency_ms=res.latency_ms), (new if tracked else None)

    failure = _probe_text(res)
    new = pol.record_failure(state, policy, now)
    log("check_failed", "error", service=target.name, error=failure, consecutive_failures=new.consecutive_failures)
    if not tracked:
        return result(Status.CRITICAL, f"{target.name} {failure}", new), None

    decision = pol.decide(new, policy, now, failed=True)
    if decision.action == "skip":
        log("restart_skipped", "warning", service=target.name, reason=decision.reason, detail=decision.message)
        return (
            result(
                Status.CRITICAL,
                f"{target.name} {failure}; no restart: {decision.message}",
                new,
                action="skipped",
                decision=decision,
            ),
            new,
        )
    if dry_run or restarter is None:
        why = "dry run" if dry_run else "no restart command"
        log("restart_skipped", "warning", service=target.name, reason="dry_run", detail=f"would restart {target.unit}")
        return (
            result(
                Status.CRITICAL,
                f"{target.name} {failure}; would restart {target.unit} ({why})",
                new,
                action="would_restart",
                decision=decision,
            ),
            new,
        )

    log("restart_issued", "warning", service=target.name, unit=target.unit, detail=decision.message)
    started = time.monotonic()
    outcome = await asyncio.to_thread(restarter, target)
    new = pol.record_restart(new, policy, clock())
    if not outcome.ok:
        log(
            "restart_failed",
            "error",
            service=target.name,
            unit=target.unit,
            command=outcome.command,
            error=outcome.detail,
        )
        return (
            result(
                Status.CRITICAL,
                f"{target.name} {failure}; restart failed: {outcome.detail}",
                new,
                action="restart_failed",
                decision=decision,
                restart=outcome,
                recovered=False,
            ),
            new,
        )
    log("restart_done", "info", service=target.name, unit=target.unit, command=outcome.command)
    after = await _recover(client, target, settings, started + recovery_timeout_s, poll_s)
    waited = round(time.monotonic() - started, 1)
    if after.ok:
        new = pol.record_success(new, policy, clock())
        latency = f" {after.latency_ms:.0f}ms" if after.latency_ms is not None else ""
        log("recovered", "warning", service=target.name, unit=target.unit, after_s=waited, latency_ms=after.latency_ms)
        return (
            result(
                Status.WARNING,
                f"{target.name} recovered after restart{latency} (was: {failure})",
                new,
                latency_ms=after.latency_ms,
                action="restarted",
                decision=decision,
                restart=outcome,
                recovered=True,
                after_restart=after,
            ),
            new,
        )
    log("not_recovered", "error", service=target.name, unit=target.unit, after_s=waited, error=_probe_text(after))
    return (
        result(
            Status.CRITICAL,
            f"{target.name} {failure}; restarted, not recovered within {recovery_timeout_s:g}s"
            f" (now: {_probe_text(after)})",
            new,
            action="restarted",
            decision=decision,
            restart=outcome,
            recovered=False,
            after_restart=after,
        ),
        new,
    )


async def check_services(
    targets: Sequence[Target],
    state: pol.HealthState,
    *,
    settings: ProbeSettings,
    policy: pol.PolicySettings,
    restarter: Restarter | None,
    recovery_timeout_s: float = 60.0,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
    log: Log = _no_log,
    poll_s: float = 0.5,
) -> tuple[HealthReport, pol.HealthState]:
    """Check every target at once; return the report and the state to save."""
    started_at = clock()
    t0 = time.monotonic()
    async with make_client(settings.timeout_s) as client:
        outcomes = await asyncio.gather(
            *(
                _one(
                    client,
                    t,
                    state.get(t.name),
                    settings=settings,
                    policy=policy,
                    restarter=restarter,
                    recovery_timeout_s=recovery_timeout_s,
                    dry_run=dry_run,
                    clock=clock,
                    log=log,
                    poll_s=poll_s,
                )
                for t in targets
            )
        )
    new_state = state
    for target, (_res, st) in zip(targets, outcomes):
        if st is not None:
            new_state = new_state.with_service(target.name, st)
    results = tuple(r for r, _ in outcomes)
    report = HealthReport(
        services=results,
        status=worst([r.status for r in results]),
        started_at=started_at,
        duration_s=round(time.monotonic() - t0, 3),
        dry_run=dry_run,
    )
    return report, new_state


def run_health(
    targets: Sequence[Target],
    *,
    state_dir: Path,
    settings: ProbeSettings,
    policy: pol.PolicySettings,
    restarter: Restarter | None,
    recovery_timeout_s: float = 60.0,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    clock: Callable[[], float] = time.time,
    log: Log = _no_log,
    poll_s: float = 0.5,
) -> HealthReport:
    """The whole run under the host-wide lock. A held lock raises HealthLocked after lock_wait_s."""
    from filelock import FileLock, Timeout

    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LlmctlError(
            f"cannot create the state dir {state_dir}: {exc.strerror or exc}",
            hint="run as the user that owns it, or as root with --system",
        ) from None
    lock = FileLock(str(state_dir / pol.LOCK_FILE), timeout=lock_wait_s)
    try:
        lock.acquire()
    except Timeout:
        raise HealthLocked(
            f"another llmctl health run holds {state_dir / pol.LOCK_FILE}"
            + (f" (waited {lock_wait_s:g}s)" if lock_wait_s > 0 else ""),
            hint="runs never overlap; pass --wait SECONDS to wait for it",
        ) from None
    except OSError as exc:
        raise LlmctlError(f"cannot lock {state_dir / pol.LOCK_FILE}: {exc.strerror or exc}") from None
    try:
        state_path = state_dir / pol.STATE_FILE
        reset = False
        try:
            state = pol.load_state(state_path)
        except pol.StateCorrupt as exc:
            # Pure state: start afresh, say so, and write the fresh state below whatever this run finds.
            log("state_reset", "warning", path=str(state_path), error=str(exc))
            state = pol.HealthState()
            reset = True
        report, new_state = asyncio.run(
            check_services(
                targets,
                state,
                settings=settings,
                policy=policy,
                restarter=restarter,
                recovery_timeout_s=recovery_timeout_s,
                dry_run=dry_run,
                clock=clock,
                log=log,
                poll_s=poll_s,
            )
        )
        if not dry_run and (new_state != state or reset):
            try:
                pol.save_state(state_path, new_state)
            except OSError as exc:
                # The checks are done and maybe a restart too: report them, but the run could not
                # record what it did, so it is at least UNKNOWN.
                note = f"cannot write {state_path}: {exc.strerror or exc}"
                log("state_not_saved", "error", path=str(state_path), error=str(exc.strerror or exc))
                report = replace(report, status=worst([report.status, Status.UNKNOWN]), notes=(*report.notes, note))
        return report
    finally:
        lock.release()
