"""Result records. Engine results carry llama-bench's field names so its tools can read them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmctl.bench import llamabench as LB
from llmctl.bench.params import name_of_test


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def sample_stddev(values: list[float]) -> float:
    """Sample standard deviation (Bessel's correction), 0 for fewer than two values: as llama-bench."""
    n = len(values)
    if n <= 1:
        return 0.0
    m = mean(values)
    return math.sqrt(max(sum((v - m) ** 2 for v in values) / (n - 1), 0.0))


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class HostInfo:
    cpu_model: str
    cpu_cores_physical: int | None
    cpu_cores_logical: int | None
    ram_bytes: int | None
    gpus: tuple[dict[str, Any], ...]  # {"name", "vram_bytes", "driver"} from nvidia-smi
    os: str
    kernel: str
    python: str
    llmctl_version: str
    llama_cpp_python_version: str | None
    simd: tuple[str, ...]  # CPU features the llama.cpp build uses (llama_print_system_info)
    system_info: str | None
    hostname: str = ""  # what `llmctl bench compare` calls a run of this host
    ggml_commit: str | None = None  # the build as ggml reports it (with -dirty when it was)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"] = [dict(g) for g in self.gpus]
        d["simd"] = list(self.simd)
        return d


@dataclass(frozen=True)
class EngineResult:
    """One llama-bench row: a test (ppN, tgN, ppN+tgM, at a depth) under one set of parameters."""

    build_commit: str
    build_number: int
    cpu_info: str
    gpu_info: str
    backends: str
    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    n_gpu_layers: int
    flash_attn: int  # llama.cpp's flash_attn_type: -1 auto, 0 off, 1 on
    n_ctx: int
    n_prompt: int
    n_gen: int
    n_depth: int
    repack: bool  # llama.cpp's extra weight buffers (use_extra_bufts)
    test_time: str
    samples_ns: tuple[int, ...]
    split_mode: str = "layer"
    load_mode: str = "auto"
    lazy_mode: str = "auto"

    @property
    def test(self) -> str:
        return name_of_test(self.n_prompt, self.n_gen, self.n_depth)

    @property
    def kind(self) -> str:
        return "pp" if self.n_gen == 0 else ("tg" if self.n_prompt == 0 else "pg")

    @property
    def samples_ts(self) -> list[float]:
        return LB.samples_ts(self.samples_ns, self.n_prompt + self.n_gen)

    @property
    def avg_ns(self) -> int:
        return LB.avg_ns(list(self.samples_ns))

    @property
    def stddev_ns(self) -> int:
        return LB.stdev_ns(list(self.samples_ns))

    @property
    def avg_ts(self) -> float:
        return LB.avg(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return LB.stdev(self.samples_ts)

    def key(self) -> tuple:
        """What a baseline row must share with this one to be compared."""
        return engine_key(self.row())

    def label(self) -> str:
        return (
            f"{self.test} (threads={self.n_threads}, ngl={self.n_gpu_layers}, "
            f"batch={self.n_batch}, fa={self.flash_attn})"
        )

    def row(self) -> dict[str, Any]:
        """llama-bench's row: every field of its schema, in its order, then samples_ns and samples_ts.
        The settings llmctl bench does not vary are llama-bench's defaults (llamabench.DEFAULTS)."""
        values = {**LB.DEFAULTS, **{f.name: getattr(self, f.name) for f in fields(self)}}
        values.update(avg_ns=self.avg_ns, stddev_ns=self.stddev_ns, avg_ts=self.avg_ts, stddev_ts=self.stddev_ts)
        out = {name: values[name] for name in LB.FIELDS}
        out["samples_ns"] = list(self.samples_ns)
        out["samples_ts"] = self.samples_ts
        return out

    def to_record(self) -> dict[str, Any]:
        """The row of `-o json-full`: llama-bench's row plus `test` and `n_ctx`."""
        return {**self.row(), "test": self.test, "n_ctx": self.n_ctx}


def engine_key(row: dict[str, Any]) -> tuple:
    """The key of a llama-bench row (typed, see llamabench.normalize): its parameters and its test."""
    return ("engine", *(row[p] for p in LB.PARAMETERS), *(row[t] for t in LB.TEST_FIELDS))


@dataclass(frozen=True)
class Latency:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        return cls(mean(values), percentile(values, 50), percentile(values, 90), percentile(values, 99))


@dataclass(frozen=True)
class EndpointResult:
    """One concurrency level against an OpenAI-compatible endpoint. Latencies in milliseconds."""

    url: str
    api: str  # "chat" or "completions"
    model: str
    concurrency: int
    n_requests: int
    n_ok: int
    n_failed: int
    n_gen: int  # max_tokens asked for
    prompt_tokens: int | None  # per request, from usage when the server reports it
    output_tokens: int  # all successful requests together
    duration_s: float
    ttft_ms: Latency
    itl_ms: Latency
    e2e_ms: Latency
    test_time: str
    errors: tuple[str, ...] = field(default=())

    @property
    def test(self) -> str:
        return f"c{self.concurrency}"

    @property
    def kind(self) -> str:
        return "tg"

    @property
    def avg_ts(self) -> float:
        """Output tokens per second, all streams together."""
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.n_ok / self.duration_s if self.duration_s > 0 else 0.0

    def key(self) -> tuple:
        return ("endpoint", self.test, self.n_gen)

    def label(self) -> str:
        return f"output t/s at concurrency {self.concurrency}"

    def to_record(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "api": self.api,
            "model": self.model,
            "test": self.test,
            "concurrency": self.concurrency,
            "n_requests": self.n_requests,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "n_gen": self.n_gen,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "duration_s": self.duration_s,
            "test_time": self.test_time,
            "avg_ts": self.avg_ts,
            "output_tokens_per_s": self.avg_ts,
            "requests_per_s": self.requests_per_s,
            "ttft_ms": asdict(self.ttft_ms),
            "itl_ms": asdict(self.itl_ms),
            "e2e_ms": asdict(self.e2e_ms),
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class BenchReport:
    mode: str  # "engine" or "endpoint"
    host: HostInfo
    results: tuple[Any, ...]  # EngineResult or EndpointResult
    model: str | None = None  # what the user named
    model_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "model_path": self.model_path,
            "host": self.host.to_dict(),
            "results": [r.to_record() for r in self.results],
        }
