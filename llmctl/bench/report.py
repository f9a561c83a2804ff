"""Rendering: the people's table; -o json|jsonl|csv|sql|md exactly as llama-bench writes them (see
llamabench); -o json-full, llmctl's document (rows, host record, gates); and comparisons.

Pure functions returning text; the CLI decides where it goes.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from llmctl.bench import llamabench as LB
from llmctl.bench.results import BenchReport, EndpointResult, EngineResult

JSON_FULL_VERSION = 1

ENDPOINT_FIELDS = (
    "url",
    "api",
    "model",
    "test",
    "concurrency",
    "n_requests",
    "n_ok",
    "n_failed",
    "n_gen",
    "prompt_tokens",
    "output_tokens",
    "duration_s",
    "test_time",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_ms_mean",
    "ttft_ms_p50",
    "ttft_ms_p90",
    "ttft_ms_p99",
    "itl_ms_mean",
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "e2e_ms_mean",
    "e2e_ms_p50",
    "e2e_ms_p90",
    "e2e_ms_p99",
)


# -- engine -----------------------------------------------------------------------------------------


def engine_table(results: list[EngineResult]) -> tuple[list[str], list[list[str]]]:
    """llama-bench's markdown columns, for the terminal table."""
    rows = [r.row() for r in results]
    fields = LB.md_fields(rows)
    return [LB.md_header(f) for f in fields], [[LB.md_cell(f, row) for f in fields] for row in rows]


def engine_markdown(results: list[EngineResult]) -> str:
    """llama-bench's `-o md` table, with its `build: <commit> (<number>)` footer."""
    return LB.to_markdown([r.row() for r in results])


def pipe_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A GitHub pipe table (compare-llama-bench's default output); columns in `right` align right."""
    right = right or set()
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in right else (":" + "-" * (w + 1)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), rule] + [line(r) for r in rows]) + "\n"


# -- endpoint ---------------------------------------------------------------------------------------


def _flat_endpoint(r: EndpointResult) -> dict[str, Any]:
    rec = r.to_record()
    out = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        for stat, value in rec[name].items():
            out[f"{name}_{stat}"] = value
    return out


def endpoint_table(results: list[EndpointResult]) -> tuple[list[str], list[list[str]]]:
    cols = [
        "test",
        "requests",
        "ok",
        "TTFT ms mean/p50/p90/p99",
        "ITL ms mean/p50/p90/p99",
        "E2E ms mean/p50/p90/p99",
        "out t/s",
        "req/s",
    ]

    def lat(x) -> str:
        return f"{x.mean:.1f}/{x.p50:.1f}/{x.p90:.1f}/{x.p99:.1f}"

    rows = [
        [
            r.test,
            str(r.n_requests),
            str(r.n_ok),
            lat(r.ttft_ms),
            lat(r.itl_ms),
            lat(r.e2e_ms),
            f"{r.avg_ts:.2f}",
            f"{r.requests_per_s:.2f}",
        ]
        for r in results
    ]
    return cols, rows


def endpoint_markdown(results: list[EndpointResult]) -> str:
    cols, rows = endpoint_table(results)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if results:
        lines += ["", f"endpoint: {results[0].url} ({results[0].api}, model {results[0].model})"]
    return "\n".join(lines) + "\n"


# -- formats ----------------------------------------------------------------------------------------


def json_full(report: BenchReport, gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """llmctl's document: the rows (llama-bench's, plus `test` and `n_ctx`), the host record, the gates."""
    doc: dict[str, Any] = {"schema_version": JSON_FULL_VERSION, "kind": "bench"}
    if report.mode == "engine":
        doc["llama_bench_schema"] = LB.SCHEMA_VERSION
    return {**doc, **report.to_dict(), "gates": gates or []}


def render(report: BenchReport, fmt: str, gates: list[dict[str, Any]] | None = None) -> str:
    """Everything but `table` (which the CLI draws with rich on a terminal)."""
    results = list(report.results)
    engine = report.mode == "engine"
    if fmt == "json-full":
        return json.dumps(json_full(report, gates), indent=2, default=str) + "\n"
    if engine:
        rows = [r.row() for r in results]
        writers = {"json": LB.to_json, "jsonl": LB.to_jsonl, "csv": LB.to_csv, "sql": LB.to_sql, "md": LB.to_markdown}
        return writers[fmt](rows)
    if fmt == "json":
        return json.dumps([r.to_record() for r in results], indent=2, default=str) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_record(), default=str) + "\n" for r in results)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ENDPOINT_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in results:
            w.writerow(_flat_endpoint(r))
        return buf.getvalue()
    if fmt == "md":
        return endpoint_markdown(results)
    raise ValueError(fmt)


def host_lines(report: BenchReport) -> list[str]:
    h = report.host
    gpu = ", ".join(f"{g['name']} ({(g.get('vram_bytes') or 0) / 1024**3:.0f} GiB)" for g in h.gpus) or "none"
    ram = f"{h.ram_bytes / 1024**3:.1f} GiB" if h.ram_bytes else "?"
    lines = [
        f"host: {h.cpu_model}, {h.cpu_cores_physical} cores / {h.cpu_cores_logical} threads, RAM {ram}, GPU {gpu}",
        (
            f"      {h.os} (kernel {h.kernel}), Python {h.python}, llmctl {h.llmctl_version}, "
            f"llama-cpp-python {h.llama_cpp_python_version or '-'}"
        ),
    ]
    if h.simd:
        lines.append(f"      build features: {' '.join(h.simd)}")
    return lines


# -- comparisons ------------------------------------------------------------------------------------


def _ts(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def compare_by_test(c) -> tuple[list[str], list[list[str]], set[int]]:
    """compare-llama-bench's table: the swept settings, Model, Test, t/s of each run, then the speedup of
    each run against the baseline."""
    from llmctl.bench.compare import PRETTY, show_value, short_model

    others = [i for i in range(len(c.runs)) if i != c.baseline]
    order = [c.baseline, *others]
    head = [PRETTY.get(p, p) for p in c.shown] + ["Model", "Test"]
    head += [f"t/s {c.runs[i].label}" for i in order]
    head += ["Speedup"] if len(others) == 1 else [f"Speedup {c.runs[i].label}" for i in others]
    rows = []
    for row in c.rows:
        cells = [show_value(p, v) for p, v in row.params] + [short_model(row.model), row.test]
        cells += [_ts(row.ts[i]) for i in order]
        cells += [_ts(row.speedup(i, c.baseline)) for i in others]
        rows.append(cells)
    right = set(range(len(c.shown) + 2, len(head)))
    return head, rows, right


def compare_by_run(c) -> tuple[list[str], list[list[str]], set[int]]:
    """One row per run (a fleet: one file per host): the run, its host and the settings in which the runs
    differ, then each test's t/s with its speedup against the baseline run in parentheses."""
    from llmctl.bench.compare import PRETTY, show_value, short_model

    diffs = [(p, values) for p, values in c.differences if p != "cpu_info"]
    hosts = any((run.host or {}).get("hostname") for run in c.runs)
    head = ["Run"] + (["Host"] if hosts else []) + ["CPU"] + [PRETTY.get(p, p) for p, _ in diffs]
    models = {row.model for row in c.rows}
    for row in c.rows:
        name = row.label() if len(models) == 1 else f"{short_model(row.model)} {row.label()}"
        head.append(f"{name} t/s")
    order = [c.baseline, *(i for i in range(len(c.runs)) if i != c.baseline)]
    rows = []
    for i in order:
        run = c.runs[i]
        cells = [run.label] + ([str((run.host or {}).get("hostname") or "")] if hosts else [])
        cells.append(str(run.value("cpu_info") or ""))
        cells += [show_value(p, values[i]) if values[i] is not None else "" for p, values in diffs]
        for row in c.rows:
            x = row.speedup(i, c.baseline) if i != c.baseline else None
            cells.append(_ts(row.ts[i]) + (f" ({x:.2f}x)" if x is not None else ""))
        rows.append(cells)
    right = set(range(len(head) - len(c.rows), len(head)))
    return head, rows, right


def compare_csv(c) -> str:
    """One line per row and run: the run, the test and its settings, t/s, the baseline's t/s, the speedup."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "baseline", "model_type", "test", *c.shown, "avg_ts", "baseline_avg_ts", "speedup"])
    base = c.runs[c.baseline].label
    for row in c.rows:
        for i, run in enumerate(c.runs):
            if row.ts[i] is None:
                continue
            x = row.speedup(i, c.baseline)
            w.writerow(
                [
                    run.label,
                    base,
                    row.model,
                    row.test,
                    *(v for _, v in row.params),
                    row.ts[i],
                    "" if row.ts[c.baseline] is None else row.ts[c.baseline],
                    "" if x is None else x,
                ]
            )
    return buf.getvalue()


def render_compare(c, fmt: str, layout: str, gates: list[dict[str, Any]] | None = None) -> str:
    """md, csv or json (the table is the CLI's)."""
    if fmt == "json":
        doc = {"schema_version": JSON_FULL_VERSION, "kind": "bench-compare", **c.to_dict(), "gates": gates or []}
        return json.dumps(doc, indent=2, default=str) + "\n"
    if fmt == "csv":
        return compare_csv(c)
    if fmt == "md":
        head, rows, right = compare_by_test(c) if layout == "test" else compare_by_run(c)
        return pipe_table(head, rows, right)
    raise ValueError(fmt)


def difference_lines(c) -> list[str]:
    """What differs between the runs besides the swept settings: one line each, for stderr."""
    from llmctl.bench.compare import PRETTY, show_value

    lines = []
    for prop, values in c.differences:
        shown = ", ".join(
            f"{run.label}: {'(varies)' if v is None else show_value(prop, v)}" for run, v in zip(c.runs, values)
        )
        lines.append(f"runs differ in {PRETTY.get(prop, prop)}: {shown}")
    return lines
