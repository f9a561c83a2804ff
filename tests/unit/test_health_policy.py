"""The remediation policy, with an injected clock: threshold, exponential backoff, restart budget."""

from __future__ import annotations

import json
import stat

import pytest

from llmctl.health import policy as pol
from llmctl.health.policy import PolicySettings, ServiceState


class Clock:
    """Time under the test's control."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def fail(
    state: ServiceState, settings: PolicySettings, clock: Clock, after: float = 0
) -> tuple[ServiceState, pol.Decision]:
    """`after` seconds later, one failed run: record it, decide, record the restart if one is due."""
    clock.advance(after)
    state = pol.record_failure(state, settings, clock())
    decision = pol.decide(state, settings, clock(), failed=True)
    if decision.action == "restart":
        state = pol.record_restart(state, settings, clock())
    return state, decision


def test_healthy_run_needs_nothing():
    s = PolicySettings()
    state = pol.record_success(ServiceState(), s, 10.0)
    assert pol.decide(state, s, 10.0, failed=False).action == "none"
    assert state.consecutive_failures == 0 and state.last_ok == 10.0


def test_consecutive_failures_threshold():
    s = PolicySettings(failures_before_restart=3, backoff_initial_s=0)
    clock = Clock()
    state = ServiceState()
    for expected in (1, 2):
        state, d = fail(state, s, clock)
        assert (d.action, d.reason) == ("skip", "threshold")
        assert d.message == f"{expected}/3 consecutive failed runs before a restart"
        clock.advance(60)
    state, d = fail(state, s, clock)
    assert d.action == "restart"
    assert state.restarts == (clock(),)


def test_a_success_resets_the_failure_count():
    s = PolicySettings(failures_before_restart=2)
    clock = Clock()
    state, _ = fail(ServiceState(), s, clock)
    state = pol.record_success(state, s, clock.advance(60))
    state, d = fail(state, s, clock, after=60)
    assert d.reason == "threshold" and state.consecutive_failures == 1


def test_backoff_doubles_up_to_the_cap():
    s = PolicySettings(backoff_initial_s=30, backoff_max_s=100)
    assert [pol.backoff_s(n, s) for n in range(6)] == [0, 30, 60, 100, 100, 100]
    assert pol.backoff_s(10_000, s) == 100  # no overflow


def test_backoff_between_restarts_with_injected_clock():
    s = PolicySettings(backoff_initial_s=30, backoff_max_s=900, restart_budget=100)
    clock = Clock()
    state, d = fail(ServiceState(), s, clock)
    assert d.action == "restart" and state.streak == 1
    first = clock()

    state, d = fail(state, s, clock, after=10)
    assert d.reason == "backoff" and d.retry_at == first + 30
    assert "next restart possible in 20s" in d.message

    state, d = fail(state, s, clock, after=20)  # 30 s after the first restart
    assert d.action == "restart" and state.streak == 2
    second = clock()

    state, d = fail(state, s, clock, after=59)  # the next gap is 60 s
    assert d.reason == "backoff" and d.retry_at == second + 60
    state, d = fail(state, s, clock, after=1)
    assert d.action == "restart" and state.streak == 3

    state, d = fail(state, s, clock, after=119)
    assert d.reason == "backoff"
    state, d = fail(state, s, clock, after=1)
    assert d.action == "restart" and state.streak == 4


def test_streak_resets_only_after_a_healthy_stretch_of_backoff_max():
    s = PolicySettings(backoff_initial_s=30, backoff_max_s=300, restart_budget=100)
    clock = Clock()
    state, _ = fail(ServiceState(), s, clock)
    state, _ = fail(state, s, clock, after=30)
    assert state.streak == 2
    # Healthy soon after the restart (a flapping model): the streak stays.
    state = pol.record_success(state, s, clock.advance(60))
    assert state.streak == 2
    state, d = fail(state, s, clock, after=1)  # 61 s after restart 2: gap 60 s has passed
    assert d.action == "restart" and state.streak == 3
    # Healthy backoff_max_s after the last restart: back to the initial backoff.
    state = pol.record_success(state, s, clock.advance(300))
    assert state.streak == 0
    state, d = fail(state, s, clock, after=1)
    assert d.action == "restart" and state.streak == 1


def test_restart_budget_over_a_sliding_window():
    s = PolicySettings(backoff_initial_s=0, restart_budget=3, budget_window_s=3600)
    clock = Clock()
    state = ServiceState()
    times = []
    for _ in range(3):
        state, d = fail(state, s, clock)
        assert d.action == "restart"
        times.append(clock())
        clock.advance(600)
    state, d = fail(state, s, clock)  # 1800 s after the first restart
    assert d.reason == "budget" and d.action == "skip"
    assert d.retry_at == times[0] + 3600
    assert "restart budget spent: 3 restarts in the last 3600s (budget 3)" in d.message
    assert pol.budget_left(state, s, clock()) == 0
    # The first restart leaves the window: one restart is possible again, then none.
    clock.now = times[0] + 3600
    assert pol.budget_left(state, s, clock()) == 1
    state, d = fail(state, s, clock)
    assert d.action == "restart"
    state, d = fail(state, s, clock, after=1)
    assert d.reason == "budget" and d.retry_at == times[1] + 3600


def test_budget_counts_restarts_that_failed_and_prunes_old_ones():
    s = PolicySettings(backoff_initial_s=0, restart_budget=2, budget_window_s=100)
    state = pol.record_restart(ServiceState(), s, 0.0)
    state = pol.record_restart(state, s, 50.0)
    assert pol.decide(pol.record_failure(state, s, 60.0), s, 60.0, failed=True).reason == "budget"
    state = pol.record_restart(state, s, 140.0)
    assert state.restarts == (50.0, 140.0)  # 0.0 fell out of the window


def test_budget_zero_never_restarts():
    s = PolicySettings(restart_budget=0)
    state, d = fail(ServiceState(), s, Clock())
    assert (d.action, d.reason, d.message) == ("skip", "budget", "restart budget is 0")


def test_restart_disabled():
    s = PolicySettings(restart=False)
    _, d = fail(ServiceState(), s, Clock())
    assert (d.action, d.reason) == ("skip", "disabled")


def test_budget_is_checked_before_backoff():
    s = PolicySettings(backoff_initial_s=30, restart_budget=1, budget_window_s=3600)
    clock = Clock()
    state, _ = fail(ServiceState(), s, clock)
    _, d = fail(state, s, clock, after=5)
    assert d.reason == "budget"


def test_from_config_no_restart_flag_wins():
    from llmctl.schema import HealthPolicy

    h = HealthPolicy(restart=True, restart_budget=5)
    assert PolicySettings.from_config(h).restart is True
    assert PolicySettings.from_config(h, restart=False).restart is False
    assert PolicySettings.from_config(HealthPolicy(restart=False)).restart is False
    assert PolicySettings.from_config(h).restart_budget == 5


# -- persistence -----------------------------------------------------------------------------------


def test_state_round_trip_and_atomic_private_file(tmp_path):
    path = tmp_path / "state" / pol.STATE_FILE
    state = pol.HealthState().with_service(
        "chat", ServiceState(consecutive_failures=2, restarts=(5.0, 1.0), streak=2, last_restart=5.0, last_ok=0.5)
    )
    pol.save_state(path, state)
    loaded = pol.load_state(path)
    assert loaded.get("chat").restarts == (1.0, 5.0)  # oldest first
    assert loaded.get("chat").consecutive_failures == 2 and loaded.get("chat").last_ok == 0.5
    assert loaded.get("other") == ServiceState()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [pol.STATE_FILE]  # no temp file left
    assert json.loads(path.read_text())["version"] == pol.STATE_VERSION


def test_missing_state_is_fresh(tmp_path):
    assert pol.load_state(tmp_path / "nope.json") == pol.HealthState()


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 99}', '{"version": 1, "services": {"a": {"restarts": "x"}}}'])
def test_corrupt_state_is_reported(tmp_path, text):
    path = tmp_path / pol.STATE_FILE
    path.write_text(text)
    with pytest.raises(pol.StateCorrupt):
        pol.load_state(path)


def test_empty_restart_command_is_a_config_error():
    from llmctl.config import validate
    from llmctl.errors import ConfigError

    with pytest.raises(ConfigError, match="health.restart_command: must name a command"):
        validate({"health": {"restart_command": []}})
    assert validate({"health": {"restart_command": ["my-restart", "{service}"]}}).health.restart_command == [
        "my-restart",
        "{service}",
    ]
