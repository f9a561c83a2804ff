"""The admission gate: pure ASGI, outermost, before any route.

In order: access log + request metrics (always), API key (401), rate limit (429), body size (413,
enforced while reading, Content-Length or not). Behind it the routes admit a stream only while
fewer than `max_concurrent_streams` are open (`admit_stream`: 503 + Retry-After, as a full queue
is); the engine bounds its queue itself (QueueFull, QueueTimeout).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from llmctl.serve.context import ServerContext
from llmctl.serve.engine import Unavailable
from llmctl.serve.responses import error_response
from llmctl.serve.security import match_key, presented_key

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/health",
    "/ready",
    "/metrics",
    "/status",
    "/models/load",
    "/models/unload",
)
ROUTE_HEADER = "x-llmctl-route"  # on every answer the router or the engine gave: local, or upstream:<name>
TIMEOUT_KEY = "llmctl.timeout"  # set in the scope by the server's protocol when it cut a slow request


# -- the access log ---------------------------------------------------------------------------------


def json_access_log(record: dict) -> None:
    sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")


def utc_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the gate ---------------------------------------------------------------------------------------


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
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (ROUTE_HEADER.encode(), info["route"].encode("latin-1")),
                        ],
                    }
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
            for k in (
                "key_id",
                "stream",
                "prompt_tokens",
                "completion_tokens",
                "ttft_ms",
                "finish",
                "error",
                "route",
                "model",
            ):
                if info.get(k) is not None:
                    record[k] = info[k]
            try:
                ctx.access_log(record)
            except Exception:  # noqa: BLE001 - a log line that cannot be written never fails the request
                pass

    async def _handle(
        self, scope: dict, receive: Callable, send: Callable, path: str, client_ip: str, info: dict
    ) -> None:
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
                    401,
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
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
                resp = error_response(
                    429,
                    "Rate limit reached for requests; retry after the time in Retry-After.",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    retry_after=wait,
                )
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

    async def _read_body(
        self, scope: dict, receive: Callable, send: Callable, headers: dict, info: dict
    ) -> bytes | None:
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
        await error_response(
            413, f"Request body too large: the limit is {limit} bytes.", "invalid_request_error", "request_too_large"
        )(scope, receive, send)


# -- streams ------------------------------------------------------------------------------------------


def admit_stream(ctx: ServerContext) -> None:
    """Count a streaming request in, or Unavailable (503, Retry-After) at max_concurrent_streams."""
    limit = ctx.settings.limits.max_concurrent_streams
    if ctx.streams >= limit:
        raise Unavailable(f"too many streams ({limit}) are open; try again later")
    ctx.streams += 1
    ctx.metrics.streams.inc()


def release_stream(ctx: ServerContext) -> None:
    ctx.streams -= 1
    ctx.metrics.streams.dec()
