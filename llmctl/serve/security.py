"""API keys (compared in constant time) and a token-bucket rate limiter."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping

from llmctl.keys import ApiKey


def presented_key(headers: Mapping[str, str]) -> bytes | None:
    """The key a client sent: `Authorization: Bearer <key>` or `X-Api-Key: <key>`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip().encode("utf-8", "surrogateescape")
    header = headers.get("x-api-key")
    if header and header.strip():
        return header.strip().encode("utf-8", "surrogateescape")
    return None


def match_key(keys: tuple[ApiKey, ...], candidate: bytes | None) -> ApiKey | None:
    """The key that matches, comparing against every key with hmac.compare_digest (no early exit)."""
    if candidate is None:
        return None
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.secret, candidate) and found is None:
            found = key
    return found


class RateLimiter:
    """Token buckets keyed by API key id or client IP: `rpm` tokens per minute, `burst` deep.

    allow() returns 0.0 when the request may pass, else the seconds until one token is back
    (the Retry-After). Idle, full buckets are dropped so the table stays small.
    """

    MAX_BUCKETS = 10_000

    def __init__(self, rpm: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rpm / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_BUCKETS:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
