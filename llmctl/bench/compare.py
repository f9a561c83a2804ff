"""`llmctl bench compare`: several runs side by side, as llama.cpp's compare-llama-bench prints them
(t/s of each run and the speedup against a baseline run), for builds, hosts or models alike.

Which rows are compared: compare-llama-bench joins two commits on every setting (threads, batch
sizes, flash attention, ...) and on the host. Here the runs may be different hosts, so the host is
never part of the match; and a setting that is the same in every row of each run but differs
between the runs (each host ran with its own core count; one run is Q4_K_M, the other Q8_0) is what
is being compared, not a reason to match nothing: it is reported as a difference. Settings that a run
sweeps (-t 1,2,4) are part of the match and shown as columns. `strict=True` matches on every
setting, as the `--baseline` gate does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmctl.bench import llamabench as LB
from llmctl.bench.gates import GateOutcome, minimum_outcome, regression_outcome
from llmctl.bench.readers import Run
from llmctl.errors import UsageError

# compare-llama-bench's column names (LLAMA_BENCH_PRETTY_NAMES), and ours for the rest
PRETTY = {
    "cpu_info": "CPU",
    "gpu_info": "GPU",
    "backends": "Backends",
    "n_gpu_layers": "GPU layers",
    "tensor_buft_overrides": "Tensor overrides",
    "model_filename": "File",
    "model_type": "Model",
    "model_size": "Model size [GiB]",
    "model_n_params": "Num. of par.",
    "n_batch": "Batch size",
    "n_ubatch": "Microbatch size",
    "embeddings": "Embeddings",
    "cpu_mask": "CPU mask",
    "cpu_strict": "CPU strict",
    "poll": "Poll",
    "n_threads": "Threads",
    "type_k": "K type",
    "type_v": "V type",
    "load_mode": "Load mode",
    "no_kv_offload": "NKVO",
    "split_mode": "Split mode",
    "main_gpu": "Main GPU",
    "tensor_split": "Tensor split",
    "flash_attn": "FlashAttention",
    "repack": "Repack",
    "n_cpu_moe": "CPU MoE",
    "fit_target": "Fit target",
    "fit_min_ctx": "Fit min ctx",
    "build_commit": "Build",
}
_MODEL_SUFFIX = {" - Small": "_S", " - Medium": "_M", " - Large": "_L"}  # as compare-llama-bench shortens


def short_model(name: str) -> str:
    for old, new in _MODEL_SUFFIX.items():
        name = name.replace(old, new)
    return name


@dataclass(frozen=True)
class CompareRow:
    """One test configuration and its mean t/s in each run (None: that run did not measure it)."""

    test: str
    kind: str  # pp, tg or pg
    model: str
    params: tuple[tuple[str, Any], ...]  # the swept settings that tell this row from the others
    ts: tuple[float | None, ...]

    def label(self) -> str:
        extra = ", ".join(f"{k}={show_value(k, v)}" for k, v in self.params)
        return f"{self.test} ({extra})" if extra else self.test

    def speedup(self, run: int, baseline: int) -> float | None:
        a, b = self.ts[baseline], self.ts[run]
        return b / a if a and b is not None else None


@dataclass(frozen=True)
class Comparison:
    runs: tuple[Run, ...]
    baseline: int
    strict: bool
    shown: tuple[str, ...]  # the settings shown as columns (they vary between rows)
    differences: tuple[tuple[str, tuple[Any, ...]], ...]  # (setting, its value in each run)
    rows: tuple[CompareRow, ...]

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    def matched(self) -> int:
        """How many (row, candidate run) pairs have a figure on both sides."""
        return sum(
            1
            for row in self.rows
            for i in range(len(self.runs))
            if i != self.baseline and row.speedup(i, self.baseline) is not None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.runs[self.baseline].label,
            "strict": self.strict,
            "runs": [
                {
                    "label": r.label,
                    "source": r.source,
                    "build_commit": r.value("build_commit"),
                    "cpu_info": r.value("cpu_info"),
                    "gpu_info": r.value("gpu_info"),
                    "hostname": (r.host or {}).get("hostname"),
                    "rows": len(r.rows),
                }
                for r in self.runs
            ],
            "differences": {k: list(v) for k, v in self.differences},
            "rows": [
                {
                    "test": row.test,
                    "model_type": row.model,
                    **dict(row.params),
                    "avg_ts": dict(zip(self.labels, row.ts)),
                    "speedup": {
                        lab: row.speedup(i, self.baseline) for i, lab in enumerate(self.labels) if i != self.baseline
                    },
                }
                for row in self.rows
            ],
        }


def show_value(prop: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _kind(n_prompt: int, n_gen: int) -> str:
    return "pp" if n_gen == 0 else ("tg" if n_prompt == 0 else "pg")


def compare(runs: list[Run], *, baseline: int = 0, strict: bool = False) -> Comparison:
    if len(runs) < 2:
        what = runs[0].source if runs else "nothing"
        raise UsageError(
            f"compare: {what} holds one run; give two or more result files (or a database with two builds)"
        )
    params = LB.PARAMETERS
    swept = [p for p in params if any(r.value(p) is None for r in runs)]
    per_run = {p: tuple(r.value(p) for r in runs) for p in params if p not in swept}
    differ = [p for p, values in per_run.items() if len(set(values)) > 1]
    key_props = list(params) if strict else swept

    def key(row: dict[str, Any]) -> tuple:
        return tuple(row[p] for p in key_props) + tuple(row[t] for t in LB.TEST_FIELDS)

    by_run: list[dict[tuple, float]] = []
    for run in runs:  # rows measured more than once in a run (a database of repeated runs): their mean
        sums: dict[tuple, list[float]] = {}
        for row in run.rows:
            sums.setdefault(key(row), []).append(row["avg_ts"])
        by_run.append({k: sum(v) / len(v) for k, v in sums.items()})
    order: dict[tuple, dict[str, Any]] = {}  # the baseline's rows first, in its order
    for i in [baseline, *(j for j in range(len(runs)) if j != baseline)]:
        for row in runs[i].rows:
            order.setdefault(key(row), row)

    shown = [p for p in key_props if p != "model_type" and len({k[key_props.index(p)] for k in order}) > 1]
    rows = []
    for key, first in order.items():
        n_prompt, n_gen, n_depth = key[-3:]
        rows.append(
            CompareRow(
                test=LB.test_name(n_prompt, n_gen, n_depth),
                kind=_kind(n_prompt, n_gen),
                model=str(first["model_type"]),
                params=tuple((p, key[key_props.index(p)]) for p in shown),
                ts=tuple(m.get(key) for m in by_run),
            )
        )
    host_diff = [h for h in ("build_commit", *LB.HOST_FIELDS) if len({r.value(h) for r in runs}) > 1]
    differences = tuple((p, tuple(r.value(p) for r in runs)) for p in [*host_diff, *differ])
    return Comparison(tuple(runs), baseline, strict, tuple(shown), differences, tuple(rows))


def check(
    c: Comparison, *, max_regression: float | None, min_pp: float | None, min_tg: float | None
) -> list[GateOutcome]:
    """The gates: each run's rows against the baseline run's (at most max_regression percent slower),
    and every run's pp / tg rows against the minimums. No row to compare at all fails."""
    out: list[GateOutcome] = []
    base = c.runs[c.baseline].label
    if max_regression is not None:
        for row in c.rows:
            for i, run in enumerate(c.runs):
                if i == c.baseline or row.ts[i] is None or not row.ts[c.baseline]:
                    continue
                out.append(
                    regression_outcome(
                        f"{row.label()} on {run.label}",
                        row.test,
                        row.ts[i],
                        row.ts[c.baseline],
                        max_regression,
                        f"{base} ",
                    )
                )
        if not c.matched():
            out.append(
                GateOutcome(
                    "--max-regression",
                    "-",
                    0.0,
                    0.0,
                    False,
                    f"no row of {', '.join(c.labels[: c.baseline] + c.labels[c.baseline + 1 :])} "
                    f"matches a row of the baseline {base}"
                    + (" (--strict: same model and settings)" if c.strict else ""),
                )
            )
    for row in c.rows:
        for i, run in enumerate(c.runs):
            if row.ts[i] is None:
                continue
            for kind, flag, limit in (("pp", "--min-pp", min_pp), ("tg", "--min-tg", min_tg)):
                if limit is not None and row.kind == kind:
                    out.append(minimum_outcome(f"{row.label()} on {run.label}", row.test, row.ts[i], flag, limit))
    return out
