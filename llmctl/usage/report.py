"""`llmctl usage`: the ledger aggregated over a window, grouped by day, provider (route), model or key.

Figures per group: requests, success rate (status < 400), prompt and completion tokens, p50/p95
latency (nearest rank), cost (recorded per request from the route's price table), and savings:
what the same tokens would have cost at the configured reference price, minus the cost.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import OperationFailed, UsageError
from llmctl.usage.ledger import FILENAME, connect

GROUPS = {
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "provider": "route",
    "model": "COALESCE(model, '-')",
    "key": "COALESCE(key_id, 'ip:' || COALESCE(client, '-'))",
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The ledger is a file another process (or a person with sqlite3) may have written: SQLite keeps
# whatever type a value had. Rows whose figures are not numbers of the right type are counted and
# left out of the report, never summed.
_NUM = "typeof({0}) IN ('integer', 'real') AND {0} BETWEEN -1e300 AND 1e300"
WELL_TYPED = " AND ".join(
    [
        _NUM.format("ts"),
        _NUM.format("latency_ms"),
        _NUM.format("cost"),
        *(f"typeof({c}) = 'integer'" for c in ("status", "prompt_tokens", "completion_tokens")),
    ]
)


@dataclass(frozen=True)
class UsageRow:
    group: str
    requests: int
    succeeded: int
    prompt_tokens: int
    completion_tokens: int
    p50_ms: float | None
    p95_ms: float | None
    cost: float
    reference_cost: float

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.requests if self.requests else None

    @property
    def savings(self) -> float:
        return self.reference_cost - self.cost

    def as_dict(self) -> dict:
        return {
            "group": self.group,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "cost_usd": round(self.cost, 6),
            "reference_cost_usd": round(self.reference_cost, 6),
            "savings_usd": round(self.savings, 6),
        }


@dataclass(frozen=True)
class UsageReport:
    path: Path
    since: float | None  # unix time, or None: everything
    by: str | None
    rows: tuple[UsageRow, ...]
    total: UsageRow
    reference_price_in_per_1k: float
    reference_price_out_per_1k: float
    skipped: int = 0  # rows in the window left out because a figure had the wrong type


def parse_since(text: str, now: float | None = None) -> float | None:
    """'7d', '12h', '30m', '2w', '90s'; an ISO date or time (UTC when no zone); 'all' -> None."""
    now = time.time() if now is None else now
    t = text.strip().lower()
    if t in ("all", ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t)
    if m:
        return now - float(m.group(1)) * UNITS[m.group(2)]
    try:
        when = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since: {text!r} is not a duration (7d, 12h, 30m, 2w) or an ISO date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.timestamp()


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return round(sorted_values[k], 1)


def summarize(
    state_dir: Path,
    *,
    since: float | None,
    by: str | None,
    reference_in_per_1k: float = 0.0,
    reference_out_per_1k: float = 0.0,
) -> UsageReport:
    if by is not None and by not in GROUPS:
        raise UsageError(f"--by: must be one of {', '.join(GROUPS)}")
    path = Path(state_dir) / FILENAME
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "ok": 0, "pt": 0, "ct": 0, "cost": 0.0, "lat": []})
    total: dict[str, Any] = {"n": 0, "ok": 0, "pt": 0, "ct": 0, "cost": 0.0, "lat": []}
    unreadable_hint = "read it as the user that runs llmctl serve, or as root (the server units run as a dynamic user)"
    try:
        present = path.exists()
    except OSError as exc:  # PermissionError: /var/lib/private, the server units' own, is root's
        raise OperationFailed(
            f"cannot read the usage ledger {path}: {exc.strerror or exc}", hint=unreadable_hint
        ) from None
    skipped = 0
    if present:
        key = GROUPS[by] if by else "'all'"
        window = (since if since is not None else float("-inf"),)
        try:
            conn = connect(path, readonly=True)
            try:
                skipped = conn.execute(
                    f"SELECT count(*) FROM requests WHERE NOT ({WELL_TYPED}) AND NOT (typeof(ts) IN "
                    "('integer', 'real') AND ts < ?)",
                    window,
                ).fetchone()[0]
                cur = conn.execute(
                    f"SELECT {key}, status, prompt_tokens, completion_tokens, latency_ms, cost FROM requests "
                    f"WHERE {WELL_TYPED} AND ts >= ? ORDER BY 1",
                    window,
                )
                for group, status, pt, ct, lat, cost in cur:
                    for acc in (groups[str(group)], total):
                        acc["n"] += 1
                        acc["ok"] += 1 if status < 400 else 0
                        acc["pt"] += pt
                        acc["ct"] += ct
                        acc["cost"] += cost
                        acc["lat"].append(lat)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            readable = os.access(path, os.R_OK)
            raise OperationFailed(
                f"cannot read the usage ledger {path}: {exc}", hint=None if readable else unreadable_hint
            ) from None

    def row(name: str, acc: dict) -> UsageRow:
        lat = sorted(acc["lat"])
        ref = acc["pt"] / 1000 * reference_in_per_1k + acc["ct"] / 1000 * reference_out_per_1k
        return UsageRow(
            name, acc["n"], acc["ok"], acc["pt"], acc["ct"], percentile(lat, 50), percentile(lat, 95), acc["cost"], ref
        )

    rows = tuple(row(k, v) for k, v in sorted(groups.items())) if by else ()
    return UsageReport(path, since, by, rows, row("total", total), reference_in_per_1k, reference_out_per_1k, skipped)
