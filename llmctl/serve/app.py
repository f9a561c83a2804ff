"""The HTTP app: Starlette routes behind one pure-ASGI gate, sharing one ServerContext.

    context.py    ServerContext: what the gate, the routes and the streams share (on `app.state.ctx`)
    gate.py       the admission gate: access log, API key (401), rate limit (429), body size (413),
                  stream slots (503 + Retry-After)
    routes.py     /health, /ready, /metrics, /v1/*: validate (protocol.py), submit, relay
    streaming.py  SSE relay of a job's chunks; the watch that cancels a job when its client leaves
    responses.py  OpenAI's response shapes: error bodies, SSE events, chunks, model cards
    protocol.py   OpenAI's request bodies, validated, -> GenerationRequest

create_app() wires them: the model pool (or one engine), the metrics' gauges and the pool's hooks, the router (upstream
fallback and the usage ledger), the Starlette app with its exception handlers, and the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from llmctl.serve import protocol
from llmctl.serve.context import Fallback, ServerContext
from llmctl.serve.engine import Job, Scheduler
from llmctl.serve.gate import Gate, json_access_log
from llmctl.serve.metrics import Metrics
from llmctl.serve.pool import ModelPool
from llmctl.serve.routes import EXCEPTION_HANDLERS, ROUTES, ready_to_serve
from llmctl.serve.security import RateLimiter
from llmctl.serve.settings import ServeSettings


def create_app(
    settings: ServeSettings,
    engine: Scheduler | ModelPool,
    *,
    metrics: Metrics | None = None,
    access_log: Callable[[dict], None] = json_access_log,
    router: Fallback | None = None,
) -> tuple[Callable, ServerContext]:
    """The ASGI app (gate + routes) and its shared context.

    `engine`: the server's ModelPool (llmctl.serve.pool: several models, loaded on demand), or
    one Scheduler its caller starts and stops (tests, benchmarks: adopted as a pool of one).

    `router` (a Fallback: llmctl.upstreams.router.Router, wired in by the CLI) takes a generation that failed
    locally before anything was sent (EngineError 5xx: queue full, queue timeout, loading, engine
    error, no room for the model) to an upstream, and sees every finished request's access record
    (the usage ledger)."""
    if isinstance(engine, ModelPool):
        pool, preloaded = engine, False
    else:
        pool, preloaded = ModelPool.adopt(settings, engine), True
    metrics = metrics or Metrics(settings.model_name)
    metrics.add_models(list(pool.entries))
    if router is not None:
        router.attach(metrics.registry)
        log_only = access_log

        def access_log(record: dict) -> None:
            try:
                log_only(record)
            finally:
                router.observe(record)

    limits = settings.limits
    ctx = ServerContext(
        settings=settings,
        pool=pool,
        metrics=metrics,
        limiter=RateLimiter(limits.rate_limit_rpm, limits.rate_limit_burst),
        access_log=access_log,
        bounds=protocol.Limits.of(settings),
        router=router,
        preloaded=preloaded,
    )

    def job_done(model: str, job: Job) -> None:
        if job.stats.cancelled:
            metrics.cancelled.inc()
        if job.stats.started is not None and job.request.endpoint != "embedding":
            metrics.observe_job(job.request.endpoint, job.stats)
        if job.stats.started is not None:
            metrics.observe_model_job(model, job.stats)

    pool.on_job_done = job_done
    chained = pool.on_event

    def model_event(event: str, model: str, **fields: Any) -> None:
        metrics.observe_model_event(event, model, **fields)
        if chained is not None:
            chained(event, model, **fields)

    pool.on_event = model_event
    metrics.processing.set_function(lambda: sum(e.running for e in pool.engines()))
    metrics.deferred.set_function(lambda: sum(e.waiting for e in pool.engines()))
    metrics.ready.set_function(lambda: 1.0 if ready_to_serve(ctx) and not ctx.shutting_down else 0.0)

    app = Starlette(routes=list(ROUTES), exception_handlers=dict(EXCEPTION_HANDLERS))
    app.state.ctx = ctx
    return Gate(app, ctx), ctx
