"""Issue 13 against a real `llmctl serve` (a subprocess on 127.0.0.1, the smoke model): bad input is a
400 in OpenAI's shape, slow or idle connections are cut, connections and open files are bounded,
X-Forwarded-For is believed only from configured proxies, and /health says 503 while draining.
After the hostile requests, each server is alive and serving. Schemas: test_serve_schemas.py;
random bodies: test_serve_fuzz.py.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests._serve import Server, assert_openai_error, metric, poll, start_smoke, stop_server

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

NO_EOS = {"1": -100, "106": -100}  # the smoke model's <eos> and <end_of_turn>: keep a stream going
MSG = [{"role": "user", "content": "hi"}]


def serve(home: Path, smoke_store: Path, limits: str = "", service: str = "", **kw) -> Server:
    return start_smoke(
        home,
        smoke_store,
        limits="max_body_bytes: 65536\nmax_tokens: 16\n" + limits,
        service="shutdown_timeout_s: 5\n" + service,
        **kw,
    )


def still_serving(server: Server) -> None:
    assert server.proc.poll() is None, "\n".join(server.log_lines()[-20:])
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "One, two,", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def access_records(server: Server) -> list[dict]:
    return [
        r for r in (json.loads(ln) for ln in server.log_lines() if ln.startswith("{")) if r.get("event") == "access"
    ]


@pytest.fixture(scope="module")
def hard(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = serve(
        tmp_path_factory.mktemp("hard"), smoke_store, "rate_limit_rpm: 0\nheader_timeout_s: 1\nbody_timeout_s: 2\n"
    )
    try:
        yield server
    finally:
        assert stop_server(server) == 0, "\n".join(server.log_lines()[-20:])


# -- item 4 and 13: bad input is a 400 naming the field, never a 500 -----------------------------------


BAD = [
    # (path, raw body, the param the error names)
    ("/v1/completions", b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", None),
    ("/v1/completions", b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}", "prompt"),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}], "echo": {"\\ud800": 1}}',
        "echo.\\ud800",
    ),  # the key in the error is written as an escape: the error itself must encode
    ("/v1/completions", b'{"prompt": [1000000000], "max_tokens": 2}', "prompt[0]"),
    ("/v1/completions", b'{"prompt": [-5], "max_tokens": 2}', "prompt[0]"),
    ("/v1/completions", b'{"prompt": [], "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt": [2, 100], "echo": true, "max_tokens": 2}', "echo"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {}}',
        "response_format",
    ),
    ("/v1/chat/completions", b'{"messages": [{"content": "hi"}], "max_tokens": 2}', "messages[0].role"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "5"}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": true}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "stream": "yes"}', "stream"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "logit_bias": {"5": NaN}}', None),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "logit_bias": {"-5": 10}}', "logit_bias"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "logit_bias": {"262144": 10}}', "logit_bias"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 2, "temperature": 1e999}', None),
    (
        "/v1/chat/completions",
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": "data:image/png;base64,AAAA"}}]}], "max_tokens": 2}'
        ),
        "messages[0].content[0].type",
    ),
    ("/v1/embeddings", b'{"input": "\\udfff"}', None),  # embeddings are off here: 400 either way
]


@pytest.mark.parametrize("path, raw, param", BAD, ids=[f"{i}-{p[1][:40]!r}" for i, p in enumerate(BAD)])
def test_bad_input_is_400_in_openai_shape(hard, path, raw, param):
    r = httpx.post(hard.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    err = assert_openai_error(r, 400)
    if param is not None:
        assert err["param"] == param, err
    still_serving(hard)


def test_content_parts_are_the_same_prompt_as_a_string(hard):
    text = "Tell me about the weather in Paris today please."
    as_string = httpx.post(
        hard.url + "/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": text}], "max_tokens": 1},
    ).json()
    as_parts = httpx.post(
        hard.url + "/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], "max_tokens": 1},
    ).json()
    assert as_parts["usage"]["prompt_tokens"] == as_string["usage"]["prompt_tokens"] > 15
    split = httpx.post(
        hard.url + "/v1/chat/completions",
        timeout=60,
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Tell me about"}, {"type": "text", "text": "the weather."}],
                }
            ],
            "max_tokens": 1,
        },
    )
    assert split.status_code == 200 and split.json()["usage"]["prompt_tokens"] > 7


# -- item 3: connections --------------------------------------------------------------------------------


def closed_by_server(sock: socket.socket, deadline_s: float = 30.0) -> bytes:
    """Read until the server closes the connection (within the deadline); what it sent first."""
    sock.settimeout(deadline_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {deadline_s}s") from None
    except ConnectionResetError:
        pass
    return data


def test_idle_and_half_sent_requests_are_cut(hard):
    before = httpx.get(hard.url + "/metrics").text
    idle = socket.create_connection(("127.0.0.1", hard.port))
    half = socket.create_connection(("127.0.0.1", hard.port))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        assert closed_by_server(idle) == b""
        assert closed_by_server(half) == b""
    finally:
        idle.close()
        half.close()
    after = httpx.get(hard.url + "/metrics").text
    label = 'reason="header_timeout"'
    assert (
        metric(after, "llmctl_connections_closed_total", label)
        >= metric(before, "llmctl_connections_closed_total", label) + 2
    )
    still_serving(hard)


def test_a_body_sent_one_byte_at_a_time_is_cut(hard):
    sock = socket.create_connection(("127.0.0.1", hard.port))
    body = json.dumps({"prompt": "x" * 200, "max_tokens": 1}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    stop = threading.Event()

    def drip() -> None:  # the slow client under test: a byte every 0.1 s, until the server hangs up
        for b in body:
            if stop.wait(0.1):
                return
            try:
                sock.send(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        assert closed_by_server(sock) == b""
    finally:
        stop.set()
        t.join(5)
        sock.close()
    record = poll(
        lambda: next((r for r in access_records(hard) if r.get("error") == "body_timeout"), None),
        what="the access record of the cut request",
    )
    assert record["path"] == "/v1/completions" and record["status"] == 499
    still_serving(hard)


def test_a_content_length_over_the_limit_is_413_at_once(hard):
    sock = socket.create_connection(("127.0.0.1", hard.port))
    try:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )  # and no body at all
        sock.settimeout(30)
        head = sock.recv(4096)  # before any byte of the body was sent
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"request_too_large" in head + sock.recv(4096)
    finally:
        sock.close()
    # A client still sending its body gets the 413 too, not a reset.
    r = httpx.post(
        hard.url + "/v1/completions",
        content=b'{"prompt": "' + b"x" * 200_000 + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert_openai_error(r, 413, "request_too_large")
    still_serving(hard)


def test_keep_alive_connections_serve_request_after_request(hard):
    with httpx.Client(base_url=hard.url, timeout=60) as c:
        for _ in range(3):
            assert c.get("/health").status_code == 200
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 200, r.text


# -- item 8: X-Forwarded-For ------------------------------------------------------------------------------


class FromAddress(httpx.HTTPTransport):
    """A client whose connections come from a chosen loopback address (127.0.0.2 stands for a proxy)."""

    def __init__(self, address: str) -> None:
        super().__init__(local_address=address)


def test_forwarded_for_is_believed_only_from_trusted_proxies(smoke_store, tmp_path):
    server = serve(
        tmp_path / "xff",
        smoke_store,
        "rate_limit_rpm: 60\nrate_limit_burst: 5\n",
        service="trusted_proxies: [127.0.0.2]\n",
    )
    try:
        # A local client cannot pick its address: every X-Forwarded-For lands in its own bucket.
        codes = [
            httpx.get(server.url + "/v1/models", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
            for i in range(10)
        ]
        assert codes == [200] * 5 + [429] * 5
        local = poll(
            lambda: len(r := [r for r in access_records(server) if r["path"] == "/v1/models"]) == 10 and r,
            what="10 access records",
        )
        assert {r["client"] for r in local} == {"127.0.0.1"}
        seen = len(access_records(server))
        # The trusted proxy's word is taken: the client is the address it forwards for.
        with httpx.Client(transport=FromAddress("127.0.0.2"), base_url=server.url) as proxy:
            assert proxy.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
            assert proxy.get("/health", headers={"X-Forwarded-For": "<script>alert(1)</script>"}).status_code == 200
        records = poll(lambda: len(r := access_records(server)) >= seen + 2 and r, what="the access records")
        assert records[-2]["client"] == "203.0.113.7"
        assert records[-1]["client"] == "invalid"  # never a free-form string from a header
    finally:
        assert stop_server(server) == 0


# -- item 3: connection cap, open-file limit, accept errors ------------------------------------------------


def test_connections_are_capped_within_the_open_file_limit(smoke_store, tmp_path):
    """RLIMIT_NOFILE 96 (as LimitNOFILE=96 would set it): serve fits its connections into it (39
    served, 48 open at most), answers 503 past the first number, closes connections past the second
    at once, logs accept errors at the limit at most once a second, and serves again after a flood."""
    t_start = time.monotonic()
    server = serve(tmp_path / "fd", smoke_store, "header_timeout_s: 120\n", open_files=96)
    socks: list[socket.socket] = []
    try:
        assert any("allows 39 connections, not max_connections=256" in ln for ln in server.log_lines())
        socks += [socket.create_connection(("127.0.0.1", server.port)) for _ in range(48)]
        poll(lambda: _open_connections(server) >= 48, what="48 connections to be open")
        extra = socket.create_connection(("127.0.0.1", server.port))  # the 49th: closed at once
        assert closed_by_server(extra) == b""
        extra.close()
        socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # 48 open >= 39 + 1: uvicorn's 503
        assert closed_by_server(socks[0]).startswith(b"HTTP/1.1 503 ")
        for _ in range(200):  # a flood: each accepted and closed at once, or refused for a while (EMFILE)
            try:
                socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            except OSError:
                pass
        assert server.proc.poll() is None
    finally:
        for s in socks:
            s.close()
    text = poll(
        lambda: (r := _get(server, "/metrics")) is not None and r.status_code == 200 and r.text,
        what="the server to answer again",
    )
    assert metric(text, "llmctl_connections_closed_total", 'reason="connection_limit"') >= 1
    still_serving(server)
    elapsed = time.monotonic() - t_start
    lines = server.log_lines()
    # At most one line a second for each kind (each line counts the ones it stands for).
    assert len([ln for ln in lines if "cannot accept connections" in ln]) <= elapsed + 1
    assert len([ln for ln in lines if "closing new ones" in ln]) <= elapsed + 1
    assert len([ln for ln in lines if "Exceeded concurrency limit" in ln]) <= elapsed + 1
    assert not any("Traceback" in ln or "out of system resource" in ln for ln in lines)
    assert server.log_path.stat().st_size < 100_000
    assert stop_server(server) == 0


def _get(server: Server, path: str):
    try:
        return httpx.get(server.url + path, timeout=10)
    except httpx.TransportError:
        return None


def _open_connections(server: Server) -> int:
    import psutil

    return len(
        [c for c in psutil.Process(server.proc.pid).net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED]
    )


# -- item 13: /health during the SIGTERM drain ----------------------------------------------------------


def test_health_is_503_while_draining_then_the_server_exits_0(smoke_store, tmp_path):
    home = tmp_path / "drain"
    server = serve(home, smoke_store, "max_tokens: 400\n", service="shutdown_timeout_s: 30\n")
    outcome: dict = {}
    started = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                server.url + "/v1/completions",
                timeout=120,
                json={"prompt": "Tell a long story:", "max_tokens": 400, "stream": True, "logit_bias": NO_EOS},
            ) as r:
                lines = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        started.set()
                outcome["lines"] = lines
        except httpx.HTTPError as exc:
            outcome["error"] = exc
        finally:
            started.set()

    t = threading.Thread(target=stream)
    t.start()
    try:
        assert started.wait(120) and "error" not in outcome
        server.proc.send_signal(signal.SIGTERM)
        # Still listening while the stream finishes: /health says why it is not healthy.
        r = poll(
            lambda: (h := httpx.get(server.url + "/health", timeout=10)).status_code == 503 and h,
            what="/health to answer 503",
        )
        assert_openai_error(r, 503, "shutting_down")
        assert int(r.headers["Retry-After"]) >= 1
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=30)
        assert_openai_error(r, 503, "shutting_down")
        assert server.proc.wait(60) == 0
        t.join(60)
        lines = outcome.get("lines")
        assert lines and (lines[-1] == "data: [DONE]" or json.loads(lines[-1][6:])["error"]["code"] == "shutting_down")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        t.join(10)
