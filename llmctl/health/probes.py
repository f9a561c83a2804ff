"""Probes: TCP connect, GET /health, the model in /v1/models, a one-token completion (and GPU offload).

Each probe has its own hard deadline (asyncio.timeout around the whole request, not only a
per-read timeout), so a port that accepts but never answers costs one timeout per attempt and no
more. A failed probe ends the attempt; the attempt is retried `retries` times, `retry_delay_s` apart.
Services are checked concurrently by the caller (run.py), so one hung service only costs its own
timeouts.

HTTP is the standard library's http.client, one connection per request in a daemon thread: cron runs
`llmctl health` every minute on every host, and an HTTP client library costs more CPU to import than
the whole check (benchmarks/bench_cold_start.py). When a deadline passes, the request's socket is shut
down, so its thread ends at once; no proxy is used (probes go to the service itself), redirects are
not followed, and https verifies the server against the system's CA store (ssl.create_default_context).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmctl import __version__

PROMPT = "Hello"
USER_AGENT = f"llmctl-health/{__version__}"
# /health, /v1/models and a one-token completion are a few hundred bytes. A body beyond this fails
# the probe: a server that streams forever costs a probe, never the health check's memory.
MAX_BODY_BYTES = 1 << 20

# log(event, level="info", **fields): a structured event for the caller to record.
Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields: Any) -> None:
    pass


@dataclass(frozen=True)
class Target:
    """One endpoint to check: a configured service or an ad-hoc --url."""

    name: str
    host: str
    port: int
    base_url: str  # scheme://host:port[/prefix], no trailing slash
    model: str | None = None  # expected in /v1/models; None: use the first one listed
    api_key: str | None = field(default=None, repr=False)
    unit: str | None = None  # systemd unit; None: cannot be restarted (ad-hoc --url)
    gpu: bool = False  # configured for a GPU: check that offload is active
    setup_error: str | None = None  # could not even prepare the check (e.g. unreadable key file)


@dataclass(frozen=True)
class ProbeSettings:
    timeout_s: float = 10.0
    retries: int = 2
    retry_delay_s: float = 1.0
    slow_ms: int = 2000
    check_gpu: bool = True


@dataclass(frozen=True)
class ProbeResult:
    probe: str  # tcp | health | models | completion | gpu
    ok: bool
    ms: float
    error: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """The last attempt's probes, and how many attempts it took."""

    ok: bool
    probes: tuple[ProbeResult, ...]
    attempts: int
    latency_ms: float | None = None  # the one-token completion, when it answered
    model: str | None = None
    gpu: str | None = None  # None: not checked; "active" | "inactive" | "unknown"
    gpu_detail: str | None = None

    @property
    def failed(self) -> ProbeResult | None:
        for p in self.probes:
            if not p.ok and p.probe != "gpu":
                return p
        return None

    def slow(self, settings: ProbeSettings) -> bool:
        return self.ok and self.latency_ms is not None and self.latency_ms > settings.slow_ms


class ProbeFailed(Exception):
    pass


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _error_text(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):  # asyncio.timeout's, and a socket's (socket.timeout)
        return f"timed out after {timeout_s:g}s"
    if isinstance(exc, ProbeFailed):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


@dataclass(frozen=True)
class Reply:
    """A response read in full, up to MAX_BODY_BYTES."""

    status_code: int
    body: bytes
    path: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class HttpClient:
    """What the probes of one run share: the per-request timeout and, made on first use, the TLS
    context. Each request has a connection of its own (no pool: a health run makes a few requests)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._tls: Any = None
        self._lock = threading.Lock()

    def tls(self) -> Any:
        with self._lock:
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            return self._tls

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def make_client(timeout_s: float) -> HttpClient:
    """The client the probes of one run share (`async with make_client(t) as client`)."""
    return HttpClient(timeout_s)


class _Exchange:
    """One request and its response, read in a worker thread with http.client. `abort()` (from the
    event loop, when the probe's deadline passes) shuts the socket down, so the thread returns now."""

    def __init__(
        self, client: HttpClient, method: str, url: str, body: bytes | None, headers: dict[str, str], limit: int
    ) -> None:
        parts = urlsplit(url)
        self.client, self.method, self.parts, self.body, self.limit = client, method, parts, body, limit
        self.path = parts.path or "/"
        self.headers = {"User-Agent": USER_AGENT, **headers, "Accept-Encoding": "identity"}
        self.conn: Any = None
        self.aborted = False

    def run(self) -> Reply:
        import http.client

        host, port = self.parts.hostname or "", self.parts.port
        if self.parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.client.timeout_s, context=self.client.tls()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.client.timeout_s)
        self.conn = conn
        try:
            conn.connect()
            if self.aborted:  # the deadline passed while connecting: send nothing
                raise TimeoutError
            target = self.path + (f"?{self.parts.query}" if self.parts.query else "")
            conn.request(self.method, target, body=self.body, headers=self.headers)
            response = conn.getresponse()
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ProbeFailed(f"{self.path}: compressed response ({encoding[:20]}) although not asked for")
            chunks, size = [], 0
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > self.limit:
                    raise ProbeFailed(f"{self.path}: response body larger than {self.limit} bytes")
                chunks.append(chunk)
            return Reply(response.status, b"".join(chunks), self.path)
        finally:
            conn.close()

    def abort(self) -> None:
        self.aborted = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """fn() in a daemon thread of its own: a request that never ends can neither hold up the other
    probes (no shared pool to queue in) nor the process's exit."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def work() -> None:
        try:
            result: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            result = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *result)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=work, name="llmctl-probe", daemon=True).start()
    return await future


async def fetch(
    client: HttpClient,
    method: str,
    url: str,
    *,
    limit: int = MAX_BODY_BYTES,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
) -> Reply:
    """One request whose body is read up to `limit` bytes (as sent: compression is refused, so the
    limit cannot be multiplied by a gzip bomb)."""
    headers = dict(headers or {})
    body = None
    if json_body is not None:
        body = json.dumps(json_body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    exchange = _Exchange(client, method, url, body, headers, limit)
    try:
        return await _in_thread(exchange.run)
    except BaseException:  # the deadline (cancellation) or a failure: the thread must not go on reading
        exchange.abort()
        raise


def _http_error(resp: Reply) -> str:
    detail = ""
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = str(body["error"].get("message", ""))
        elif isinstance(body, dict) and "detail" in body:
            detail = str(body["detail"])
    except ValueError:
        pass
    if resp.status_code == 401:
        hint = "unauthorized: check the service's api_keys_file (or --api-key)"
        return f"HTTP 401 {hint}"
    if resp.status_code == 503 and resp.path.endswith("/health"):
        return "HTTP 503 (model still loading or server not ready)"
    return f"HTTP {resp.status_code}" + (f": {detail[:160]}" if detail else "")


async def _tcp(target: Target, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        _reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass


async def check_once(client: HttpClient, target: Target, settings: ProbeSettings) -> CheckResult:
    """One attempt: every probe in order, stopping at the first that fails."""
    results: list[ProbeResult] = []
    timeout = settings.timeout_s
    health_doc: Any = None
    model = target.model
    latency: float | None = None
    headers = auth_headers(target)

    async def step(name: str, coro_fn: Callable[[], Any]) -> bool:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await coro_fn()
        except Exception as exc:  # noqa: BLE001 - every failure of a probe is a result
            results.append(ProbeResult(name, False, _ms(t0), _error_text(exc, timeout)))
            return False
        results.append(ProbeResult(name, True, _ms(t0)))
        return True

    async def ok_reply(method: str, path: str, json_body: Any = None) -> Reply:
        """The service's 200 reply, or ProbeFailed naming what it answered instead."""
        resp = await fetch(client, method, f"{target.base_url}{path}", headers=headers, json_body=json_body)
        if resp.status_code != 200:
            raise ProbeFailed(_http_error(resp))
        return resp

    async def tcp() -> None:
        await _tcp(target, timeout)

    async def health() -> None:
        nonlocal health_doc
        resp = await ok_reply("GET", "/health")
        try:
            health_doc = resp.json()
        except ValueError:
            health_doc = None

    async def models() -> None:
        nonlocal model
        resp = await ok_reply("GET", "/v1/models")
        try:
            ids = [str(m["id"]) for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ProbeFailed("/v1/models: not an OpenAI model list") from None
        if model is None:
            if not ids:
                raise ProbeFailed("/v1/models lists no model")
            model = ids[0]
        elif model not in ids:
            listed = ", ".join(ids[:5]) or "none"
            raise ProbeFailed(f"model {model!r} not listed by /v1/models (listed: {listed})")

    async def completion() -> None:
        nonlocal latency
        t0 = time.perf_counter()
        resp = await ok_reply(
            "POST", "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
        )
        try:
            choices = resp.json()["choices"]
            if not isinstance(choices, list) or not choices:
                raise KeyError("choices")
        except (ValueError, KeyError, TypeError):
            raise ProbeFailed("/v1/completions: not an OpenAI completion") from None
        latency = _ms(t0)

    ok = (
        await step("tcp", tcp)
        and await step("health", health)
        and await step("models", models)
        and await step("completion", completion)
    )
    gpu = gpu_detail = None
    if ok and target.gpu and settings.check_gpu:
        t0 = time.perf_counter()
        gpu, gpu_detail = await gpu_offload(target, health_doc, timeout)
        results.append(ProbeResult("gpu", gpu == "active", _ms(t0), None if gpu == "active" else gpu_detail))
    return CheckResult(
        ok=ok,
        probes=tuple(results),
        attempts=1,
        latency_ms=latency if ok else None,
        model=model,
        gpu=gpu,
        gpu_detail=gpu_detail,
    )


async def check(
    client: HttpClient,
    target: Target,
    settings: ProbeSettings,
    *,
    log: Log = _no_log,
    retries: int | None = None,
) -> CheckResult:
    """Probe with retries. Worst case: (retries+1) timeouts + retries delays, whatever else hangs."""
    retries = settings.retries if retries is None else retries
    result: CheckResult | None = None
    for attempt in range(1, retries + 2):
        result = await check_once(client, target, settings)
        if result.ok:
            break
        failed = result.failed
        log(
            "probe_failed",
            "warning",
            service=target.name,
            probe=failed.probe if failed else None,
            error=failed.error if failed else None,
            attempt=attempt,
            attempts=retries + 1,
        )
        if attempt <= retries and settings.retry_delay_s > 0:
            await asyncio.sleep(settings.retry_delay_s)
    assert result is not None
    return CheckResult(
        ok=result.ok,
        probes=result.probes,
        attempts=attempt,
        latency_ms=result.latency_ms,
        model=result.model,
        gpu=result.gpu,
        gpu_detail=result.gpu_detail,
    )


def auth_headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


# -- GPU offload ------------------------------------------------------------------------------------


async def gpu_offload(target: Target, health_doc: Any, timeout_s: float) -> tuple[str, str]:
    """("active" | "inactive" | "unknown", detail).

    First what the server says about itself in /health (`gpu_offload: true|false`); else whether
    nvidia-smi lists the process that listens on the service's port among its compute apps.
    """
    if isinstance(health_doc, dict) and isinstance(health_doc.get("gpu_offload"), bool):
        if health_doc["gpu_offload"]:
            return "active", "the server reports GPU offload"
        return "inactive", "the server reports no GPU offload"
    return await asyncio.to_thread(_gpu_from_nvidia_smi, target.port, timeout_s)


def _listening_pids(port: int) -> set[int]:
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):  # e.g. ProcSubset=pid hides /proc/net in the health unit
        return set()
    return {
        c.pid
        for c in conns
        if c.pid is not None and c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
    }


def _gpu_from_nvidia_smi(port: int, timeout_s: float) -> tuple[str, str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown", "GPU offload not confirmed: the server does not report it and nvidia-smi is not installed"
    pids = _listening_pids(port)
    if not pids:
        return "unknown", f"GPU offload not confirmed: cannot see the process listening on port {port}"
    try:
        proc = subprocess.run(
            [smi, "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown", f"GPU offload not confirmed: nvidia-smi failed ({exc.__class__.__name__})"
    if proc.returncode != 0:
        return "unknown", f"GPU offload not confirmed: nvidia-smi exited {proc.returncode}"
    gpu_pids = {int(x) for x in proc.stdout.split() if x.strip().isdigit()}
    if pids & gpu_pids:
        return "active", "nvidia-smi lists the server's process"
    return "inactive", "nvidia-smi does not list the server's process: running on the CPU"
