"""The route a request takes when the local model cannot take it, and the proxy that takes it there.

`llmctl serve` calls `Router.handle()` when a generation fails locally before anything was sent to
the client (an engine error, a full queue, a queue timeout, a model still loading, too many
streams). The router then:

1. answers 503 at once in airgap mode (no request ever leaves the host);
2. walks the strategy's upstreams in order, skipping those whose circuit is open, those without a
   model mapping, and cloud upstreams when the request is private (a privacy header, or a prompt
   matching a privacy pattern);
3. sends the request with httpx (the upstream's key, never the client's; no client header is
   forwarded), retrying one upstream with exponential backoff and full jitter only while nothing
   has been sent to the client: connection errors, timeouts, 429 and 5xx;
4. for a stream, commits to an upstream only once its first SSE event has arrived; from then on the
   stream stays on that upstream (a break later ends the stream with an error event).

`Router.observe()` sees every finished request (serve's access record): it counts routes and hands
the record, with its cost from the price table, to the usage ledger's recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from llmctl.apierror import error_event, error_response
from llmctl.upstreams.circuit import CLOSED, STATE_VALUE, CircuitBreaker
from llmctl.upstreams.config import RoutingConfig, Upstream

FORWARDED_HEADER = "x-llmctl-forwarded"  # on requests we send: the receiving llmctl never forwards them again
RECORDED_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}


class Failed:
    """One attempt on one upstream that did not produce a response."""

    def __init__(self, reason: str, retryable: bool) -> None:
        self.reason, self.retryable = reason, retryable

    def __str__(self) -> str:
        return self.reason


def request_texts(body: Any) -> Iterator[str]:
    """Every text a request carries, wherever it is: message content (a string or parts), names,
    tool calls and their arguments, the prompt (a string or a list), the suffix, tool definitions,
    stop sequences, unknown fields, and the keys of every object. The privacy check reads these
    all, so a field it was not told about cannot carry a secret past it."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                stack.append(v)
        elif isinstance(value, list):
            stack.extend(value)


def has_token_ids(body: Any) -> bool:
    """A completion prompt given as token ids: text the patterns cannot read."""
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, list):
        return False
    return any(isinstance(p, int) or isinstance(p, list) for p in prompt)


def _circuit_value(breaker: CircuitBreaker) -> float:
    return STATE_VALUE[breaker.state]


class _ReadCounter:
    """A counter whose count another object keeps (the ledger's drops), read at each scrape."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def describe(self) -> list:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> list:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name, self.documentation, value=float(self.read()))]


class Router:
    def __init__(
        self,
        routing: RoutingConfig,
        *,
        served_model: str,
        max_tokens: int | None = None,
        recorder: Callable[[tuple], None] | None = None,
        dropped: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        transport: Any = None,
    ) -> None:
        self.routing = routing
        self.served_model = served_model
        self.max_tokens = max_tokens
        self.recorder = recorder
        self.dropped = dropped
        self.rng = rng
        self.breakers = {u.name: CircuitBreaker(routing.failures, routing.cooldown_s, clock) for u in routing.upstreams}
        self._transport = transport
        self._client: Any = None
        self._m: dict[str, Any] = {}

    # -- metrics -----------------------------------------------------------------------------------

    def attach(self, registry: Any) -> None:
        """Register this router's metrics in the server's registry."""
        from prometheus_client import Counter, Gauge

        self._m["routes"] = Counter(
            "llmctl_route_requests",
            "Generation requests by the route that served them (local, upstream:<name>)",
            ["route"],
            registry=registry,
        )
        self._m["fallbacks"] = Counter(
            "llmctl_fallbacks", "Local failures handed to the upstreams, by local reason", ["reason"], registry=registry
        )
        self._m["attempts"] = Counter(
            "llmctl_upstream_attempts",
            "Requests sent to an upstream, by outcome",
            ["upstream", "outcome"],
            registry=registry,
        )
        state = Gauge(
            "llmctl_upstream_circuit_state",
            "Circuit per upstream: 0 closed, 1 half-open, 2 open",
            ["upstream"],
            registry=registry,
        )
        for name, breaker in self.breakers.items():
            state.labels(upstream=name).set_function(functools.partial(_circuit_value, breaker))
        self._m["cost"] = Counter(
            "llmctl_route_cost_usd",
            "What the requests an upstream served cost, in USD, "
            "from its prices (the usage ledger's cost; local is free)",
            ["route"],
            registry=registry,
        )
        if self.dropped is not None:
            registry.register(
                _ReadCounter(
                    "llmctl_usage_ledger_dropped", "Usage records dropped (queue full or write failed)", self.dropped
                )
            )

    def _inc(self, name: str, **labels: str) -> None:
        m = self._m.get(name)
        if m is not None:
            m.labels(**labels).inc()

    # -- recording ---------------------------------------------------------------------------------

    def observe(self, record: dict) -> None:
        """Serve's access record of a finished request: count its route, hand it to the ledger."""
        endpoint = RECORDED_PATHS.get(record.get("path", ""))
        if endpoint is None or record.get("method") != "POST":
            return
        route = record.get("route") or "none"  # refused before routing (401, 429, 413)
        if route != "none":
            self._inc("routes", route=route)
        prompt = int(record.get("prompt_tokens") or 0)
        completion = int(record.get("completion_tokens") or 0)
        upstream = (
            next((u for u in self.routing.upstreams if u.route == route), None)
            if route not in ("local", "none")
            else None
        )
        cost = upstream.cost(prompt, completion) if upstream is not None else 0.0
        if cost > 0 and "cost" in self._m:
            self._m["cost"].labels(route=route).inc(cost)
        if self.recorder is None:
            return
        # A tuple in the ledger's COLUMNS order (usage/ledger.py): the cheapest row to build and to write.
        self.recorder(
            (
                time.time(),  # ts
                record.get("key_id"),  # key_id
                record.get("client"),  # client
                route,  # route
                record.get("model") or self.served_model,  # model
                endpoint,  # endpoint
                bool(record.get("stream")),  # stream
                prompt,  # prompt_tokens
                completion,  # completion_tokens
                float(record.get("duration_ms") or 0.0),  # latency_ms
                int(record.get("status") or 0),  # status
                record.get("error"),  # error
                cost,  # cost
            )
        )

    # -- routing -----------------------------------------------------------------------------------

    def private(self, headers: Any, body: dict) -> bool:
        for h in self.routing.privacy_headers:
            value = headers.get(h)
            if value is not None and value.strip().lower() not in ("", "0", "false", "no", "off"):
                return True
        patterns = self.routing.privacy_patterns
        if patterns:
            if has_token_ids(body):
                return True  # cannot be read, so it cannot be shown to be free of a pattern
            return any(p.search(text) for text in request_texts(body) for p in patterns)
        return False

    def backoff(self, n: int) -> float:
        cap = min(self.routing.backoff_max_s, self.routing.backoff_initial_s * (2**n))
        return self.rng() * cap

    async def handle(self, request: Any, endpoint: str, error: Exception, info: dict) -> Any:
        """A response from an upstream, an error response, or None (no fallback: serve answers
        with the local error)."""
        code = getattr(error, "code", "error")
        message = getattr(error, "message", str(error))
        if self.routing.airgap:
            info["error"] = "airgap"
            return error_response(
                503,
                f"The local model cannot take this request ({code}: {message}) and airgap "
                "mode keeps every request on this host; try again later.",
                "server_error",
                "local_unavailable_airgap",
                retry_after=getattr(error, "retry_after", None) or 1,
            )
        if not self.routing.upstreams or request.headers.get(FORWARDED_HEADER):
            return None  # no fallback; nor for a request another llmctl forwarded (no loops)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        self._inc("fallbacks", reason=code)
        private = self.private(request.headers, body)
        tried: list[str] = []
        for up in self.routing.upstreams:
            if private and up.cloud:
                tried.append(f"{up.name}: skipped, the request is private")
                continue
            remote = up.remote_model(body.get("model"), self.served_model)
            if remote is None:
                tried.append(f"{up.name}: skipped, no model mapping for '{body.get('model') or self.served_model}'")
                continue
            breaker = self.breakers[up.name]
            if not breaker.allow():
                tried.append(f"{up.name}: skipped, circuit open")
                self._inc("attempts", upstream=up.name, outcome="circuit_open")
                continue
            result = await self._try(up, breaker, endpoint, body, remote, info)
            if not isinstance(result, Failed):
                return result
            tried.append(f"{up.name}: {result}")
        info["error"] = "no_route"
        return error_response(
            503,
            f"The local model cannot take this request ({code}) and no upstream could: " + "; ".join(tried),
            "server_error",
            "no_route",
            retry_after=1,
        )

    async def _try(
        self, up: Upstream, breaker: CircuitBreaker, endpoint: str, body: dict, remote: str, info: dict
    ) -> Any:
        attempts = 1 + self.routing.retries
        last: Failed = Failed("not tried", False)
        for n in range(attempts):
            if n:
                await asyncio.sleep(self.backoff(n - 1))
            try:
                result = await self._send(up, endpoint, body, remote, info)
            except BaseException:
                breaker.release()
                raise
            if not isinstance(result, Failed):
                breaker.success()
                self._inc("attempts", upstream=up.name, outcome="ok")
                return result
            breaker.failure()
            self._inc("attempts", upstream=up.name, outcome=result.reason.split(" ")[0].lower())
            last = result
            if not result.retryable or breaker.state != CLOSED:
                break
        return last

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _client_for(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    def _payload(self, body: dict, remote: str, stream: bool) -> dict:
        payload = dict(body)
        payload["model"] = remote
        if self.max_tokens is not None:
            for k in ("max_tokens", "max_completion_tokens"):
                if isinstance(payload.get(k), int) and payload[k] > self.max_tokens:
                    payload[k] = self.max_tokens
            if not payload.get("max_tokens") and not payload.get("max_completion_tokens"):
                payload["max_tokens"] = self.max_tokens
        if stream:
            options = dict(payload.get("stream_options") or {})
            options["include_usage"] = True  # the ledger needs the tokens; stripped if the client did not ask
            payload["stream_options"] = options
        return payload

    async def _send(self, up: Upstream, endpoint: str, body: dict, remote: str, info: dict) -> Any:
        import httpx
        from starlette.responses import JSONResponse

        stream = bool(body.get("stream"))
        url = up.base_url + ("/chat/completions" if endpoint == "chat" else "/completions")
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            FORWARDED_HEADER: "1",
        }
        if up.api_key:
            headers["authorization"] = f"Bearer {up.api_key}"
        client = self._client_for()
        request = client.build_request(
            "POST", url, json=self._payload(body, remote, stream), headers=headers, timeout=httpx.Timeout(up.timeout_s)
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException:
            return Failed("timeout", True)
        except httpx.TransportError as exc:
            return Failed(f"connect_error ({type(exc).__name__})", True)
        if response.status_code != 200:
            await response.aclose()
            code = response.status_code
            return Failed(f"http_{code}", code >= 500 or code in (408, 429))
        if not stream:
            try:
                raw = await response.aread()
                data = json.loads(raw)
            except httpx.TimeoutException:
                return Failed("timeout", True)
            except (httpx.TransportError, ValueError) as exc:
                return Failed(f"bad_response ({type(exc).__name__})", True)
            finally:
                await response.aclose()
            if not isinstance(data, dict) or "choices" not in data:
                return Failed("bad_response (no choices)", False)
            usage = data.get("usage") or {}
            info.update(
                route=up.route,
                model=str(data.get("model") or remote),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            if data.get("choices"):
                info["finish"] = data["choices"][0].get("finish_reason")
            return JSONResponse(data)
        # A stream: wait for its first event before committing to this upstream.
        lines = response.aiter_lines()
        first: list[str] = []
        try:
            async for line in lines:
                if line.startswith("data:"):
                    first.append(line)
                    break
        except httpx.TimeoutException:
            await response.aclose()
            return Failed("timeout", True)
        except httpx.HTTPError as exc:
            await response.aclose()
            return Failed(f"stream_error ({type(exc).__name__})", True)
        if not first:
            await response.aclose()
            return Failed("empty_stream", True)
        info.update(route=up.route, model=remote)
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return SSERelay(response, lines, first, info, client_usage)


class SSERelay:
    """ASGI response relaying an upstream's SSE stream (committed: it stays on this upstream)."""

    def __init__(self, response: Any, lines: Any, first: list[str], info: dict, client_usage: bool) -> None:
        self.response, self.lines, self.first, self.info, self.client_usage = response, lines, first, info, client_usage
        self.status_code = 200

    def _event(self, line: str) -> bytes | None:
        payload = line[5:].strip()
        if payload == "[DONE]":
            return None
        try:
            obj = json.loads(payload)
        except ValueError:
            return ("data: " + payload + "\n\n").encode()
        if isinstance(obj, dict):
            if obj.get("model"):
                self.info["model"] = str(obj["model"])
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.info["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
                self.info["completion_tokens"] = int(usage.get("completion_tokens") or 0)
            choices = obj.get("choices")
            if choices:
                reason = choices[0].get("finish_reason")
                if reason is not None:
                    self.info["finish"] = reason
            elif usage is not None and not self.client_usage:
                return b""  # the usage-only chunk we asked for on the ledger's behalf
            if "error" in obj and not choices:
                self.info["error"] = "upstream_stream_error"
        return ("data: " + payload + "\n\n").encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Relay until the upstream ends; a client that leaves stops the relay and closes the
        upstream's connection at once (uvicorn drops writes to a gone client silently, so the
        disconnect is watched on `receive`)."""
        relay = asyncio.ensure_future(self._relay(send))
        watch = asyncio.ensure_future(self._until_disconnect(receive))
        try:
            done, _ = await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if relay in done:
                relay.result()
            else:
                self.info["error"] = "client_disconnected"
        finally:
            for task in (watch, relay):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await self.response.aclose()

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _relay(self, send: Any) -> None:
        import httpx

        async def out(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            try:
                for line in self.first:
                    data = self._event(line)
                    if data:
                        await out(data)
                async for line in self.lines:
                    if not line.startswith("data:"):
                        continue
                    data = self._event(line)
                    if data is None:
                        break
                    if data:
                        await out(data)
            except httpx.HTTPError as exc:
                self.info["error"] = "upstream_broke"
                await out(
                    error_event(f"the upstream stream broke: {type(exc).__name__}", "server_error", "upstream_broke")
                )
            await out(b"data: [DONE]\n\n", more=False)
        except OSError:  # the client left mid-write
            self.info["error"] = "client_disconnected"
