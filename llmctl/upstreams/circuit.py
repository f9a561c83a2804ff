"""A circuit breaker per upstream: closed -> open after N consecutive failures -> half-open after a
cool-down (one trial request) -> closed on success, open again on failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the metric's encoding


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0  # consecutive
        self.opened_at: float | None = None
        self.trial = False  # a half-open trial request is in flight
        self.opened = 0  # times the circuit opened (a counter, for people)
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        if self.clock() - self.opened_at >= self.cooldown_s:
            return HALF_OPEN
        return OPEN

    def allow(self) -> bool:
        """May a request go now? In half-open, only one trial at a time."""
        with self._lock:
            state = self.state
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self.trial:
                self.trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self.trial = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.trial or (self.opened_at is None and self.failures >= self.threshold):
                self.opened_at = self.clock()
                self.opened += 1
            self.trial = False

    def release(self) -> None:
        """The attempt ended with neither verdict (the client left): let another trial go."""
        with self._lock:
            self.trial = False

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))
