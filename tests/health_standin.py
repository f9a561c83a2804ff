"""Real HTTP servers on 127.0.0.1 that answer like `llmctl serve`, for health's tests and benchmark.

- StandIn(mode="ok"): /health 200, /v1/models lists the model, /v1/completions answers one token.
- mode="hang_completions": the port and /health answer, inference hangs (the case a port check misses).
- mode="fail_completions": inference answers 500 at once (a quick failure, for policy tests).
- mode="loading": /health 503, as serve answers while the model loads.
- mode="slow": completions answer after `delay_s`.
- api_key="k": 401 in OpenAI's shape without `Authorization: Bearer k` (except /health).
- HangServer: accepts TCP connections and never answers anything (what SIGSTOP looks like).

`python -m tests.health_standin --port P [--model M] [--mode MODE]` runs one in the foreground
(for tests that need a real process to SIGSTOP, kill and relaunch).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, typ: str, code: str) -> None:
        self._send(status, {"error": {"message": message, "type": typ, "code": code}})

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        self._error(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        return False

    def _hang(self) -> None:
        self.server.hanging += 1
        self.server.release.wait()

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append(("GET", self.path))
        if self.path == "/health":
            if self.server.mode == "hang_all":
                return self._hang()
            if self.server.mode == "loading":
                return self._send(503, {"status": "loading"})
            doc = {"status": "ok", "model": self.server.model}
            if self.server.gpu_offload is not None:
                doc["gpu_offload"] = self.server.gpu_offload
            return self._send(200, doc)
        if self.path == "/v1/models":
            if not self._authorized():
                return None
            return self._send(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        self._error(404, "not found", "invalid_request_error", "not_found")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(("POST", self.path))
        if self.path != "/v1/completions":
            return self._error(404, "not found", "invalid_request_error", "not_found")
        if not self._authorized():
            return None
        if self.server.mode == "hang_completions":
            return self._hang()
        if self.server.mode == "fail_completions":
            return self._error(500, "engine failed", "server_error", "internal_error")
        if body.get("model") != self.server.model:
            return self._error(
                404, f"model {body.get('model')!r} not found", "invalid_request_error", "model_not_found"
            )
        if self.server.mode == "slow":
            self.server.release.wait(self.server.delay_s)
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.server.model,
                "choices": [{"index": 0, "text": " there", "finish_reason": "length", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, model, mode, api_key, delay_s, gpu_offload):
        super().__init__(addr, _Handler)
        self.model = model
        self.mode = mode
        self.api_key = api_key
        self.delay_s = delay_s
        self.gpu_offload = gpu_offload
        self.release = threading.Event()
        self.hanging = 0
        self.requests: list[tuple[str, str]] = []


class StandIn:
    def __init__(
        self,
        model: str = "smoke",
        mode: str = "ok",
        *,
        api_key: str | None = None,
        delay_s: float = 0.0,
        gpu_offload: bool | None = None,
        port: int = 0,
    ) -> None:
        self.server = _Server(("127.0.0.1", port), model, mode, api_key, delay_s, gpu_offload)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def mode(self) -> str:
        return self.server.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.server.mode = value

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HangServer:
    """Accepts connections and never answers: the port is open, nothing behind it moves."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)

    def start(self) -> HangServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self) -> HangServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="smoke")
    ap.add_argument("--mode", default="ok")
    args = ap.parse_args()
    server = _Server(("127.0.0.1", args.port), args.model, args.mode, None, 0.0, None)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
