"""The remediation policy: when a failing service may be restarted. Pure: no I/O but load/save.

Three rules keep a broken model from restart-looping:

- threshold: act only after `failures_before_restart` consecutive failed runs;
- backoff: restart number n+1 waits at least min(backoff_initial_s * 2**(n-1), backoff_max_s) after
  restart n; the streak (n) returns to 0 once the service is seen healthy `backoff_max_s` or more
  after its last restart;
- budget: at most `restart_budget` restarts in any `budget_window_s` (a sliding window).

Every function takes `now` (wall-clock seconds, as time.time() gives) from the caller: the state is
kept across runs in a JSON file, so a monotonic clock would not do. Tests inject the time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STATE_FILE = "health-state.json"
LOCK_FILE = "health.lock"
STATE_VERSION = 1


@dataclass(frozen=True)
class PolicySettings:
    failures_before_restart: int = 1
    restart: bool = True
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 900.0
    restart_budget: int = 3
    budget_window_s: float = 3600.0

    @classmethod
    def from_config(cls, health: Any, *, restart: bool | None = None) -> PolicySettings:
        """From llmctl.schema.HealthPolicy; `restart=False` (--no-restart) wins over the file."""
        return cls(
            failures_before_restart=health.failures_before_restart,
            restart=health.restart if restart is None else (health.restart and restart),
            backoff_initial_s=health.backoff_initial_s,
            backoff_max_s=health.backoff_max_s,
            restart_budget=health.restart_budget,
            budget_window_s=health.budget_window_s,
        )


@dataclass(frozen=True)
class ServiceState:
    """What one service's past runs left behind."""

    consecutive_failures: int = 0
    restarts: tuple[float, ...] = ()  # times of the restarts inside the budget window, oldest first
    streak: int = 0  # restarts since the backoff last reset
    last_restart: float | None = None
    last_ok: float | None = None
    last_failure: float | None = None


@dataclass(frozen=True)
class HealthState:
    services: dict[str, ServiceState] = field(default_factory=dict)

    def get(self, name: str) -> ServiceState:
        return self.services.get(name, ServiceState())

    def with_service(self, name: str, state: ServiceState) -> HealthState:
        return HealthState({**self.services, name: state})


@dataclass(frozen=True)
class Decision:
    """What to do about a service after this run's probes."""

    action: str  # "none" (healthy) | "restart" | "skip"
    reason: str  # "healthy" | "restart" | "disabled" | "threshold" | "budget" | "backoff"
    message: str
    retry_at: float | None = None  # for budget/backoff: when a restart becomes possible


# -- the rules -------------------------------------------------------------------------------------


def backoff_s(streak: int, settings: PolicySettings) -> float:
    """The least gap before the next restart, after `streak` restarts in a row."""
    if streak <= 0:
        return 0.0
    # 2**(streak-1) overflows float for absurd streaks; the cap makes that moot.
    exp = min(streak - 1, 64)
    return min(settings.backoff_initial_s * math.pow(2, exp), settings.backoff_max_s)


def restarts_in_window(state: ServiceState, settings: PolicySettings, now: float) -> tuple[float, ...]:
    return tuple(t for t in state.restarts if now - t < settings.budget_window_s)


def budget_left(state: ServiceState, settings: PolicySettings, now: float) -> int:
    return max(0, settings.restart_budget - len(restarts_in_window(state, settings, now)))


def record_success(state: ServiceState, settings: PolicySettings, now: float) -> ServiceState:
    streak = state.streak
    if state.last_restart is None or now - state.last_restart >= settings.backoff_max_s:
        streak = 0
    return replace(
        state,
        consecutive_failures=0,
        streak=streak,
        last_ok=now,
        restarts=restarts_in_window(state, settings, now),
    )


def record_failure(state: ServiceState, settings: PolicySettings, now: float) -> ServiceState:
    return replace(
        state,
        consecutive_failures=state.consecutive_failures + 1,
        last_failure=now,
        restarts=restarts_in_window(state, settings, now),
    )


def record_restart(state: ServiceState, settings: PolicySettings, now: float) -> ServiceState:
    """A restart was issued (whether or not it worked, it counts against the budget)."""
    return replace(
        state,
        restarts=tuple(sorted(restarts_in_window(state, settings, now) + (now,))),
        streak=state.streak + 1,
        last_restart=now,
    )


def decide(state: ServiceState, settings: PolicySettings, now: float, *, failed: bool) -> Decision:
    """Given the state *after* this run was recorded, restart or not, and why."""
    if not failed:
        return Decision("none", "healthy", "healthy")
    if not settings.restart:
        return Decision("skip", "disabled", "restart disabled")
    n, need = state.consecutive_failures, settings.failures_before_restart
    if n < need:
        return Decision("skip", "threshold", f"{n}/{need} consecutive failed runs before a restart")
    recent = restarts_in_window(state, settings, now)
    if len(recent) >= settings.restart_budget:
        if settings.restart_budget == 0:
            return Decision("skip", "budget", "restart budget is 0")
        retry_at = recent[len(recent) - settings.restart_budget] + settings.budget_window_s
        return Decision(
            "skip",
            "budget",
            f"restart budget spent: {len(recent)} restarts in the last {_fmt_s(settings.budget_window_s)}"
            f" (budget {settings.restart_budget}); next restart possible in {_fmt_s(retry_at - now)}",
            retry_at,
        )
    gap = backoff_s(state.streak, settings)
    if state.last_restart is not None and gap > 0 and now - state.last_restart < gap:
        retry_at = state.last_restart + gap
        return Decision(
            "skip",
            "backoff",
            f"backing off: restart {state.streak + 1} waits {_fmt_s(gap)} after the last one;"
            f" next restart possible in {_fmt_s(retry_at - now)}",
            retry_at,
        )
    return Decision("restart", "restart", f"restarting after {n} consecutive failed runs")


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    return f"{math.ceil(seconds)}s"


# -- persistence -----------------------------------------------------------------------------------


class StateCorrupt(ValueError):
    pass


def state_to_json(state: HealthState) -> str:
    doc = {
        "version": STATE_VERSION,
        "services": {name: {**asdict(s), "restarts": list(s.restarts)} for name, s in sorted(state.services.items())},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# Bounds on what a state file may hold. The file is read back on every run and may be corrupt (a
# disk error, a hand edit, `1e999`, `Infinity`): a value outside them resets the state.
MAX_COUNT = 1_000_000  # consecutive failures, restart streak
MAX_RESTARTS = 10_000  # restart times kept in the budget window
MAX_TIME = float(2**34)  # a unix time after the year 2500 is corrupt


def state_from_json(text: str) -> HealthState:
    """Parse and range-check a state file; anything unexpected is StateCorrupt (the caller resets)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StateCorrupt(
            f"not JSON: {str(exc)[:100] if isinstance(exc, ValueError) else 'nested too deeply'}"
        ) from None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise StateCorrupt(f"unsupported state version {str(version)[:40]!r}")
    raw_services = doc.get("services", {})
    if not isinstance(raw_services, dict):
        raise StateCorrupt("'services' is not an object")
    services = {}
    for name, raw in raw_services.items():
        if not isinstance(raw, dict):
            raise StateCorrupt(f"service {name[:64]!r} is not an object")
        restarts = raw.get("restarts", [])
        if not isinstance(restarts, list) or len(restarts) > MAX_RESTARTS:
            raise StateCorrupt(f"{name[:64]}.restarts: not a list of at most {MAX_RESTARTS} times")
        services[name] = ServiceState(
            consecutive_failures=_count(raw, "consecutive_failures", name),
            restarts=tuple(sorted(_time(t, f"{name}.restarts") for t in restarts)),
            streak=_count(raw, "streak", name),
            last_restart=_opt_time(raw, "last_restart", name),
            last_ok=_opt_time(raw, "last_ok", name),
            last_failure=_opt_time(raw, "last_failure", name),
        )
    return HealthState(services)


def _count(raw: dict, key: str, name: str) -> int:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise StateCorrupt(f"{name[:64]}.{key}: {str(value)[:40]} is not a count from 0 to {MAX_COUNT}")
    return value


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIME:
        raise StateCorrupt(f"{where[:80]}: {str(value)[:40]} is not a unix time")  # NaN fails the range too
    return float(value)


def _opt_time(raw: dict, key: str, name: str) -> float | None:
    value = raw.get(key)
    return None if value is None else _time(value, f"{name}.{key}")


def load_state(path: Path) -> HealthState:
    """Missing file: a fresh state. Unreadable or corrupt: StateCorrupt (the caller decides)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return HealthState()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateCorrupt(str(exc)) from None
    return state_from_json(text)


def save_state(path: Path, state: HealthState) -> None:
    from llmctl.fsutil import atomic_write_text

    atomic_write_text(Path(path), state_to_json(state), mode=0o600)
