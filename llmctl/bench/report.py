"""Rendering: the people's table, and -o json|jsonl|csv|md with llama-bench's field names.

Pure functions returning text; the CLI decides where it goes.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from llmctl.bench.results import BenchReport, EndpointResult, EngineResult

FORMATS = ("table", "json", "jsonl", "csv", "md")

# llama-bench's CSV/JSON fields, in its order (plus ours at the end: n_ctx, repack, test)
ENGINE_FIELDS = (
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
    "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode", "main_gpu", "no_kv_offload", "flash_attn",
    "embeddings", "no_op_offload", "no_host", "repack", "n_prompt", "n_gen", "n_depth", "test_time",
    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "n_ctx", "test",
)
ENDPOINT_FIELDS = (
    "url", "api", "model", "test", "concurrency", "n_requests", "n_ok", "n_failed", "n_gen", "prompt_tokens",
    "output_tokens", "duration_s", "test_time", "output_tokens_per_s", "requests_per_s",
    "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99",
    "itl_ms_mean", "itl_ms_p50", "itl_ms_p90", "itl_ms_p99",
    "e2e_ms_mean", "e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p99",
)


def size_str(n: int) -> str:
    if n < 1024**3:
        return f"{n / 1024 / 1024:.2f} MiB"
    return f"{n / 1024**3:.2f} GiB"


def params_str(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def ts_str(r: EngineResult) -> str:
    return f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}"


# -- engine -----------------------------------------------------------------------------------------


def _varying(results: list[EngineResult], attr: str) -> bool:
    return len({getattr(r, attr) for r in results}) > 1


def engine_columns(results: list[EngineResult]) -> list[tuple[str, Any]]:
    """llama-bench's markdown columns: model, size, params, backend, [ngl], threads, [...], test, t/s."""
    cols: list[tuple[str, Any]] = [
        ("model", lambda r: r.model_type),
        ("size", lambda r: size_str(r.model_size)),
        ("params", lambda r: params_str(r.model_n_params)),
        ("backend", lambda r: r.backends),
    ]
    cpu_only = all(r.backends in ("CPU", "BLAS") for r in results)
    if not cpu_only or _varying(results, "n_gpu_layers"):
        cols.append(("ngl", lambda r: str(r.n_gpu_layers)))
    cols.append(("threads", lambda r: str(r.n_threads)))
    if _varying(results, "n_batch") or any(r.n_batch != 2048 for r in results):
        cols.append(("n_batch", lambda r: str(r.n_batch)))
    if _varying(results, "flash_attn") or any(r.flash_attn for r in results):
        cols.append(("fa", lambda r: str(int(r.flash_attn))))
    cols.append(("test", lambda r: r.test))
    cols.append(("t/s", ts_str))
    return cols


def engine_table(results: list[EngineResult]) -> tuple[list[str], list[list[str]]]:
    cols = engine_columns(results)
    return [c for c, _ in cols], [[f(r) for _, f in cols] for r in results]


def engine_markdown(results: list[EngineResult]) -> str:
    """llama-bench's `-o md` table, with its `build: <commit> (<number>)` footer."""
    cols = engine_columns(results)
    widths = {"model": -30, "size": 10, "params": 10, "backend": -10, "ngl": 3, "threads": 7, "n_batch": 7,
              "fa": 3, "test": 15, "t/s": 20}
    head = "|" + "".join(f" {name:{'<' if widths[name] < 0 else '>'}{abs(widths[name])}} |" for name, _ in cols)
    rule = "|" + "".join(f" {'-' * (abs(widths[n]) - 1)}{':' if widths[n] > 0 else '-'} |" for n, _ in cols)
    lines = [head, rule]
    for r in results:
        cells = []
        for name, f in cols:
            w = widths[name]
            cells.append(f" {f(r):{'<' if w < 0 else '>'}{abs(w)}} |")
        lines.append("|" + "".join(cells))
    commit = results[0].build_commit if results else "unknown"
    number = results[0].build_number if results else 0
    return "\n".join(lines) + f"\n\nbuild: {commit} ({number})\n"


# -- endpoint ---------------------------------------------------------------------------------------


def _flat_endpoint(r: EndpointResult) -> dict[str, Any]:
    rec = r.to_record()
    out = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        for stat, value in rec[name].items():
            out[f"{name}_{stat}"] = value
    return out


def endpoint_table(results: list[EndpointResult]) -> tuple[list[str], list[list[str]]]:
    cols = ["test", "requests", "ok", "TTFT ms mean/p50/p90/p99", "ITL ms mean/p50/p90/p99",
            "E2E ms mean/p50/p90/p99", "out t/s", "req/s"]

    def lat(x) -> str:
        return f"{x.mean:.1f}/{x.p50:.1f}/{x.p90:.1f}/{x.p99:.1f}"

    rows = [[r.test, str(r.n_requests), str(r.n_ok), lat(r.ttft_ms), lat(r.itl_ms), lat(r.e2e_ms),
             f"{r.avg_ts:.2f}", f"{r.requests_per_s:.2f}"] for r in results]
    return cols, rows


def endpoint_markdown(results: list[EndpointResult]) -> str:
    cols, rows = endpoint_table(results)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if results:
        lines += ["", f"endpoint: {results[0].url} ({results[0].api}, model {results[0].model})"]
    return "\n".join(lines) + "\n"


# -- formats ----------------------------------------------------------------------------------------


def render(report: BenchReport, fmt: str, gates: list[dict[str, Any]] | None = None) -> str:
    """Everything but `table` (which the CLI draws with rich on a terminal)."""
    results = list(report.results)
    engine = report.mode == "engine"
    if fmt == "json":
        doc = {"schema_version": 1, "kind": "bench", **report.to_dict(), "gates": gates or []}
        return json.dumps(doc, indent=2, default=str) + "\n"
    if fmt == "jsonl":
        # one line per result (llama-bench's jsonl), each with the host record beside it
        host = report.host.to_dict()
        return "".join(json.dumps({**r.to_record(), "host": host}, default=str) + "\n" for r in results)
    if fmt == "csv":
        buf = io.StringIO()
        fields = ENGINE_FIELDS if engine else ENDPOINT_FIELDS
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in results:
            w.writerow(r.to_record() if engine else _flat_endpoint(r))
        return buf.getvalue()
    if fmt == "md":
        return engine_markdown(results) if engine else endpoint_markdown(results)
    raise ValueError(fmt)


def host_lines(report: BenchReport) -> list[str]:
    h = report.host
    gpu = ", ".join(f"{g['name']} ({(g.get('vram_bytes') or 0) / 1024**3:.0f} GiB)" for g in h.gpus) or "none"
    ram = f"{h.ram_bytes / 1024**3:.1f} GiB" if h.ram_bytes else "?"
    lines = [
        f"host: {h.cpu_model}, {h.cpu_cores_physical} cores / {h.cpu_cores_logical} threads, RAM {ram}, GPU {gpu}",
        f"      {h.os} (kernel {h.kernel}), Python {h.python}, llmctl {h.llmctl_version}, "
        f"llama-cpp-python {h.llama_cpp_python_version or '-'}",
    ]
    if h.simd:
        lines.append(f"      build features: {' '.join(h.simd)}")
    return lines
