"""Fake OpenAI-compatible upstreams: real HTTP servers on 127.0.0.1 (stdlib, one thread each).

kind "fail":   every request gets 500 with an OpenAI-shaped error
kind "hang":   accepts the request, reads it, and never answers (until the server stops)
kind "ok":     answers /chat/completions and /completions; with "stream": true, SSE chunks
               (several content chunks, then the usage chunk when stream_options.include_usage)
kind "slow":   streams 100 chunks, one every 0.1 s; `aborted` is set when the reader hangs up

Each server records what it received (path, headers, JSON body) so tests can check what left.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
WORDS = ["Hello", " from", " the", " fake", " upstream", ".", "!"]  # one per completion token


@dataclass
class Received:
    path: str
    headers: dict
    body: dict


@dataclass
class FakeUpstream:
    kind: str
    server: ThreadingHTTPServer
    thread: threading.Thread
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)
    sent_chunks: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def hits(self) -> int:
        return len(self.received)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _handler(fake: FakeUpstream):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _json(self, status: int, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            fake.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if fake.kind == "fail":
                self._json(500, {"error": {"message": "upstream is broken", "type": "server_error", "code": None}})
                return
            if fake.kind == "hang":
                fake.release.wait(60)
                self.close_connection = True
                return
            if fake.kind == "slow":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for i in range(100):
                        chunk = {
                            "id": "s",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": "slow",
                            "choices": [{"index": 0, "delta": {"content": f"{i} "}, "finish_reason": None}],
                        }
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        fake.sent_chunks += 1
                        if fake.release.wait(0.1):
                            return
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except OSError:
                    fake.aborted.set()
                return
            model = body.get("model", "?")
            chat = self.path.endswith("/chat/completions")
            usage = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            }
            if not body.get("stream"):
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}
                    if chat
                    else {"index": 0, "text": "".join(WORDS), "finish_reason": "stop", "logprobs": None}
                )
                self._json(
                    200,
                    {
                        "id": "cmpl-fake",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                    },
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            obj = "chat.completion.chunk" if chat else "text_completion"

            def event(doc) -> None:
                payload = doc if isinstance(doc, str) else json.dumps(doc)
                self.wfile.write(f"data: {payload}\n\n".encode())
                self.wfile.flush()

            for i, word in enumerate(WORDS):
                last = i == len(WORDS) - 1
                choice = (
                    {"index": 0, "delta": {"content": word}, "finish_reason": "stop" if last else None}
                    if chat
                    else {"index": 0, "text": word, "finish_reason": "stop" if last else None}
                )
                event({"id": "cmpl-fake", "object": obj, "created": 0, "model": model, "choices": [choice]})
            if (body.get("stream_options") or {}).get("include_usage"):
                event({"id": "cmpl-fake", "object": obj, "created": 0, "model": model, "choices": [], "usage": usage})
            event("[DONE]")
            self.close_connection = True

    return Handler


def start(kind: str) -> FakeUpstream:
    assert kind in ("fail", "hang", "ok", "slow")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    fake = FakeUpstream(kind, server, threading.Thread(target=server.serve_forever, daemon=True))
    server.RequestHandlerClass = _handler(fake)
    fake.thread.start()
    return fake
