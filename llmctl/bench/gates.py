"""CI gates: minimum t/s per test kind, and regression against an earlier result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError


@dataclass(frozen=True)
class GateOutcome:
    gate: str  # "--min-pp", "--min-tg", "--max-regression"
    test: str  # which row
    value: float  # the measured t/s
    threshold: float  # the t/s it had to reach
    passed: bool
    detail: str  # one line for people

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def minimum_outcome(label: str, test: str, value: float, flag: str, limit: float) -> GateOutcome:
    """One row against --min-pp / --min-tg (the one wording of this gate)."""
    ok = value >= limit
    short = limit - value
    detail = (
        f"{label}: {value:.2f} t/s >= {flag} {limit:.2f}"
        if ok
        else f"{label}: {value:.2f} t/s is below {flag} {limit:.2f} by {short:.2f} t/s ({100 * short / limit:.1f}%)"
    )
    return GateOutcome(flag, test, value, limit, ok, detail)


def regression_outcome(
    label: str, test: str, value: float, base: float, max_regression_pct: float, base_name: str = ""
) -> GateOutcome:
    """One row against its baseline row: at most max_regression_pct percent slower (the one wording)."""
    floor = base * (1 - max_regression_pct / 100.0)
    change = 100.0 * (value - base) / base if base else 0.0
    ok = value >= floor
    detail = (
        f"{label}: {value:.2f} t/s vs baseline {base_name}{base:.2f} ({change:+.1f}%, allowed -{max_regression_pct:g}%)"
    )
    if not ok:
        detail += f": short of {floor:.2f} t/s by {floor - value:.2f} t/s"
    return GateOutcome("--max-regression", test, value, floor, ok, detail)


def check_minimums(results: list[Any], min_pp: float | None, min_tg: float | None) -> list[GateOutcome]:
    """--min-pp applies to every pp row, --min-tg to every tg row (endpoint rows count as tg)."""
    out: list[GateOutcome] = []
    for r in results:
        for kind, flag, limit in (("pp", "--min-pp", min_pp), ("tg", "--min-tg", min_tg)):
            if limit is not None and r.kind == kind:
                out.append(minimum_outcome(r.label(), r.test, r.avg_ts, flag, limit))
    return out


def endpoint_key(rec: dict[str, Any]) -> tuple:
    return ("endpoint", f"c{int(rec['concurrency'])}", int(rec.get("n_gen") or 0))


def load_baseline(path: Path) -> dict[tuple, float]:
    """Every row of a result file of any format (llmctl's or llama-bench's: json, jsonl, csv, sql,
    SQLite), by its key (see EngineResult.key); rows with the same key are averaged."""
    from llmctl.bench.readers import engine_rows, read_file
    from llmctl.bench.results import engine_key

    f = read_file(path, "--baseline")
    sums: dict[tuple, list[float]] = {}
    if f.mode == "endpoint" or any("concurrency" in r for r in f.rows):
        for rec in f.rows:
            try:
                sums.setdefault(endpoint_key(rec), []).append(float(rec["avg_ts"]))
            except (KeyError, TypeError, ValueError):
                raise UsageError(f"--baseline: {path}: a result without a numeric avg_ts or concurrency") from None
    else:
        for row in engine_rows(f, "--baseline"):
            sums.setdefault(engine_key(row), []).append(row["avg_ts"])
    if not sums:
        raise UsageError(f"--baseline: {path} holds no results")
    return {k: sum(v) / len(v) for k, v in sums.items()}


def check_regression(
    results: list[Any], baseline: dict[tuple, float], max_regression_pct: float, source: str
) -> tuple[list[GateOutcome], list[str]]:
    """Each row against the baseline row with the same test and parameters. Returns the outcomes and
    the rows that had no baseline (reported, not failed). No row at all to compare fails the gate."""
    out: list[GateOutcome] = []
    unmatched: list[str] = []
    for r in results:
        base = baseline.get(r.key())
        if base is None:
            unmatched.append(r.label())
            continue
        out.append(regression_outcome(r.label(), r.test, r.avg_ts, base, max_regression_pct))
    if not out and results:
        out.append(
            GateOutcome(
                "--max-regression",
                "-",
                0.0,
                0.0,
                False,
                f"no result matches a row of the baseline {source} "
                "(same model type, test, depth, threads, n_gpu_layers, batch sizes, flash "
                "attention, repack and the other llama-bench settings)",
            )
        )
    return out, unmatched
