"""The routes: parse and bound the request (400), submit a job to the scheduler (503 when it is
full), relay chunks. Each reads the server's context from `request.app.state.ctx` (context_of).

Nothing here touches the model: the routes only see the Scheduler protocol.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmctl.serve import protocol
from llmctl.serve.context import context_of
from llmctl.serve.engine import EngineError, GenerationRequest, NotReady, PromptTooLong, ShuttingDown
from llmctl.serve.gate import admit_stream, release_stream
from llmctl.serve.responses import engine_error_response, error_response, model_card, model_list
from llmctl.serve.streaming import ClientGone, DisconnectWatch, EventStream

READY_FRESH_S = 10.0  # a token this recent proves the model answers; else /ready probes


async def _json_body(request: Request) -> dict:
    return protocol.parse_body(await request.body())


# -- health, readiness, models, metrics -------------------------------------------------------------


async def health(request: Request) -> Response:
    ctx = context_of(request)
    engine = ctx.engine
    if ctx.shutting_down:
        return error_response(503, "The server is shutting down.", "server_error", "shutting_down",
                              retry_after=1)
    if not engine.ready:
        if engine.state == "failed":
            return error_response(503, "The model failed to load.", "server_error", "model_failed")
        return error_response(503, "Loading model.", "server_error", "model_loading", retry_after=1)
    doc: dict[str, Any] = {"status": "ok", "model": ctx.settings.model_name}
    offload = getattr(engine, "gpu_offload", None)  # GPU services: what `llmctl health` checks
    if offload is not None:
        doc["gpu_offload"] = offload
    return JSONResponse(doc)


async def ready(request: Request) -> Response:
    """Readiness: a model that can answer. Proof is a token generated in the last
    READY_FRESH_S seconds; when idle longer, a one-token probe through the queue."""
    resp = await health(request)
    if resp.status_code != 200:
        return resp
    ctx = context_of(request)
    engine = ctx.engine
    if not engine.alive(120.0):
        return error_response(503, "The model worker is not making progress.", "server_error", "worker_stuck")
    probed = False
    async with ctx.probe_lock:  # concurrent readiness checks share one probe
        last = engine.last_token_at
        if last is None or time.monotonic() - last > READY_FRESH_S:
            probed = True
            job = await engine.submit(GenerationRequest(
                "completion", {"prompt": "Hello", "max_tokens": 1, "temperature": 0.0,
                               "model": ctx.settings.model_name}))
            try:
                await job.wait_started(min(ctx.settings.limits.queue_timeout_s, 10.0))
                result = None
                async for item in job:
                    result = item
            finally:
                if not job.done:
                    job.cancel()
            if not result or job.stats.completion_tokens + job.stats.prompt_tokens == 0:
                return error_response(503, "The model did not answer the probe.", "server_error",
                                      "probe_failed")
    return JSONResponse({"status": "ready", "model": ctx.settings.model_name, "probed": probed,
                         "waiting": engine.waiting, "running": engine.running})


async def models(request: Request) -> Response:
    ctx = context_of(request)
    return JSONResponse(model_list(model_card(ctx.settings.model_name, ctx.started_at)))


async def metrics_endpoint(request: Request) -> Response:
    body, ctype = context_of(request).metrics.render()
    return Response(body, media_type=ctype)


# -- generation ---------------------------------------------------------------------------------------


async def generate(request: Request, endpoint: Literal["chat", "completion"]) -> Response:
    ctx = context_of(request)
    engine, settings = ctx.engine, ctx.settings
    info = request.scope.get("llmctl", {})
    if ctx.shutting_down:
        raise ShuttingDown("The server is shutting down.")
    data = await _json_body(request)
    body = protocol.validate_chat(data) if endpoint == "chat" else protocol.validate_completion(data)
    greq = protocol.to_generation_request(body, ctx.bounds, engine.n_vocab)
    limit = greq.max_prompt_tokens
    # A cheap early bound before queueing (exact for completions, a lower bound for chat);
    # the engine checks the formatted prompt exactly before it decodes anything.
    text = protocol.prompt_text(greq)
    if text:
        if not engine.ready:
            raise NotReady("Loading model.")
        n = engine.count_tokens(text) if len(text) < 8192 else await asyncio.to_thread(engine.count_tokens, text)
        if n > limit:
            raise PromptTooLong(f"the prompt has {n} tokens; this server accepts at most {limit} "
                                f"(context {settings.n_ctx} minus max_tokens {greq.params['max_tokens']})")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    info["stream"] = body.stream
    if body.stream:
        admit_stream(ctx)  # released by the EventStream, or below when it never starts
    try:
        job = await engine.submit(greq)
    except BaseException:
        if body.stream:
            release_stream(ctx)
        raise
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
        return error_response(400, f"model '{settings.model_name}' is not served with embeddings "
                              "(set services.<name>.embeddings: true)", "invalid_request_error",
                              "embeddings_disabled")
    info = request.scope.get("llmctl", {})
    info["route"], info["model"] = "local", settings.model_name
    if ctx.shutting_down:
        raise ShuttingDown("The server is shutting down.")
    body = protocol.validate_embedding(await _json_body(request))
    job = await ctx.engine.submit(GenerationRequest("embedding", {"input": protocol.embedding_input(body),
                                                                  "model": settings.model_name}))
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
    return error_response(500, "The server had an error while processing your request.", "server_error",
                          "internal_error")


ROUTES = [
    Route("/health", health, methods=["GET", "HEAD"]),
    Route("/ready", ready, methods=["GET", "HEAD"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
EXCEPTION_HANDLERS: dict[Any, Any] = {EngineError: on_engine_error, HTTPException: on_http_error, Exception: on_crash}
