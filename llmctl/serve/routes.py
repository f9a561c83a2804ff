"""The routes: parse and bound the request (400), lease the model it names from the pool (404
unknown, 503 no room; it may load), submit a job to its scheduler (503 when it is full), relay
chunks. Each reads the server's context from `request.app.state.ctx` (context_of).

Nothing here touches the model: the routes only see the pool and the Scheduler protocol.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmctl.serve import choices, protocol
from llmctl.serve.context import ServerContext, context_of
from llmctl.serve.engine import BadRequest, EngineError, GenerationRequest, Job, NotReady, PromptTooLong, ShuttingDown
from llmctl.serve.gate import admit_stream, release_stream
from llmctl.serve.responses import engine_error_response, error_response, model_card, model_list
from llmctl.serve.streaming import ClientGone, DisconnectWatch, EventStream

READY_FRESH_S = 10.0  # a token this recent proves the model answers; else /ready probes


async def _json_body(request: Request) -> dict:
    return protocol.parse_body(await request.body())


# -- health, readiness, models, metrics -------------------------------------------------------------


def ready_to_serve(ctx: ServerContext) -> bool:
    """The start-up loads are done, and one model served alone is loaded and ready (or unloaded
    by keep_alive_s: it loads again on demand). Several models: they load on demand."""
    if not ctx.preloaded or ctx.preload_error:
        return False
    pool = ctx.pool
    if pool.single:
        engine = pool.entries[pool.default].engine
        return engine is None or engine.ready
    return True


async def health(request: Request) -> Response:
    ctx = context_of(request)
    pool = ctx.pool
    if ctx.shutting_down:
        return error_response(503, "The server is shutting down.", "server_error", "shutting_down", retry_after=1)
    if not ready_to_serve(ctx):
        default = pool.entries[pool.default]
        engine = default.engine
        if ctx.preload_error or (engine is not None and engine.state == "failed"):
            return error_response(503, "The model failed to load.", "server_error", "model_failed")
        return error_response(503, "Loading model.", "server_error", "model_loading", retry_after=1)
    doc: dict[str, Any] = {"status": "ok", "model": ctx.settings.model_name}
    if not pool.single:
        doc["models"] = {name: pool.state_of(e) for name, e in pool.entries.items()}
    loaded = pool.ready_engine()
    offload = getattr(loaded, "gpu_offload", None)  # GPU services: what `llmctl health` checks
    if offload is not None:
        doc["gpu_offload"] = offload
    return JSONResponse(doc)


async def ready(request: Request) -> Response:
    """Readiness: a model that can answer. Proof is a token generated in the last
    READY_FRESH_S seconds; when idle longer, a one-token probe through the queue. The default
    model is probed when it is loaded; when it is not (it loads on demand), there is nothing to probe."""
    resp = await health(request)
    if resp.status_code != 200:
        return resp
    ctx = context_of(request)
    pool = ctx.pool
    entry = pool.try_lease()
    if entry is None:
        return JSONResponse(
            {
                "status": "ready",
                "model": ctx.settings.model_name,
                "probed": False,
                "loaded": False,
                "waiting": 0,
                "running": 0,
            }
        )
    try:
        engine = entry.engine
        if not engine.alive(120.0):
            return error_response(503, "The model worker is not making progress.", "server_error", "worker_stuck")
        probed = False
        async with ctx.probe_lock:  # concurrent readiness checks share one probe
            last = engine.last_token_at
            if last is None or time.monotonic() - last > READY_FRESH_S:
                probed = True
                job = await engine.submit(
                    GenerationRequest(
                        "completion",
                        {"prompt": "Hello", "max_tokens": 1, "temperature": 0.0, "model": ctx.settings.model_name},
                    )
                )
                try:
                    await job.wait_started(min(ctx.settings.limits.queue_timeout_s, 10.0))
                    result = None
                    async for item in job:
                        result = item
                finally:
                    if not job.done:
                        job.cancel()
                if not result or job.stats.completion_tokens + job.stats.prompt_tokens == 0:
                    return error_response(503, "The model did not answer the probe.", "server_error", "probe_failed")
        return JSONResponse(
            {
                "status": "ready",
                "model": ctx.settings.model_name,
                "probed": probed,
                "waiting": engine.waiting,
                "running": engine.running,
            }
        )
    finally:
        pool.release(entry)


async def models(request: Request) -> Response:
    """Every model, with its status: loaded, loading, unloading or unloaded."""
    ctx = context_of(request)
    pool = ctx.pool
    return JSONResponse(
        model_list(
            *({**model_card(name, ctx.started_at), "status": pool.state_of(e)} for name, e in pool.entries.items())
        )
    )


def _model_named(data: dict) -> str:
    name = data.get("model") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest('the body must be a JSON object with a \'model\' string, such as {"model": "NAME"}')
    return name


async def load_model(request: Request) -> Response:
    """POST /models/load {"model": NAME}: load it now (unloading others to make room, as a request
    for it would); 200 once it is loaded."""
    ctx = context_of(request)
    if ctx.shutting_down:
        raise ShuttingDown("The server is shutting down.")
    name = _model_named(await _json_body(request))
    entry = await ctx.pool.load(name, ctx.settings.limits.queue_timeout_s)
    return JSONResponse({"success": True, "model": entry.name, "status": ctx.pool.state_of(entry)})


async def unload_model(request: Request) -> Response:
    """POST /models/unload {"model": NAME}: unload it now; 409 when it is pinned or busy."""
    ctx = context_of(request)
    name = _model_named(await _json_body(request))
    was_loaded = await ctx.pool.unload(name)
    entry = ctx.pool.entry(name, strict=True)
    return JSONResponse(
        {"success": True, "model": entry.name, "status": ctx.pool.state_of(entry), "was_loaded": was_loaded}
    )


async def status(request: Request) -> Response:
    """GET /status: what `llmctl ps` shows. Every model's state, memory and last minute's work."""
    from llmctl import __version__
    from llmctl.serve import resources

    ctx = context_of(request)
    snap = await asyncio.to_thread(resources.snapshot, ctx.pool.occupied_paths())
    doc = {
        "object": "llmctl.status",
        "version": 1,
        "llmctl": __version__,
        "service": ctx.settings.service,
        "default_model": ctx.pool.default,
        "uptime_s": round(time.time() - ctx.started_at, 3),
        "ready": ready_to_serve(ctx) and not ctx.shutting_down,
        **ctx.pool.status(snap),
    }
    return JSONResponse(doc)


async def metrics_endpoint(request: Request) -> Response:
    body, ctype = context_of(request).metrics.render()
    return Response(body, media_type=ctype)


# -- generation ---------------------------------------------------------------------------------------


async def generate(request: Request, endpoint: Literal["chat", "completion"]) -> Response:
    ctx = context_of(request)
    settings = ctx.settings
    info = request.scope.get("llmctl", {})
    if ctx.shutting_down:
        raise ShuttingDown("The server is shutting down.")
    data = await _json_body(request)
    body = protocol.validate_chat(data) if endpoint == "chat" else protocol.validate_completion(data)
    # The model's engine (loaded now if it was not, within the queue timeout), held from being
    # unloaded until the job is submitted: from then on the engine counts it as active.
    entry = await ctx.pool.acquire(body.model, settings.limits.queue_timeout_s)
    try:
        engine = entry.engine
        info["model"] = entry.name
        spec = protocol.tool_spec(body) if isinstance(body, protocol.ChatBody) else None
        fmt = ctx.tool_format_for(entry.settings) if isinstance(body, protocol.ChatBody) else "generic"
        greq = protocol.to_generation_request(
            body,
            ctx.bounds_for(entry.name),
            engine.n_vocab,
            tools=spec,
            tool_format=fmt,
            logprobs=engine.supports_logprobs,
        )
        limit = greq.max_prompt_tokens
        # A cheap early bound before queueing (exact for completions, a lower bound for chat);
        # the engine checks the formatted prompt exactly before it decodes anything.
        text = protocol.prompt_text(greq)
        if text:
            if not engine.ready:
                raise NotReady("Loading model.")
            n = engine.count_tokens(text) if len(text) < 8192 else await asyncio.to_thread(engine.count_tokens, text)
            if limit is not None and n > limit:
                raise PromptTooLong(
                    f"the prompt has {n} tokens; this server accepts at most {limit} "
                    f"(context {settings.n_ctx} minus max_tokens {greq.params['max_tokens']})"
                )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        info["stream"] = body.stream
        if body.stream:
            admit_stream(ctx)  # released by the EventStream, or below when it never starts
        try:
            shaping = choices.Shaping(spec, fmt, legacy_logprobs=endpoint == "completion" and "logprobs" in greq.params)
            job: Any = await submit_choices(engine, greq, body.n, shaping)
        except BaseException:
            if body.stream:
                release_stream(ctx)
            raise
    finally:
        ctx.pool.release(entry)
    watch = DisconnectWatch(request.receive, job)
    finished = False

    def finish() -> None:
        nonlocal finished
        if finished:
            return
        finished = True
        st = job.stats
        if st.started is not None:
            info["prompt_tokens"] = st.prompt_tokens
            info["completion_tokens"] = st.completion_tokens
            if st.ttft_s is not None:
                info["ttft_ms"] = round(st.ttft_s * 1000, 1)

    handed_over = False
    try:
        await watch.until(job.wait_started(settings.limits.queue_timeout_s))
        chunks = job.__aiter__()
        if body.n == 1 and body.stream:
            chunks = shaping.chunks(chunks)
        if body.stream:
            try:
                first = await watch.until(chunks.__anext__())
            except StopAsyncIteration:
                raise EngineError("the generation ended without output") from None
            handed_over = True
            return EventStream(ctx, job, first, chunks, watch, include_usage, finish, info)  # type: ignore[return-value]
        result = None

        async def collect() -> Any:
            out = None
            async for item in chunks:
                out = item
            return out

        result = await watch.until(collect())
        if result is None:
            raise EngineError("the generation ended without output")
        if body.n == 1:
            result = shaping.whole(result)
        info["finish"] = result["choices"][0].get("finish_reason") if result.get("choices") else None
        return JSONResponse(result)
    except ClientGone:
        info["error"] = "client_disconnected"
        return Response(status_code=499)
    except asyncio.CancelledError:
        if not ctx.shutting_down:
            raise
        info["error"] = "cut_at_shutdown"
        return error_response(503, "The server is shutting down.", "server_error", "shutting_down")
    finally:
        if not handed_over:
            if not job.done:
                job.cancel()
            watch.close()
            if body.stream:
                release_stream(ctx)
            finish()


async def submit_choices(engine: Any, greq: GenerationRequest, n: int, shaping: choices.Shaping) -> Any:
    """One job, or n as a JobGroup (each choice with its own seed when one is given)."""
    if n == 1:
        return await engine.submit(greq)
    jobs: list[Job] = []
    seed = greq.params.get("seed")
    try:
        for i in range(n):
            params = dict(greq.params)
            if seed is not None:
                params["seed"] = seed + i if seed + i < protocol.INT64 else seed - i
            jobs.append(
                await engine.submit(GenerationRequest(greq.endpoint, params, greq.stream, greq.max_prompt_tokens))
            )
    except BaseException:
        for j in jobs:
            j.cancel()
        raise
    return choices.JobGroup(jobs, greq.stream, shaping)


async def routed(request: Request, endpoint: Literal["chat", "completion"]) -> Response:
    """A generation, here or (when it failed locally before anything was sent) on an upstream."""
    ctx = context_of(request)
    info = request.scope.get("llmctl", {})
    info["route"], info["model"] = "local", ctx.settings.model_name
    try:
        return await generate(request, endpoint)
    except EngineError as exc:
        if ctx.router is None or exc.status < 500 or ctx.shutting_down:
            raise
        response = await ctx.router.handle(request, endpoint, exc, info)
        if response is None:
            raise
        return response


async def chat_completions(request: Request) -> Response:
    return await routed(request, "chat")


async def completions(request: Request) -> Response:
    return await routed(request, "completion")


async def embeddings(request: Request) -> Response:
    ctx = context_of(request)
    settings = ctx.settings
    if not settings.embeddings:
        return error_response(
            400,
            f"model '{settings.model_name}' is not served with embeddings (set services.<name>.embeddings: true)",
            "invalid_request_error",
            "embeddings_disabled",
        )
    info = request.scope.get("llmctl", {})
    info["route"], info["model"] = "local", settings.model_name
    if ctx.shutting_down:
        raise ShuttingDown("The server is shutting down.")
    body = protocol.validate_embedding(await _json_body(request))
    entry = await ctx.pool.acquire(body.model, settings.limits.queue_timeout_s)
    try:
        info["model"] = entry.name
        job = await entry.engine.submit(
            GenerationRequest("embedding", {"input": protocol.embedding_input(body), "model": entry.name})
        )
    finally:
        ctx.pool.release(entry)
    try:
        await job.wait_started(settings.limits.queue_timeout_s)
        result = None
        async for item in job:
            result = item
        return JSONResponse(result)
    finally:
        if not job.done:
            job.cancel()


# -- errors -------------------------------------------------------------------------------------------


async def on_engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    info = request.scope.get("llmctl")
    if info is not None:
        info["error"] = exc.code
    return engine_error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", type_, code)


async def on_crash(request: Request, exc: Exception) -> Response:
    return error_response(
        500, "The server had an error while processing your request.", "server_error", "internal_error"
    )


ROUTES = [
    Route("/health", health, methods=["GET", "HEAD"]),
    Route("/ready", ready, methods=["GET", "HEAD"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/models/load", load_model, methods=["POST"]),
    Route("/models/unload", unload_model, methods=["POST"]),
    Route("/status", status, methods=["GET"]),
]
EXCEPTION_HANDLERS: dict[Any, Any] = {EngineError: on_engine_error, HTTPException: on_http_error, Exception: on_crash}
