"""Prometheus metrics of one server, in its own registry.

Every name passes `promtool check metrics` (no colons: Prometheus keeps those for recording rules).
llama.cpp's server (`llama-server --metrics`) names its metrics `llamacpp:*`; the rules that
`llmctl monitoring render` writes record those names from these, so dashboards built for
llama-server keep working:

    llmctl_prompt_tokens_total                        llamacpp:prompt_tokens_total
    llmctl_completion_tokens_total                    llamacpp:tokens_predicted_total
    llmctl_prompt_throughput_tokens_per_second        llamacpp:prompt_tokens_seconds
    llmctl_generation_throughput_tokens_per_second    llamacpp:predicted_tokens_seconds
    llmctl_requests_processing                        llamacpp:requests_processing   (busy slots)
    llmctl_requests_deferred                          llamacpp:requests_deferred
    llmctl_kv_cache_usage_ratio                       llamacpp:kv_cache_usage_ratio
    llmctl_decode_calls_total                         llamacpp:n_decode_total
    llmctl_batch_sequences (histogram: _sum, _count)  llamacpp:n_busy_slots_per_decode (sum / count)

The engine's own (no llama-server counterpart): llmctl_batch_tokens (tokens per llama_decode) and
llmctl_prompt_tokens_cached_total (prompt tokens served from a slot's KV cache, not decoded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmctl.serve.engine import JobStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
BATCH_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_SEQ_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "llmctl_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "llmctl_request_duration_seconds",
            "HTTP request latency (to the last byte)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmctl_time_to_first_token_seconds",
            "From the request's arrival at the engine to its first generated token",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tps = Histogram(
            "llmctl_generation_tokens_per_second",
            "Per-request decode speed",
            ["endpoint"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "llmctl_queue_wait_seconds", "Time a request waited for the model", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("llmctl_prompt_tokens", "Prompt tokens processed", registry=r)
        self.predicted_tokens = Counter("llmctl_completion_tokens", "Generated tokens", registry=r)
        self.prompt_tps = Gauge(
            "llmctl_prompt_throughput_tokens_per_second", "Average prompt throughput in tokens/s", registry=r
        )
        self.predicted_tps = Gauge(
            "llmctl_generation_throughput_tokens_per_second", "Average generation throughput in tokens/s", registry=r
        )
        self.processing = Gauge("llmctl_requests_processing", "Requests the model is working on", registry=r)
        self.deferred = Gauge("llmctl_requests_deferred", "Requests waiting for the model", registry=r)
        self.in_flight = Gauge("llmctl_requests_in_flight", "HTTP requests being served", registry=r)
        self.streams = Gauge("llmctl_streams_open", "Streaming requests admitted (waiting or sending)", registry=r)
        self.rate_limited = Counter("llmctl_rate_limited", "Requests refused by the rate limiter (429)", registry=r)
        self.auth_failures = Counter(
            "llmctl_auth_failures", "Requests refused for a missing or wrong key (401)", registry=r
        )
        self.cancelled = Counter(
            "llmctl_generations_cancelled", "Generations stopped because the client left", registry=r
        )
        self.load_seconds = Gauge("llmctl_model_load_seconds", "Time it took to load the model", registry=r)
        self.info = Gauge("llmctl_model_info", "The served model", ["model"], registry=r)
        self.info.labels(model=model).set(1)
        self.ready = Gauge("llmctl_ready", "1 when the model is loaded and serving", registry=r)
        self.gpu_offload: Any = None  # a Gauge, created by set_gpu_offload, for GPU services
        self._batch: tuple[Callable[[Any], None], Callable[[int], None]] | None = None  # attach_engine's hooks
        self._engines: Callable[[], list[Any]] = list
        self._prompt_total = 0
        self._prompt_seconds = 0.0
        self._gen_total = 0
        self._gen_seconds = 0.0

    def add_models(self, names: list[str]) -> None:
        """Per-model series, with a `model` label (the series above are the server's totals)."""
        from prometheus_client import Counter, Gauge

        r = self.registry
        self.model_loaded = Gauge("llmctl_model_loaded", "1 while the model is loaded", ["model"], registry=r)
        self.model_loads = Counter("llmctl_model_loads", "Times the model was loaded", ["model"], registry=r)
        self.model_unloads = Counter(
            "llmctl_model_unloads",
            "Times the model was unloaded: room (for another model), keep_alive (idle), request (POST /models/unload)",
            ["model", "reason"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "llmctl_model_load_failures", "Loads of the model that failed", ["model"], registry=r
        )
        self.model_last_load_seconds = Gauge(
            "llmctl_model_last_load_seconds", "How long the model's last load took", ["model"], registry=r
        )
        self.model_requests = Counter("llmctl_model_requests", "Generations the model ran", ["model"], registry=r)
        self.model_prompt_tokens = Counter(
            "llmctl_model_prompt_tokens", "Prompt tokens the model processed", ["model"], registry=r
        )
        self.model_completion_tokens = Counter(
            "llmctl_model_completion_tokens", "Tokens the model generated", ["model"], registry=r
        )
        for name in names:
            self.info.labels(model=name).set(1)
            self.model_loaded.labels(model=name).set(0)
            self.model_loads.labels(model=name)
            self.model_requests.labels(model=name)
            self.model_prompt_tokens.labels(model=name)
            self.model_completion_tokens.labels(model=name)

    def observe_model_job(self, model: str, stats: JobStats) -> None:
        self.model_requests.labels(model=model).inc()
        self.model_prompt_tokens.labels(model=model).inc(stats.prompt_tokens)
        self.model_completion_tokens.labels(model=model).inc(stats.completion_tokens)

    def observe_model_event(self, event: str, model: str, **fields: object) -> None:
        if event == "model_loaded":
            self.model_loaded.labels(model=model).set(1)
            self.model_loads.labels(model=model).inc()
            seconds = fields.get("load_seconds")
            if isinstance(seconds, (int, float)):
                self.model_last_load_seconds.labels(model=model).set(seconds)
        elif event == "model_unloaded":
            self.model_loaded.labels(model=model).set(0)
            self.model_unloads.labels(model=model, reason=str(fields.get("reason", "room"))).inc()
        elif event == "model_load_failed":
            self.model_load_failures.labels(model=model).inc()

    def observe_job(self, endpoint: str, stats: JobStats) -> None:
        if stats.queued_s is not None:
            self.queue_wait.observe(stats.queued_s)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.predicted_tokens.inc(stats.completion_tokens)
        if stats.ttft_s is not None:
            self.ttft.labels(endpoint=endpoint).observe(stats.ttft_s)
        prompt_s = stats.prompt_s
        if prompt_s and stats.prompt_tokens:
            self._prompt_total += stats.prompt_tokens
            self._prompt_seconds += prompt_s
            self.prompt_tps.set(self._prompt_total / self._prompt_seconds)
        gen_s = stats.generation_s
        tps = stats.tokens_per_s
        if tps is not None and gen_s:
            self.tps.labels(endpoint=endpoint).observe(tps)
            self._gen_total += stats.completion_tokens - 1
            self._gen_seconds += gen_s
            self.predicted_tps.set(self._gen_total / self._gen_seconds)

    def attach_engine(self, engine: Any, engines: Callable[[], list[Any]] | None = None) -> None:
        """The batching engine's own series: per-step batch sizes, decode calls, cache reuse, KV use.
        Its callbacks run on the engine's worker thread (prometheus_client is thread-safe).
        Several models: called for each engine the pool loads; `engines` lists the live ones (the
        KV usage is their mean), and the series are the server's totals."""
        if self._batch is None:
            from prometheus_client import Counter, Gauge, Histogram

            r = self.registry
            tokens = Histogram(
                "llmctl_batch_tokens",
                "Tokens in each llama_decode (prompt chunks and next tokens)",
                buckets=BATCH_TOKEN_BUCKETS,
                registry=r,
            )
            seqs = Histogram(
                "llmctl_batch_sequences", "Requests (slots) in each llama_decode", buckets=BATCH_SEQ_BUCKETS, registry=r
            )
            decodes = Counter("llmctl_decode_calls", "llama_decode calls", registry=r)
            cached = Counter(
                "llmctl_prompt_tokens_cached", "Prompt tokens served from a slot's KV cache, not decoded", registry=r
            )
            Gauge(
                "llmctl_kv_cache_usage_ratio",
                "Share of the KV cache cells holding tokens (busy and idle slots)",
                registry=r,
            ).set_function(self._kv_usage)
            Gauge("llmctl_slots", "Slots: requests the engine decodes together", registry=r).set(engine.parallel)

            def on_step(step: Any) -> None:
                tokens.observe(step.tokens)
                seqs.observe(step.sequences)
                decodes.inc()

            self._batch = (on_step, cached.inc)
        self._engines = engines or (lambda: [engine])
        engine.on_step, engine.on_cached = self._batch

    def _kv_usage(self) -> float:
        usages = [e.kv_usage for e in self._engines() if hasattr(e, "kv_usage")]
        return sum(usages) / len(usages) if usages else 0.0

    def set_gpu_offload(self, active: bool) -> None:
        """GPU services only (a CPU service exports no such series): 1 when llama.cpp can offload
        layers to a GPU device, 0 when the model runs on the CPU although a GPU was asked for."""
        if self.gpu_offload is None:
            from prometheus_client import Gauge

            self.gpu_offload = Gauge(
                "llmctl_gpu_offload",
                "GPU services: 1 when llama.cpp offloads layers to a GPU device, 0 when the model runs on the CPU",
                registry=self.registry,
            )
        self.gpu_offload.set(1 if active else 0)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
