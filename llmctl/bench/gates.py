"""CI gates: minimum t/s per test kind, and regression against an earlier JSON result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl.bench.params import name_of_test
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


def check_minimums(results: list[Any], min_pp: float | None, min_tg: float | None) -> list[GateOutcome]:
    """--min-pp applies to every pp row, --min-tg to every tg row (endpoint rows count as tg)."""
    out: list[GateOutcome] = []
    for r in results:
        for kind, flag, limit in (("pp", "--min-pp", min_pp), ("tg", "--min-tg", min_tg)):
            if limit is None or r.kind != kind:
                continue
            ok = r.avg_ts >= limit
            short = limit - r.avg_ts
            detail = (f"{r.label()}: {r.avg_ts:.2f} t/s >= {flag} {limit:.2f}" if ok else
                      f"{r.label()}: {r.avg_ts:.2f} t/s is below {flag} {limit:.2f} "
                      f"by {short:.2f} t/s ({100 * short / limit:.1f}%)")
            out.append(GateOutcome(flag, r.test, r.avg_ts, limit, ok, detail))
    return out


def _flash(v: Any) -> int:
    if isinstance(v, str):
        return 1 if v.lower() in ("1", "true", "on", "enabled") else 0
    return 1 if v and int(v) > 0 else 0


def baseline_key(rec: dict[str, Any]) -> tuple:
    """The key of a baseline record: ours, or a llama-bench JSON record (no `test` field there)."""
    if "concurrency" in rec:
        return ("endpoint", f"c{int(rec['concurrency'])}", int(rec.get("n_gen") or 0))
    name = rec.get("test") or name_of_test(int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0)))
    return ("engine", rec.get("model_type"), name, int(rec.get("n_threads", 0)), int(rec.get("n_gpu_layers", 0)),
            int(rec.get("n_batch", 0)), _flash(rec.get("flash_attn", 0)))


def load_baseline(path: Path) -> dict[tuple, float]:
    """Our `-o json` document, its `-o jsonl` lines, or llama-bench's own `-o json`/`-o jsonl`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"--baseline: cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc: Any = json.loads(text)
        records = doc.get("results") if isinstance(doc, dict) else doc
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UsageError(f"--baseline: {path} is not JSON or JSON lines ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UsageError(f"--baseline: {path} holds no list of results")
    out: dict[tuple, float] = {}
    for rec in records:
        try:
            out[baseline_key(rec)] = float(rec["avg_ts"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"--baseline: {path}: a result without a numeric avg_ts") from None
    if not out:
        raise UsageError(f"--baseline: {path} holds no results")
    return out


def check_regression(results: list[Any], baseline: dict[tuple, float], max_regression_pct: float,
                     source: str) -> tuple[list[GateOutcome], list[str]]:
    """Each row against the baseline row with the same test and parameters. Returns the outcomes and
    the rows that had no baseline (reported, not failed). No row at all to compare fails the gate."""
    out: list[GateOutcome] = []
    unmatched: list[str] = []
    for r in results:
        base = baseline.get(r.key())
        if base is None:
            unmatched.append(r.label())
            continue
        floor = base * (1 - max_regression_pct / 100.0)
        change = 100.0 * (r.avg_ts - base) / base if base else 0.0
        ok = r.avg_ts >= floor
        detail = (f"{r.label()}: {r.avg_ts:.2f} t/s vs baseline {base:.2f} ({change:+.1f}%, "
                  f"allowed -{max_regression_pct:g}%)")
        if not ok:
            detail += f": short of {floor:.2f} t/s by {floor - r.avg_ts:.2f} t/s"
        out.append(GateOutcome("--max-regression", r.test, r.avg_ts, floor, ok, detail))
    if not out and results:
        out.append(GateOutcome("--max-regression", "-", 0.0, 0.0, False,
                               f"no result matches a row of the baseline {source} "
                               "(same model type, test, threads, n_gpu_layers, batch size and flash attention)"))
    return out, unmatched
