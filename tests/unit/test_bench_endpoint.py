"""The endpoint benchmark against a real HTTP server on 127.0.0.1 that speaks the OpenAI streaming
protocol (server-sent events) with fixed chunks. It stands in for `llmctl serve` / llama-server here;
tests/integration/test_bench_serve.py measures the real `llmctl serve`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmctl.bench.endpoint import EndpointParams, run_endpoint
from llmctl.errors import OperationFailed, UsageError


class SSEServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api_key: str | None = None
        self.fail_every = 0  # every n-th completion request answers 500
        self.usage = True  # send a usage chunk
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: threading.Event | None = None  # completions wait for it (to see concurrency)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: SSEServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, code: int, doc: dict) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _authorized(self) -> bool:
        if self.server.api_key is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.server.api_key}":
            return True
        self._json(401, {"error": {"message": "invalid API key", "type": "auth", "code": 401}})
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "sse-test-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorized():
            return
        srv = self.server
        with srv.lock:
            srv.bodies.append(body)
            n = len(srv.bodies)
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if srv.fail_every and n % srv.fail_every == 0:
                self._json(500, {"error": {"message": "model exploded", "type": "server_error", "code": 500}})
                return
            if srv.gate is not None:
                srv.gate.wait(timeout=10)
            chat = self.path == "/v1/chat/completions"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            n_tokens = int(body.get("max_tokens", 16))
            for i in range(n_tokens):
                choice = {"index": 0, "delta": {"content": f"t{i} "}} if chat else {"index": 0, "text": f"t{i} "}
                self._event({"id": "x", "choices": [choice]})
            if srv.usage:
                self._event(
                    {
                        "id": "x",
                        "choices": [],
                        "usage": {"prompt_tokens": 7, "completion_tokens": n_tokens, "total_tokens": 7 + n_tokens},
                    }
                )
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _event(self, doc: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
        self.wfile.flush()


@pytest.fixture
def sse_server() -> Iterator[SSEServer]:
    srv = SSEServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


def test_streams_and_measures(sse_server):
    progress: list[str] = []
    res = run_endpoint(
        EndpointParams(url=sse_server.url, concurrency=(1, 2), requests=4, n_gen=5), progress=progress.append
    )
    assert [r.concurrency for r in res] == [1, 2]
    for r in res:
        assert (r.n_requests, r.n_ok, r.n_failed) == (4, 4, 0)
        assert r.output_tokens == 20  # from usage
        assert r.prompt_tokens == 7
        assert r.model == "sse-test-model"  # discovered from /v1/models
        assert r.avg_ts > 0 and r.requests_per_s > 0
        assert 0 < r.ttft_ms.p50 <= r.e2e_ms.p50
        assert r.ttft_ms.p50 <= r.ttft_ms.p90 <= r.ttft_ms.p99
        assert r.itl_ms.mean >= 0
    body = sse_server.bodies[-1]
    assert body["stream"] is True and body["max_tokens"] == 5
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["role"] == "user"
    assert len(sse_server.bodies) == 1 + 4 + 4  # one warm-up request, then 4 per level
    assert any("c2: request 4/4 done" in line for line in progress)


def test_concurrency_really_is_parallel(sse_server):
    """The server holds every completion until two are in flight at once: a serial client would hang
    until the server's own 10 s timeout and then fail this assertion."""
    gate = threading.Event()
    sse_server.gate = gate

    def release_when_two_in_flight() -> None:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sse_server.max_in_flight < 2:
            time.sleep(0.01)
        gate.set()

    threading.Thread(target=release_when_two_in_flight, daemon=True).start()
    res = run_endpoint(EndpointParams(url=sse_server.url, concurrency=(2,), requests=2, n_gen=2, warmup=False))
    assert sse_server.max_in_flight == 2
    assert res[0].n_ok == 2


def test_completions_api_and_chunk_count_without_usage(sse_server):
    sse_server.usage = False
    res = run_endpoint(
        EndpointParams(url=sse_server.url + "/v1", api="completions", model="named", requests=2, n_gen=3)
    )
    assert res[0].output_tokens == 6  # counted text chunks
    assert res[0].prompt_tokens is None
    assert sse_server.bodies[-1]["model"] == "named" and sse_server.bodies[-1]["prompt"]


def test_api_key_is_sent_and_checked(sse_server):
    sse_server.api_key = "s3cret"
    res = run_endpoint(EndpointParams(url=sse_server.url, api_key="s3cret", requests=1, n_gen=2))
    assert res[0].n_ok == 1
    with pytest.raises(OperationFailed, match="warm-up request failed: HTTP 401: invalid API key"):
        run_endpoint(EndpointParams(url=sse_server.url, api_key="wrong", requests=1, n_gen=2))


def test_failed_requests_are_counted(sse_server):
    sse_server.fail_every = 2
    res = run_endpoint(EndpointParams(url=sse_server.url, requests=4, n_gen=2, warmup=False))
    assert (res[0].n_ok, res[0].n_failed) == (2, 2)
    assert res[0].errors == ("HTTP 500: model exploded",)


def test_unreachable_server_fails_cleanly(sse_server):
    url = sse_server.url
    sse_server.shutdown()
    sse_server.server_close()
    with pytest.raises(OperationFailed, match="warm-up request failed: ConnectError"):
        run_endpoint(EndpointParams(url=url, requests=1, n_gen=2, timeout_s=5))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"url": "localhost:8000"}, "--url"),
        ({"api": "embeddings"}, "--api"),
        ({"concurrency": (0,)}, "--concurrency"),
        ({"requests": 0}, "--requests"),
        ({"n_gen": 0}, "-n"),
    ],
)
def test_bad_params(kw, match):
    with pytest.raises(UsageError, match=match):
        EndpointParams(**{"url": "http://127.0.0.1:1", **kw})
