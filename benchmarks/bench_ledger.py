"""Requests/s through `llmctl serve`'s app with the usage ledger on against the ledger off, same run.

Two servers run side by side, each in its own process: serve's real HTTP app (create_app, the
Gate, the real Engine thread, the Router with its metrics), uvicorn on 127.0.0.1. They differ only
in the ledger: one records every request to SQLite (write-behind), the other has no recorder.

mode "stub" (default): the engine's model is an instant stand-in (it answers without computing),
so a request costs only the HTTP layer and the ledger: the worst case for the ledger's share.
mode "smoke": the real smoke model with max_tokens=1 (needs llmctl[serve,smoke]).

Rounds alternate on/off so drift on a shared machine hits both; each round sends --requests
non-streaming chat completions from --clients threads (keep-alive connections).
Target: RATIO >= 0.98.

Usage: python benchmarks/bench_ledger.py [--mode stub|smoke] [--rounds 21] [--requests 200] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _util import ratio_line  # noqa: E402


class InstantModel:
    """Stands in for llama_cpp.Llama in mode stub: answers at once."""

    generate = eval = None  # the engine wraps these; this stand-in never calls them
    n_batch = 512

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        return [0, 1, 2]

    def create_chat_completion(self, stream: bool = False, **kw):
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}

    create_completion = create_chat_completion

    def close(self) -> None:
        pass


def child(port: int, ledger_on: bool, mode: str, home: str) -> None:
    """One server: serve's app + engine + router (+ ledger), until stdin closes."""
    import asyncio
    import logging

    logging.getLogger("llmctl.serve.llama").propagate = False  # llama.cpp's load-time warnings

    import uvicorn

    from llmctl.config import validate
    from llmctl.schema import Limits
    from llmctl.serve.app import create_app
    from llmctl.serve.engine import Engine
    from llmctl.serve.settings import ServeSettings
    from llmctl.upstreams.config import routing_for
    from llmctl.upstreams.router import Router
    from llmctl.usage.ledger import Ledger

    if mode == "smoke":
        from llmctl.models.smoke import ensure_smoke
        from llmctl.models.store import Store
        from llmctl.paths import Paths

        root = Path(home)
        store = Store(Paths("home", root, root, root / "state", root / "cache"))
        entry = ensure_smoke(store)
        model_path = store.model_path(entry)
        loader = None
    else:
        model_path = Path(home) / "stub.gguf"
        loader = lambda s: InstantModel()  # noqa: E731
    settings = ServeSettings(
        service=None, model_name="smoke", model_path=model_path, verified=True, host="127.0.0.1", port=port,
        n_ctx=512, n_batch=512, n_threads=1, n_gpu_layers=0, flash_attn=False,
        chat_format="gemma" if mode == "smoke" else None, embeddings=False, api_keys=(), api_keys_source=None,
        public_health=True, public_metrics=True, shutdown_timeout_s=2,
        limits=Limits(max_tokens=1, rate_limit_rpm=0, queue_length=64))
    engine = Engine(settings, loader=loader) if loader else Engine(settings)
    ledger = Ledger(Path(home) / f"usage-{port}.db") if ledger_on else None
    router = Router(routing_for(validate({}), None, {}), served_model="smoke", max_tokens=1,
                    recorder=ledger.record if ledger else None, dropped=(lambda: ledger.dropped) if ledger else None)
    app, _ = create_app(settings, engine, access_log=lambda record: None, router=router)
    engine.start()
    engine.loaded.wait()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                                           access_log=False))
    threading.Thread(target=lambda: (sys.stdin.read(), setattr(server, "should_exit", True)), daemon=True).start()
    asyncio.run(server.serve())
    engine.stop(2)
    if ledger:
        ledger.close()
        sys.stderr.write(f"ledger: written {ledger.written} dropped {ledger.dropped}\n")


def recording_cost(n: int = 20000) -> float:
    """CPU seconds per request spent recording it (observe + enqueue, and the writer's inserts), in process."""
    from llmctl.config import validate
    from llmctl.upstreams.config import routing_for
    from llmctl.upstreams.router import Router
    from llmctl.usage.ledger import Ledger

    record = {"ts": "2026-01-01T00:00:00.000Z", "event": "access", "request_id": "abc", "client": "127.0.0.1",
              "method": "POST", "path": "/v1/chat/completions", "status": 200, "duration_ms": 3.2,
              "key_id": "key-0123456789ab", "stream": False, "prompt_tokens": 12, "completion_tokens": 1,
              "route": "local", "model": "smoke"}
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(Path(d) / "usage.db", maxsize=n + 10)
        router = Router(routing_for(validate({}), None, {}), served_model="smoke", recorder=ledger.record)
        t0 = time.process_time()  # CPU of both threads: the writer's gathering sleeps are not a cost
        for _ in range(n):
            router.observe(record)
        ledger.flush(60)
        elapsed = time.process_time() - t0
        ledger.close()
        assert ledger.written == n, (ledger.written, ledger.dropped)
    return elapsed / n


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready")


def one_round(clients: list, url: str, n: int) -> float:
    per = n // len(clients)
    body = {"model": "smoke", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    errors: list[str] = []

    def work(c) -> None:
        for _ in range(per):
            r = c.post(url + "/v1/chat/completions", json=body)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]}")
    return per * len(clients) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("stub", "smoke"), default="stub")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--home", help="an LLMCTL_HOME whose store has the smoke model (mode smoke); default: a temp dir")
    ap.add_argument("--child", nargs=4, metavar=("PORT", "LEDGER", "MODE", "HOME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        port, on, mode, home = args.child
        child(int(port), on == "on", mode, home)
        return
    import httpx

    home = args.home or tempfile.mkdtemp(prefix="bench-ledger-")
    env = {**os.environ, "LLMCTL_HOME": home}
    if args.mode == "smoke":  # assemble the smoke model once, before both servers look for it
        from llmctl.models.smoke import ensure_smoke
        from llmctl.models.store import Store
        from llmctl.paths import Paths

        root = Path(home)
        ensure_smoke(Store(Paths("home", root, root, root / "state", root / "cache")))
    servers = {}
    for label in ("ledger on", "ledger off"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(port), label.split()[1], args.mode, home],
                                stdin=subprocess.PIPE, env=env)
        servers[label] = (f"http://127.0.0.1:{port}", proc)
    try:
        for url, proc in servers.values():
            wait_ready(url, proc)
        clients = {label: [httpx.Client(timeout=60) for _ in range(args.clients)] for label in servers}
        for label, (url, _) in servers.items():  # warm-up: connections, first-request paths
            one_round(clients[label], url, args.clients * 10)
        rps: dict[str, list[float]] = {label: [] for label in servers}
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for label in order:
                rps[label].append(one_round(clients[label], servers[label][0], args.requests))
        for label, samples in rps.items():
            print(f"{label:10s}  median {statistics.median(samples):8.1f} req/s  "
                  f"min {min(samples):8.1f}  max {max(samples):8.1f}  (n={len(samples)}, mode {args.mode})")
        # Each round's pair ran back to back: the median of the paired ratios resists the drift of
        # a shared machine better than the ratio of the medians (both are printed).
        paired = statistics.median(a / b for a, b in zip(rps["ledger on"], rps["ledger off"]))
        medians = statistics.median(rps["ledger on"]) / statistics.median(rps["ledger off"])
        print(f"ratio of medians {medians:.3f}")
        print(ratio_line(f"requests/s ledger on / off ({args.mode}, median of paired rounds)", paired, ">= 0.98"))
        per_call = recording_cost()
        request_s = 1 / statistics.median(rps["ledger off"])
        print(f"recording one request in process: {per_call * 1e6:.1f} us of CPU (router.observe + ledger.record, "
              f"writer thread included) = {per_call / request_s:.2%} of a request at the ledger-off rate")
    finally:
        for _, proc in servers.values():
            proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
