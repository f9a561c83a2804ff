"""The HTTP layer: a Starlette app behind one pure-ASGI gate.

The gate (outermost) does, in order: access log + request metrics (always), API key (401),
rate limit (429), body size (413, enforced while reading, Content-Length or not). The routes
parse and bound the request (400), submit a job to the scheduler (503 when it is full), and
relay chunks. Nothing here touches the model: the HTTP layer only sees the Scheduler protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmctl.serve import choices, protocol
from llmctl.serve.engine import (
    EngineError,
    GenerationRequest,
    Job,
    NotReady,
    PromptTooLong,
    Scheduler,
    ShuttingDown,
    Unavailable,
)
from llmctl.serve.metrics import Metrics
from llmctl.serve.security import RateLimiter, match_key, presented_key, retry_after_header
from llmctl.serve.settings import ServeSettings
from llmctl.serve.tools import SYSTEMLESS_CHAT_FORMATS

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
             "/health", "/ready", "/metrics")
READY_FRESH_S = 10.0  # a token this recent proves the model answers; else /ready probes
TIMEOUT_KEY = "llmctl.timeout"  # set in the scope by the server's protocol when it cut a slow request


# -- errors in OpenAI's shape -----------------------------------------------------------------------


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    # Text from a request may end up in a message or param: never let it make the error unwritable.
    message = protocol.safe_text(message)
    param = protocol.safe_text(param) if param is not None else None
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   *, param: str | None = None, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": retry_after_header(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def engine_error_response(exc: EngineError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.code, param=getattr(exc, "param", None),
                          retry_after=exc.retry_after)


# -- shared state -----------------------------------------------------------------------------------


@dataclass
class ServerContext:
    settings: ServeSettings
    engine: Scheduler
    metrics: Metrics
    limiter: RateLimiter
    access_log: Callable[[dict], None]
    shutting_down: bool = False
    active: int = 0  # /v1/ requests in progress: what the SIGTERM drain waits for
    streams: int = 0  # streaming requests admitted (waiting or sending), bounded by max_concurrent_streams
    started_at: float = field(default_factory=time.time)

    def admit_stream(self) -> None:
        limit = self.settings.limits.max_concurrent_streams
        if self.streams >= limit:
            raise Unavailable(f"too many streams ({limit}) are open; try again later")
        self.streams += 1
        self.metrics.streams.inc()

    def release_stream(self) -> None:
        self.streams -= 1
        self.metrics.streams.dec()


def json_access_log(record: dict) -> None:
    sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")


def utc_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the gate -----------------------------------------------------------------------------------------


def client_address(scope: dict) -> str:
    """The client's IP address: the peer's, or the one a trusted proxy put in X-Forwarded-For
    (uvicorn's ProxyHeadersMiddleware, on only with `trusted_proxies`). Anything that is not an
    address (a proxy passing a client's header through) is "invalid", never logged raw."""
    client = scope.get("client")
    if not client or not client[0]:
        return "-"
    host = client[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "invalid"


class Gate:
    """Pure ASGI (no buffering of responses, so streams flow): log, auth, rate limit, body size."""

    def __init__(self, app: Callable, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = self.ctx
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        client_ip = client_address(scope)
        info: dict[str, Any] = {"request_id": uuid.uuid4().hex[:16]}
        scope["llmctl"] = info
        status = [0]

        async def send_(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if info.get("route"):  # which route served it: local, or upstream:<name>
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"x-llmctl-route", info["route"].encode("latin-1"))]}
            await send(message)

        t0 = time.perf_counter()
        ctx.metrics.in_flight.inc()
        generating = path.startswith("/v1/")
        ctx.active += generating
        try:
            await self._handle(scope, receive, send_, path, client_ip, info)
        finally:
            ctx.active -= generating
            ctx.metrics.in_flight.dec()
            elapsed = time.perf_counter() - t0
            code = status[0] or 499  # 499: the client left before a response started
            ctx.metrics.requests.labels(endpoint=endpoint, status=str(code)).inc()
            ctx.metrics.latency.labels(endpoint=endpoint).observe(elapsed)
            record = {
                "ts": utc_iso(),
                "event": "access",
                "request_id": info["request_id"],
                "client": client_ip,
                "method": scope.get("method"),
                "path": path,
                "status": code,
                "duration_ms": round(elapsed * 1000, 1),
            }
            for k in ("key_id", "stream", "prompt_tokens", "completion_tokens", "ttft_ms", "finish",
                      "error", "route", "model"):
                if info.get(k) is not None:
                    record[k] = info[k]
            try:
                ctx.access_log(record)
            except Exception:
                pass

    async def _handle(self, scope: dict, receive: Callable, send: Callable, path: str, client_ip: str,
                      info: dict) -> None:
        ctx = self.ctx
        s = ctx.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        public = (path in ("/health", "/ready") and s.public_health) or (path == "/metrics" and s.public_metrics)
        bucket = f"ip:{client_ip}"
        if s.api_keys and not public:
            key = match_key(s.api_keys, presented_key(headers))
            if key is None:
                ctx.metrics.auth_failures.inc()
                info["error"] = "invalid_api_key"
                resp = error_response(
                    401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'.",
                    "invalid_request_error", "invalid_api_key")
                resp.headers["WWW-Authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
            info["key_id"] = key.id
            bucket = key.id
        if path.startswith("/v1/") and ctx.limiter.enabled:
            wait = ctx.limiter.allow(bucket)
            if wait > 0:
                ctx.metrics.rate_limited.inc()
                info["error"] = "rate_limit_exceeded"
                resp = error_response(429, "Rate limit reached for requests; retry after the time in Retry-After.",
                                      "rate_limit_error", "rate_limit_exceeded", retry_after=wait)
                await resp(scope, receive, send)
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive, send, headers, info)
            if body is None:
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: dict, receive: Callable, send: Callable, headers: dict,
                         info: dict) -> bytes | None:
        """The whole body, or None after answering: 413 as soon as the limit is known to be passed
        (a declared Content-Length at once, without waiting for the body). The rest of an oversized
        body is read and dropped by the server's protocol (so the client, still sending, gets the
        413 rather than a reset), bounded by its body timeout."""
        limit = self.ctx.settings.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, info, limit)
            return None
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                info["error"] = scope.get(TIMEOUT_KEY) or "client_disconnected"
                return None
            data = message.get("body", b"")
            total += len(data)
            if total > limit:
                await self._too_large(scope, receive, send, info, limit)
                return None
            chunks.append(data)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _too_large(scope: dict, receive: Callable, send: Callable, info: dict, limit: int) -> None:
        info["error"] = "request_too_large"
        await error_response(413, f"Request body too large: the limit is {limit} bytes.", "invalid_request_error",
                             "request_too_large")(scope, receive, send)


# -- streaming ----------------------------------------------------------------------------------------


class ClientGone(Exception):
    pass


class DisconnectWatch:
    """Watches `receive` for http.disconnect; cancels the job when the client leaves."""

    def __init__(self, receive: Callable, job: Job) -> None:
        self.gone = asyncio.Event()
        self._job = job
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._job.cancel()
                self.gone.set()
                return

    async def until(self, awaitable: Awaitable) -> Any:
        """Await `awaitable` unless the client leaves first (then raise ClientGone)."""
        task = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            gone.cancel()
            raise
        gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone()

    def close(self) -> None:
        self._task.cancel()


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class EventStream:
    """An SSE response relaying a job's chunks; stops the job when the client leaves or on cancel."""

    def __init__(self, ctx: ServerContext, job: Job, first: dict, chunks, watch: DisconnectWatch,
                 include_usage: bool, finish: Callable[[], None], info: dict) -> None:
        self.ctx, self.job, self.first, self.chunks, self.watch = ctx, job, first, chunks, watch
        self.include_usage, self.finish, self.info = include_usage, finish, info

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        ctx = self.ctx
        last: dict | None = None
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
            })
            await send({"type": "http.response.body", "body": sse(self.first), "more_body": True})
            last = self.first
            try:
                async for chunk in self.chunks:
                    if self.watch.gone.is_set():
                        break
                    last = chunk
                    await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
            except EngineError as exc:
                self.info["error"] = exc.code
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse(error_body(exc.message, exc.type, exc.code))})
            if self.watch.gone.is_set():
                return
            if self.include_usage and last is not None and "usage" in last:
                await send({"type": "http.response.body", "more_body": True, "body": sse({
                    "id": last.get("id"), "object": last.get("object"), "created": last.get("created"),
                    "model": last.get("model"), "choices": [], "usage": last["usage"]})})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:  # the client went away mid-write
            self.job.cancel()
        except asyncio.CancelledError:
            if not ctx.shutting_down:
                raise
            # The shutdown timeout is over: end the stream cleanly with an error event, then stop.
            self.job.cancel()
            self.info["error"] = "cut_at_shutdown"
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "more_body": False, "body": sse(error_body(
                    "The server is shutting down; this stream was cut.", "server_error", "shutting_down"))})
        finally:
            if not self.job.done:
                self.job.cancel()
            self.watch.close()
            ctx.release_stream()
            if last is not None and last.get("choices"):
                self.info["finish"] = last["choices"][0].get("finish_reason")
            self.finish()


# -- routes -------------------------------------------------------------------------------------------


def _detect_tool_format(settings: ServeSettings) -> str:
    from llmctl.errors import LlmctlError
    from llmctl.models.gguf import read_gguf_string
    from llmctl.serve.tools import detect_format

    if settings.chat_format is not None:  # a named format, not the template the GGUF carries
        return "generic"
    try:
        return detect_format(read_gguf_string(settings.model_path, "tokenizer.chat_template"))
    except (OSError, LlmctlError):
        return "generic"


async def _json_body(request: Request) -> dict:
    return protocol.parse_body(await request.body())


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
    bounds = protocol.Limits.of(settings)
    ctx = ServerContext(settings=settings, engine=engine, metrics=metrics,
                        limiter=RateLimiter(limits.rate_limit_rpm, limits.rate_limit_burst),
                        access_log=access_log)
    def job_done(job: Job) -> None:
        if job.stats.cancelled:
            metrics.cancelled.inc()
        if job.stats.started is not None and job.request.endpoint != "embedding":
            metrics.observe_job(job.request.endpoint, job.stats)

    engine.on_done = job_done
    metrics.processing.set_function(lambda: engine.running)
    metrics.deferred.set_function(lambda: engine.waiting)
    metrics.ready.set_function(lambda: 1.0 if engine.ready and not ctx.shutting_down else 0.0)

    formats: list[str] = []

    def tool_format() -> str:
        """The model's tool format (llmctl.serve.tools): the config's, else from the GGUF's chat template
        (read once); generic when a chat_format other than the template's is set."""
        if not formats:
            formats.append(settings.tool_format or _detect_tool_format(settings))
        return formats[0]

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": int(ctx.started_at),
                "owned_by": "llmctl"}

    async def health(request: Request) -> Response:
        if ctx.shutting_down:
            return error_response(503, "The server is shutting down.", "server_error", "shutting_down",
                                  retry_after=1)
        if not engine.ready:
            if engine.state == "failed":
                return error_response(503, "The model failed to load.", "server_error", "model_failed")
            return error_response(503, "Loading model.", "server_error", "model_loading", retry_after=1)
        doc: dict[str, Any] = {"status": "ok", "model": settings.model_name}
        offload = getattr(engine, "gpu_offload", None)  # GPU services: what `llmctl health` checks
        if offload is not None:
            doc["gpu_offload"] = offload
        return JSONResponse(doc)

    probe_lock = asyncio.Lock()

    async def ready(request: Request) -> Response:
        """Readiness: a model that can answer. Proof is a token generated in the last
        READY_FRESH_S seconds; when idle longer, a one-token probe through the queue."""
        resp = await health(request)
        if resp.status_code != 200:
            return resp
        if not engine.alive(120.0):
            return error_response(503, "The model worker is not making progress.", "server_error", "worker_stuck")
        probed = False
        async with probe_lock:  # concurrent readiness checks share one probe
            last = engine.last_token_at
            if last is None or time.monotonic() - last > READY_FRESH_S:
                probed = True
                job = await engine.submit(GenerationRequest(
                    "completion", {"prompt": "Hello", "max_tokens": 1, "temperature": 0.0,
                                   "model": settings.model_name}))
                try:
                    await job.wait_started(min(limits.queue_timeout_s, 10.0))
                    result = None
                    async for item in job:
                        result = item
                finally:
                    if not job.done:
                        job.cancel()
                if not result or job.stats.completion_tokens + job.stats.prompt_tokens == 0:
                    return error_response(503, "The model did not answer the probe.", "server_error",
                                          "probe_failed")
        return JSONResponse({"status": "ready", "model": settings.model_name, "probed": probed,
                             "waiting": engine.waiting, "running": engine.running})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def metrics_endpoint(request: Request) -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    async def generate(request: Request, endpoint: Literal["chat", "completion"]) -> Response:
        info = request.scope.get("llmctl", {})
        if ctx.shutting_down:
            raise ShuttingDown("The server is shutting down.")
        data = await _json_body(request)
        body = protocol.validate_chat(data) if endpoint == "chat" else protocol.validate_completion(data)
        spec = protocol.tool_spec(body) if isinstance(body, protocol.ChatBody) else None
        fmt = tool_format() if isinstance(body, protocol.ChatBody) else "generic"
        greq = protocol.to_generation_request(body, bounds, engine.n_vocab, tools=spec, tool_format=fmt,
                                              fold_system=settings.chat_format in SYSTEMLESS_CHAT_FORMATS)
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
            ctx.admit_stream()  # released by the EventStream, or below when it never starts
        try:
            job: Any = await submit_choices(greq, body.n, spec, fmt)
        except BaseException:
            if body.stream:
                ctx.release_stream()
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
            await watch.until(job.wait_started(limits.queue_timeout_s))
            chunks = job.__aiter__()
            if body.n == 1 and spec is not None:
                chunks = choices.shape_chunks(chunks, spec, fmt) if body.stream else chunks
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
                result = choices.shape_result(result, spec, fmt)
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
                    ctx.release_stream()
                finish()

    async def submit_choices(greq: GenerationRequest, n: int, spec: Any, fmt: str) -> Any:
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
                jobs.append(await engine.submit(GenerationRequest(greq.endpoint, params, greq.stream,
                                                                  greq.max_prompt_tokens)))
        except BaseException:
            for j in jobs:
                j.cancel()
            raise
        if greq.endpoint != "chat" or spec is None:
            return choices.JobGroup(jobs, greq.stream)
        return choices.JobGroup(jobs, greq.stream, shape=lambda c: choices.shape_chunks(c, spec, fmt),
                                shape_whole=lambda r: choices.shape_result(r, spec, fmt))

    async def routed(request: Request, endpoint: Literal["chat", "completion"]) -> Response:
        info = request.scope.get("llmctl", {})
        info["route"], info["model"] = "local", settings.model_name
        try:
            return await generate(request, endpoint)
        except EngineError as exc:
            if router is None or exc.status < 500 or ctx.shutting_down:
                raise
            response = await router.handle(request, endpoint, exc, info)
            if response is None:
                raise
            return response

    async def chat_completions(request: Request) -> Response:
        return await routed(request, "chat")

    async def completions(request: Request) -> Response:
        return await routed(request, "completion")

    async def embeddings(request: Request) -> Response:
        if not settings.embeddings:
            return error_response(400, f"model '{settings.model_name}' is not served with embeddings "
                                  "(set services.<name>.embeddings: true)", "invalid_request_error",
                                  "embeddings_disabled")
        info = request.scope.get("llmctl", {})
        info["route"], info["model"] = "local", settings.model_name
        if ctx.shutting_down:
            raise ShuttingDown("The server is shutting down.")
        body = protocol.validate_embedding(await _json_body(request))
        job = await engine.submit(GenerationRequest("embedding", {"input": protocol.embedding_input(body),
                                                                  "model": settings.model_name}))
        try:
            await job.wait_started(limits.queue_timeout_s)
            result = None
            async for item in job:
                result = item
            return JSONResponse(result)
        finally:
            if not job.done:
                job.cancel()

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

    routes = [
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/ready", ready, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        EngineError: on_engine_error, HTTPException: on_http_error, Exception: on_crash})
    return Gate(app, ctx), ctx
