"""The HTTP app: Starlette routes behind one pure-ASGI gate, sharing one ServerContext.

    context.py    ServerContext: what the gate, the routes and the streams share (on `app.state.ctx`)
    gate.py       the admission gate: access log, API key (401), rate limit (429), body size (413),
                  stream slots (503 + Retry-After)
    routes.py     /health, /ready, /metrics, /v1/*: validate (protocol.py), submit, relay
    streaming.py  SSE relay of a job's chunks; the watch that cancels a job when its client leaves
    responses.py  OpenAI's response shapes: error bodies, SSE events, chunks, model cards
    protocol.py   OpenAI's request bodies, validated, -> GenerationRequest

create_app() wires them: the metrics' gauges and the engine's on_done hook, the router (upstream
fallback and the usage ledger), the Starlette app with its exception handlers, and the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from llmctl.serve import protocol
from llmctl.serve.context import ServerContext
from llmctl.serve.engine import Job, Scheduler
from llmctl.serve.gate import Gate, json_access_log
from llmctl.serve.metrics import Metrics
from llmctl.serve.routes import EXCEPTION_HANDLERS, ROUTES
from llmctl.serve.security import RateLimiter
from llmctl.serve.settings import ServeSettings


def create_app(settings: ServeSettings, engine: Scheduler, *, metrics: Metrics | None = None,
               access_log: Callable[[dict], None] = json_access_log,
               router: Any = None) -> tuple[Callable, ServerContext]:
    """The ASGI app (gate + routes) and its shared context.

    `router` (llmctl.upstreams.router.Router, wired in by the CLI) takes a generation that failed
    locally before anything was sent (EngineError 5xx: queue full, queue timeout, loading, engine
    error) to an upstream, and sees every finished request's access record (the usage ledger)."""
    metrics = metrics or Metrics(settings.model_name)
    if router is not None:
        router.attach(metrics.registry)
        log_only = access_log

        def access_log(record: dict) -> None:
            try:
                log_only(record)
            finally:
                router.observe(record)
    limits = settings.limits
    ctx = ServerContext(settings=settings, engine=engine, metrics=metrics,
                        limiter=RateLimiter(limits.rate_limit_rpm, limits.rate_limit_burst),
                        access_log=access_log, bounds=protocol.Limits.of(settings), router=router)

    def job_done(job: Job) -> None:
        if job.stats.cancelled:
            metrics.cancelled.inc()
        if job.stats.started is not None and job.request.endpoint != "embedding":
            metrics.observe_job(job.request.endpoint, job.stats)

    engine.on_done = job_done
    metrics.processing.set_function(lambda: engine.running)
    metrics.deferred.set_function(lambda: engine.waiting)
    metrics.ready.set_function(lambda: 1.0 if engine.ready and not ctx.shutting_down else 0.0)

    app = Starlette(routes=list(ROUTES), exception_handlers=dict(EXCEPTION_HANDLERS))
    app.state.ctx = ctx
    return Gate(app, ctx), ctx
