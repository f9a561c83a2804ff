"""llama.cpp's llama-bench output schema, in one place: its fields in its order, their types, and the
text of its `-o json`, `jsonl`, `csv`, `sql` and `md` printers, so that llama.cpp's own tools
(`scripts/compare-llama-bench.py`, `sqlite3 llama-bench.sqlite`) read what `llmctl bench` writes.

The schema matched is that of `tools/llama-bench/llama-bench.cpp` in the llama.cpp that
llama-cpp-python 0.3.36 vendors (llama.cpp commit 0c1e570, October 2026): 42 fields, from
`build_commit` to `stddev_ts`, plus `samples_ns` and `samples_ts` in JSON.

Also the reverse: `normalize()` reads a row from any of these formats (or from llmctl's
`-o json-full`, or an older llama-bench with fewer fields) into typed values.

Deviations from llama-bench, all where llama-bench writes something broken: SQL string values have
their single quotes doubled (llama-bench writes them as they are, which breaks the INSERT); JSON
strings keep non-ASCII characters as UTF-8 (llama-bench turns each byte >= 0x80 into a broken
`\\uffffffXX` escape); and the statistics use Python integers where llama-bench's 64-bit unsigned
arithmetic overflows (`stddev_ns` of samples longer than about 1.9 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA_VERSION = "llama.cpp 0c1e570 (vendored by llama-cpp-python 0.3.36)"

FIELDS: tuple[str, ...] = (
    "build_commit",
    "build_number",
    "cpu_info",
    "gpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "n_cpu_moe",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "flash_attn",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "load_mode",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
)

_INT = frozenset(
    {
        "build_number",
        "n_batch",
        "n_ubatch",
        "n_threads",
        "poll",
        "model_size",
        "model_n_params",
        "n_gpu_layers",
        "main_gpu",
        "n_prompt",
        "n_gen",
        "n_depth",
        "avg_ns",
        "stddev_ns",
        "no_op_offload",
        "n_cpu_moe",
        "fit_target",
        "fit_min_ctx",
        "flash_attn",
    }
)
_BOOL = frozenset({"no_kv_offload", "cpu_strict", "embeddings", "no_host", "repack"})
_FLOAT = frozenset({"avg_ts", "stddev_ts"})


def field_type(field: str) -> str:
    """llama-bench's test::get_field_type: STRING, BOOL, INT or FLOAT."""
    if field in _INT:
        return "INT"
    if field in _BOOL:
        return "BOOL"
    if field in _FLOAT:
        return "FLOAT"
    return "STRING"


# What llama-bench records for the settings llmctl bench does not vary (llama-bench's defaults, on a
# CPU or single-GPU host); also what an older llama-bench that lacked a field meant by its absence.
DEFAULTS: dict[str, Any] = {
    "build_commit": "unknown",
    "cpu_info": "",
    "model_type": "",
    "n_threads": 0,  # unknown, when missing
    "build_number": 0,
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "",
    "model_size": 0,
    "model_n_params": 0,
    "n_batch": 2048,
    "n_ubatch": 512,
    "cpu_mask": "0x0",
    "cpu_strict": False,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": False,
    "flash_attn": -1,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": False,
    "no_op_offload": 0,
    "no_host": False,
    "repack": True,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 0,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "",
    "avg_ns": 0,
    "stddev_ns": 0,
    "stddev_ts": 0.0,
}

# The properties that tell one test configuration from another (compare-llama-bench's key, without the
# host and the build: those are what `llmctl bench compare` compares), plus the test itself.
PARAMETERS: tuple[str, ...] = (
    "model_type",
    "n_gpu_layers",
    "n_cpu_moe",
    "tensor_buft_overrides",
    "n_batch",
    "n_ubatch",
    "embeddings",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "n_threads",
    "type_k",
    "type_v",
    "load_mode",
    "no_kv_offload",
    "split_mode",
    "main_gpu",
    "tensor_split",
    "flash_attn",
    "repack",
    "fit_target",
    "fit_min_ctx",
)
TEST_FIELDS = ("n_prompt", "n_gen", "n_depth")
HOST_FIELDS = ("cpu_info", "gpu_info", "backends")


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    from llmctl.bench.params import name_of_test

    return name_of_test(n_prompt, n_gen, n_depth)


# -- statistics, as llama-bench computes them ---------------------------------------------------------


def samples_ts(samples_ns: Iterable[int], n_tokens: int) -> list[float]:
    return [1e9 * n_tokens / t for t in samples_ns]


def avg(values: list[float]) -> float:
    """std::accumulate / size: a plain left-to-right sum (Python 3.12's sum() compensates; this does not)."""
    if not values:
        return 0.0
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


def stdev(values: list[float]) -> float:
    """llama-bench's one-pass sample standard deviation: sqrt(sum(x^2)/(n-1) - mean^2 * n/(n-1))."""
    n = len(values)
    if n <= 1:
        return 0.0
    mean = avg(values)
    sq = 0.0
    for v in values:
        sq += v * v
    return math.sqrt(max(sq / (n - 1) - mean * mean * n / (n - 1), 0.0))


def avg_ns(samples: list[int]) -> int:
    return sum(samples) // len(samples) if samples else 0


def stdev_ns(samples: list[int]) -> int:
    """The same formula in integers, as llama-bench's uint64_t (without its overflow)."""
    n = len(samples)
    if n <= 1:
        return 0
    mean = avg_ns(samples)
    sq = sum(v * v for v in samples)
    return int(math.sqrt(max(sq // (n - 1) - mean * mean * n // (n - 1), 0)))


# -- values -------------------------------------------------------------------------------------------


def value_string(field: str, value: Any) -> str:
    """llama-bench's test::get_values(): std::to_string of each value (bools as 0/1, floats as %f)."""
    kind = field_type(field)
    if kind == "BOOL" or isinstance(value, bool):
        return "1" if value else "0"
    if kind == "FLOAT":
        return f"{float(value):f}"
    if kind == "INT":
        return str(int(value))
    return str(value)


def _json_string(value: str) -> str:
    out = []
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) <= 0x1F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_value(field: str, text: str) -> str:
    kind = field_type(field)
    if kind == "STRING":
        return _json_string(text)
    if kind == "BOOL":
        return "false" if text == "0" else "true"
    return text


def _g(value: float) -> str:
    """C++ `ostream << double` (6 significant digits, %g)."""
    return f"{value:g}"


def _strings(row: Mapping[str, Any]) -> list[str]:
    return [value_string(f, row[f]) for f in FIELDS]


def to_json(rows: list[Mapping[str, Any]]) -> str:
    """llama-bench's `-o json`: an array of objects, every field, then samples_ns and samples_ts."""
    parts = []
    for row in rows:
        lines = [f'    "{f}": {_json_value(f, v)},' for f, v in zip(FIELDS, _strings(row))]
        lines.append(f'    "samples_ns": [ {", ".join(str(int(v)) for v in row["samples_ns"])} ],')
        lines.append(f'    "samples_ts": [ {", ".join(_g(v) for v in row["samples_ts"])} ]')
        parts.append("  {\n" + "\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(parts) + "\n]\n"


def to_jsonl(rows: list[Mapping[str, Any]]) -> str:
    """llama-bench's `-o jsonl`: one object per line, in its spacing."""
    out = []
    for row in rows:
        fields = "".join(f'"{f}": {_json_value(f, v)}, ' for f, v in zip(FIELDS, _strings(row)))
        out.append(
            "{"
            + fields
            + f'"samples_ns": [ {", ".join(str(int(v)) for v in row["samples_ns"])} ],'
            + f'"samples_ts": [ {", ".join(_g(v) for v in row["samples_ts"])} ]'
            + "}\n"
        )
    return "".join(out)


def to_csv(rows: list[Mapping[str, Any]]) -> str:
    """llama-bench's `-o csv`: the header bare, every value quoted (a quote doubled)."""
    lines = [",".join(FIELDS)]
    for row in rows:
        lines.append(",".join('"' + s.replace('"', '""') + '"' for s in _strings(row)))
    return "\n".join(lines) + "\n"


def _sql_type(field: str) -> str:
    return {"STRING": "TEXT", "BOOL": "INTEGER", "INT": "INTEGER", "FLOAT": "REAL"}[field_type(field)]


def to_sql(rows: list[Mapping[str, Any]]) -> str:
    """llama-bench's `-o sql`: CREATE TABLE IF NOT EXISTS llama_bench, then one INSERT per row, for
    `| sqlite3 llama-bench.sqlite`."""
    head = ["CREATE TABLE IF NOT EXISTS llama_bench ("]
    for i, f in enumerate(FIELDS):
        head.append(f"  {f} {_sql_type(f)}{',' if i < len(FIELDS) - 1 else ''}")
    text = "\n".join(head) + "\n);\n\n"
    cols = ", ".join(FIELDS)
    for row in rows:
        values = ", ".join("'" + s.replace("'", "''") + "'" for s in _strings(row))
        text += f"INSERT INTO llama_bench ({cols}) VALUES ({values});\n"
    return text


# -- markdown, as llama-bench's markdown_printer ------------------------------------------------------

_MD_WIDTH = {
    "model": -30,
    "t/s": 20,
    "size": 10,
    "params": 10,
    "n_gpu_layers": 3,
    "n_threads": 7,
    "n_batch": 7,
    "n_ubatch": 8,
    "type_k": 6,
    "type_v": 6,
    "split_mode": 6,
    "load_mode": 10,
    "flash_attn": 3,
    "devices": -12,
    "test": 15,
    "no_op_offload": 4,
    "no_host": 4,
    "repack": 3,
    "backend": -10,
}
_MD_NAME = {"n_gpu_layers": "ngl", "n_threads": "threads", "flash_attn": "fa", "repack": "rpk", "n_depth": "depth"}


def size_str(n: int) -> str:
    if n < 1024**3:
        return f"{n / 1024 / 1024:.2f} MiB"
    return f"{n / 1024**3:.2f} GiB"


def params_str(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def md_fields(rows: list[Mapping[str, Any]], *, repack_default: bool = True) -> list[str]:
    """The columns llama-bench's markdown shows: model, size, params, backend, then each parameter that
    differs from llama-bench's default or takes several values, then test and t/s."""

    def shown(field: str, default: Any) -> bool:
        values = {r[field] for r in rows}
        return len(values) > 1 or values != {default}

    fields = ["model", "size", "params", "backend"]
    cpu = all(any(b in str(r["backends"]) for b in ("CPU", "BLAS", "ZenDNN")) for r in rows)
    if not cpu:
        fields.append("n_gpu_layers")
    fields.append("n_threads")  # llama-bench: always on a CPU backend, else when not its default
    for field in ("n_batch", "n_ubatch", "type_k", "type_v", "no_kv_offload", "flash_attn"):
        if shown(field, DEFAULTS[field]):
            fields.append(field)
    if shown("repack", repack_default):
        fields.append("repack")
    return fields + ["test", "t/s"]


def md_cell(field: str, row: Mapping[str, Any]) -> str:
    if field == "model":
        return str(row["model_type"])
    if field == "size":
        return size_str(int(row["model_size"]))
    if field == "params":
        return params_str(int(row["model_n_params"]))
    if field == "backend":
        return str(row["backends"])
    if field == "test":
        return test_name(int(row["n_prompt"]), int(row["n_gen"]), int(row["n_depth"]))
    if field == "t/s":
        return f"{float(row['avg_ts']):.2f} ± {float(row['stddev_ts']):.2f}"
    return value_string(field, row[field])


def md_header(field: str) -> str:
    return _MD_NAME.get(field, field)


def to_markdown(rows: list[Mapping[str, Any]], *, repack_default: bool = True) -> str:
    """llama-bench's `-o md` table, with its `build: <commit> (<number>)` line."""
    fields = md_fields(rows, repack_default=repack_default)

    def width(field: str) -> int:
        if field in _MD_WIDTH:
            return _MD_WIDTH[field]
        w = max(len(field), 10)
        return -w if field_type(field) == "STRING" else w

    def cell(text: str, w: int) -> str:
        return f" {text:{'<' if w < 0 else '>'}{abs(w)}} |"

    lines = [
        "|" + "".join(cell(md_header(f), width(f)) for f in fields),
        "|" + "".join(f" {'-' * (abs(width(f)) - 1)}{':' if width(f) > 0 else '-'} |" for f in fields),
    ]
    for row in rows:
        lines.append("|" + "".join(cell(md_cell(f, row), width(f)) for f in fields))
    commit = rows[0]["build_commit"] if rows else "unknown"
    number = rows[0]["build_number"] if rows else 0
    return "\n".join(lines) + f"\n\nbuild: {commit} ({number})\n"


# -- reading ------------------------------------------------------------------------------------------


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on", "enabled"):
            return True
        if v in ("0", "false", "no", "off", "disabled", ""):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def _to_int(field: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if field == "flash_attn" and isinstance(value, str) and value.strip().lower() in ("true", "false", "auto"):
        return {"true": 1, "false": 0, "auto": -1}[value.strip().lower()]
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    return int(str(value).strip())


def normalize(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A row as read from a file (JSON types, CSV or SQL strings) -> typed values for every field.
    Needs avg_ts and the test (n_prompt and n_gen); missing settings take llama-bench's defaults.
    Raises ValueError (with the field) on a value of the wrong type."""
    if "avg_ts" not in rec:
        raise ValueError("no avg_ts")
    if "n_prompt" not in rec or "n_gen" not in rec:
        raise ValueError("no n_prompt/n_gen")
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = rec.get(field, DEFAULTS.get(field, ""))
        if value is None:
            value = DEFAULTS.get(field, "")
        kind = field_type(field)
        try:
            if kind == "INT":
                out[field] = _to_int(field, value)
            elif kind == "BOOL":
                out[field] = _to_bool(value)
            elif kind == "FLOAT":
                out[field] = float(value)
                if not math.isfinite(out[field]):
                    raise ValueError("not finite")
            else:
                out[field] = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"{field}: {value!r} is not {kind.lower()}") from None
    return out
