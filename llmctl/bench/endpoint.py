"""The endpoint benchmark: a running OpenAI-compatible server (llmctl serve, llama-server, Ollama,
vLLM...), streamed with httpx at one or more concurrency levels.

Per request, from the client's side of the wire:
- TTFT: request sent -> first chunk that carries text;
- ITL: the gaps between successive text chunks;
- E2E: request sent -> stream finished;
- output tokens: `usage.completion_tokens` when the server reports it (stream_options.include_usage),
  else the number of text chunks.
Per level: output tokens/s and requests/s over the level's wall time (first request sent -> last done).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmctl.bench.results import EndpointResult, Latency
from llmctl.errors import OperationFailed, UsageError

Progress = Callable[[str], None]

DEFAULT_PROMPT = (
    "You are benchmarking a language model server. Write a long, detailed story about a "
    "lighthouse keeper who maintains the light on a remote island through a winter of storms."
)


@dataclass(frozen=True)
class EndpointParams:
    url: str
    model: str | None = None  # None: the first id of GET /v1/models, else "default"
    concurrency: tuple[int, ...] = (1,)
    requests: int | None = None  # per level; None: max(4, 2 * concurrency)
    n_gen: int = 128  # max_tokens
    prompt: str = DEFAULT_PROMPT
    api: str = "chat"  # "chat" (/v1/chat/completions) or "completions" (/v1/completions)
    api_key: str | None = None
    timeout_s: float = 300.0
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--url: expected http://HOST:PORT, got {self.url!r}")
        if self.api not in ("chat", "completions"):
            raise UsageError(f"--api: expected chat or completions, got {self.api!r}")
        if any(c < 1 for c in self.concurrency) or not self.concurrency:
            raise UsageError("--concurrency: values must be at least 1")
        if self.requests is not None and self.requests < 1:
            raise UsageError("--requests: must be at least 1")
        if self.n_gen < 1:
            raise UsageError("-n: the endpoint benchmark needs at least one output token")

    @property
    def base(self) -> str:
        base = self.url.rstrip("/")
        return base[:-3] if base.endswith("/v1") else base

    def n_requests(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else max(4, 2 * concurrency)


@dataclass
class _Sample:
    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.chunks


def _headers(p: EndpointParams) -> dict[str, str]:
    h = {"Accept": "text/event-stream"}
    if p.api_key:
        h["Authorization"] = f"Bearer {p.api_key}"
    return h


def _body(p: EndpointParams, model: str) -> tuple[str, dict[str, Any]]:
    common = {
        "model": model,
        "max_tokens": p.n_gen,
        "stream": True,
        "temperature": 0.0,
        "stream_options": {"include_usage": True},
    }
    if p.api == "chat":
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": p.prompt}]}
    return "/v1/completions", {**common, "prompt": p.prompt}


def _error_text(status: int, raw: bytes) -> str:
    try:
        msg = json.loads(raw).get("error", {})
        msg = msg.get("message") if isinstance(msg, dict) else msg
    except (ValueError, AttributeError):
        msg = None
    return f"HTTP {status}: {msg or raw[:200].decode(errors='replace').strip() or 'no body'}"


def _text_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""


async def _one(client: Any, path: str, body: dict[str, Any], headers: dict[str, str]) -> _Sample:
    import httpx

    s = _Sample()
    t0 = time.perf_counter()
    last: float | None = None
    try:
        async with client.stream("POST", path, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                s.error = _error_text(resp.status_code, await resp.aread())
                return s
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    s.error = f"bad stream chunk: {data[:80]!r}"
                    return s
                if "error" in chunk:
                    err = chunk["error"]
                    s.error = f"stream error: {err.get('message') if isinstance(err, dict) else err}"
                    return s
                now = time.perf_counter()
                if any(_text_of(c) for c in chunk.get("choices") or []):
                    if last is None:
                        s.ttft_s = now - t0
                    else:
                        s.gaps_s.append(now - last)
                    last = now
                    s.chunks += 1
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    s.completion_tokens = usage.get("completion_tokens", s.completion_tokens)
                    s.prompt_tokens = usage.get("prompt_tokens", s.prompt_tokens)
    except httpx.HTTPError as exc:
        s.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return s
    s.e2e_s = time.perf_counter() - t0
    if s.ttft_s is None:
        s.error = "the stream carried no text"
        return s
    s.ok = True
    return s


async def _discover_model(client: Any, headers: dict[str, str]) -> str:
    import httpx

    try:
        resp = await client.get("/v1/models", headers=headers)
        if resp.status_code == 200:
            data = resp.json().get("data") or []
            if data and isinstance(data[0], dict) and data[0].get("id"):
                return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return "default"


async def _level(client: Any, p: EndpointParams, model: str, c: int, say: Progress) -> EndpointResult:
    path, body = _body(p, model)
    headers = _headers(p)
    n = p.n_requests(c)
    samples: list[_Sample] = []
    next_i = 0
    test_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            next_i += 1
            s = await _one(client, path, body, headers)
            samples.append(s)
            say(f"bench c{c}: request {len(samples)}/{n} {'done' if s.ok else 'failed: ' + (s.error or '?')}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(c, n))))
    duration = time.perf_counter() - t0
    ok = [s for s in samples if s.ok]
    prompt_tokens = next((s.prompt_tokens for s in ok if s.prompt_tokens is not None), None)
    return EndpointResult(
        url=p.base,
        api=p.api,
        model=model,
        concurrency=c,
        n_requests=n,
        n_ok=len(ok),
        n_failed=n - len(ok),
        n_gen=p.n_gen,
        prompt_tokens=prompt_tokens,
        output_tokens=sum(s.tokens for s in ok),
        duration_s=duration,
        ttft_ms=Latency.of([1000 * s.ttft_s for s in ok if s.ttft_s is not None]),
        itl_ms=Latency.of([1000 * g for s in ok for g in s.gaps_s]),
        e2e_ms=Latency.of([1000 * s.e2e_s for s in ok]),
        test_time=test_time,
        errors=tuple(dict.fromkeys(s.error for s in samples if s.error))[:5],
    )


async def _run(p: EndpointParams, say: Progress) -> list[EndpointResult]:
    import httpx

    limits = httpx.Limits(max_connections=max(p.concurrency) + 2, max_keepalive_connections=max(p.concurrency) + 2)
    timeout = httpx.Timeout(p.timeout_s, connect=min(p.timeout_s, 10.0))
    async with httpx.AsyncClient(base_url=p.base, limits=limits, timeout=timeout) as client:
        model = p.model or await _discover_model(client, _headers(p))
        if p.warmup:
            say(f"bench {p.base}: warm-up request (model {model})")
            path, body = _body(p, model)
            s = await _one(client, path, body, _headers(p))
            if not s.ok:
                raise OperationFailed(
                    f"{p.base}{path}: warm-up request failed: {s.error}",
                    hint="is the server running, and is the API key right?",
                )
        return [await _level(client, p, model, c, say) for c in p.concurrency]


def run_endpoint(p: EndpointParams, *, progress: Progress | None = None) -> list[EndpointResult]:
    return asyncio.run(_run(p, progress or (lambda _m: None)))
