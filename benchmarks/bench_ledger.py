"""Requests/s through `llmctl serve`'s app with the usage ledger on against the ledger off, same run.

One server runs in its own process: serve's real HTTP app (create_app, the Gate, the real Engine
thread, the Router with its metrics), uvicorn on 127.0.0.1, with a real Ledger writing SQLite
(write-behind). Between rounds the benchmark switches the router's recorder on or off over the
server's stdin, so both arms run in the same process, on the same connections, with the same
allocator and CPU placement: they differ only in whether each request is recorded.

mode "stub" (default): the engine's model is an instant stand-in (it answers without computing),
so a request costs only the HTTP layer and the ledger: the worst case for the ledger's share.
mode "smoke": the real smoke model with max_tokens=1 (needs llmctl[serve,smoke]).

The client is a lean keep-alive HTTP/1.1 client on raw sockets (--clients connections, one thread
each), so the server, not the client, is the bottleneck. With --pin (default on a machine with 2+
CPUs) the server runs on CPU 0 and the client on CPU 1: the two stop trading places on the cores.

Rounds run in ABBA order (on off off on ...) so drift on a shared machine hits both arms alike.
Reported: the median of the paired per-round ratios with a bootstrap 95% interval; the ratio of
the arms' total throughput; and the server's CPU time per request in each arm (its own
process_time, asked over stdin), which the hypervisor's steal time does not inflate.
Target: RATIO >= 0.98.

Usage: python benchmarks/bench_ledger.py [--mode stub|smoke] [--pairs 150] [--requests 200] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _util import bootstrap_median, ratio_line, steal_ticks  # noqa: E402


class InstantModel:
    """Stands in for the engine's llama.cpp backend (llmctl.serve.backend.Backend) in mode stub:
    every request is answered "ok" in one token, so a request costs only the HTTP path."""

    OK, END = 1, 2
    metadata: dict = {}
    bos = eos = -1
    n_vocab = 1000
    n_batch = 512

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return [3, 4, 5]

    def token_text(self, token: int) -> str:
        return ""

    def piece(self, token: int) -> bytes:
        return b"ok" if token == self.OK else b""

    def is_eog(self, token: int) -> bool:
        return token == self.END

    def decode(self, tokens, positions, seqs, logits) -> None:
        pass

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return True

    def seq_pos_min(self, seq: int) -> int:
        return 0

    def sampler(self, spec):
        answer = iter([self.OK, self.END])

        class Sampler:
            def sample(self, index: int) -> int:
                return next(answer, InstantModel.END)

            def close(self) -> None:
                pass

        return Sampler()

    def close(self) -> None:
        pass


def child(port: int, mode: str, home: str, cpu: int | None) -> None:
    """One server: serve's app + engine + router + ledger. Reads commands on stdin, one per line:
    `on` / `off` (record requests or not), `flush` (write the recorded rows now), `cpu` (print this
    process's CPU seconds); EOF stops it."""
    import asyncio
    import logging

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    logging.getLogger("llmctl.serve.llama").propagate = False  # llama.cpp's load-time warnings

    import uvicorn

    from llmctl.config import validate
    from llmctl.schema import Limits
    from llmctl.serve.app import create_app
    from llmctl.serve.batch import Engine
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
        service=None,
        model_name="smoke",
        model_path=model_path,
        verified=True,
        host="127.0.0.1",
        port=port,
        n_ctx=512,
        n_batch=512,
        n_threads=1,
        n_gpu_layers=0,
        flash_attn=False,
        chat_format="gemma" if mode == "smoke" else None,
        embeddings=False,
        api_keys=(),
        api_keys_source=None,
        public_health=True,
        public_metrics=True,
        shutdown_timeout_s=2,
        limits=Limits(max_tokens=1, rate_limit_rpm=0, queue_length=64),
    )
    engine = Engine(settings, loader=loader) if loader else Engine(settings)
    ledger = Ledger(Path(home) / f"usage-{port}.db")
    # The wiring `llmctl serve` does (upstreams/wiring.py), with the recorder switchable.
    router = Router(
        routing_for(validate({}), None, {}),
        served_model="smoke",
        max_tokens=1,
        recorder=None,
        dropped=lambda: ledger.dropped,
    )
    app, _ = create_app(settings, engine, access_log=lambda record: None, router=router)
    engine.start()
    engine.loaded.wait()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)
    )

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command in ("on", "off", "off2"):  # off2: the A/A check's second "off" arm
                router.recorder = ledger.record if command == "on" else None
                print("ok", flush=True)
            elif command == "flush":  # write what this round recorded, now (the "off" arms have nothing)
                ledger.flush(30)
                print("ok", flush=True)
            elif command == "cpu":
                print(time.process_time(), flush=True)
        server.should_exit = True

    threading.Thread(target=control, daemon=True).start()
    asyncio.run(server.serve())
    engine.stop(2)
    ledger.close()
    sys.stderr.write(f"ledger: written {ledger.written} dropped {ledger.dropped}\n")


class Connection:
    """A keep-alive HTTP/1.1 connection that sends one prepared request and reads the reply: a few
    microseconds of client CPU per request (httpx spends about a millisecond)."""

    def __init__(self, port: int, request: bytes) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buffer = b""

    def send(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.strip().lower() == b"content-length"
        )
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status

    def _fill(self) -> None:
        self.buffer += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def prepared_request(port: int) -> bytes:
    body = json.dumps(
        {"model": "smoke", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def one_round(connections: list[Connection], n: int, end: Callable[[], object] = lambda: None) -> float:
    """Requests/s for n requests spread over the connections, one thread each; `end` runs inside
    the timing, after the last response (the ledger's flush: a round pays for the rows it made)."""
    per = n // len(connections)
    errors: list[int] = []

    def work(c: Connection) -> None:
        for _ in range(per):
            status = c.send()
            if status != 200:
                errors.append(status)

    threads = [threading.Thread(target=work, args=(c,)) for c in connections]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first with HTTP {errors[0]}")
    return per * len(connections) / elapsed


def recording_cost(n: int = 20000) -> float:
    """CPU seconds per request spent recording it (observe + enqueue, and the writer's inserts), in process."""
    from llmctl.config import validate
    from llmctl.upstreams.config import routing_for
    from llmctl.upstreams.router import Router
    from llmctl.usage.ledger import Ledger

    record = {
        "ts": "2026-01-01T00:00:00.000Z",
        "event": "access",
        "request_id": "abc",
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 3.2,
        "key_id": "key-0123456789ab",
        "stream": False,
        "prompt_tokens": 12,
        "completion_tokens": 1,
        "route": "local",
        "model": "smoke",
    }
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("stub", "smoke"), default="stub")
    ap.add_argument("--pairs", type=int, default=150, help="ABBA pairs of rounds (one round per arm each)")
    ap.add_argument("--requests", type=int, default=200, help="requests per round")
    ap.add_argument("--clients", type=int, default=4, help="keep-alive connections, one client thread each")
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="server on CPU 0, client on CPU 1",
    )
    ap.add_argument("--aa", action="store_true", help="A/A check: both arms off; shows the noise of this design")
    ap.add_argument("--home", help="an LLMCTL_HOME whose store has the smoke model (mode smoke); default: a temp dir")
    ap.add_argument("--child", nargs=4, metavar=("PORT", "MODE", "HOME", "CPU"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        port, mode, home, cpu = args.child
        child(int(port), mode, home, None if cpu == "-" else int(cpu))
        return

    home = args.home or tempfile.mkdtemp(prefix="bench-ledger-")
    env = {**os.environ, "LLMCTL_HOME": home}
    if args.mode == "smoke":  # assemble the smoke model once, before the server looks for it
        from llmctl.models.smoke import ensure_smoke
        from llmctl.models.store import Store
        from llmctl.paths import Paths

        root = Path(home)
        ensure_smoke(Store(Paths("home", root, root, root / "state", root / "cache")))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(port), args.mode, home, "0" if args.pin else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        bufsize=1,
    )

    def ask(command: str) -> str:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        if args.pin:
            os.sched_setaffinity(0, {1})
        request = prepared_request(port)
        connections = [Connection(port, request) for _ in range(args.clients)]
        a, b = ("off2", "off") if args.aa else ("on", "off")
        for arm in (a, b):  # warm-up: first-request paths, the ledger's file
            ask(arm)
            one_round(connections, args.clients * 25)
        rps: dict[str, list[float]] = {a: [], b: []}
        cpu = {a: 0.0, b: 0.0}
        steal = {a: 0, b: 0}
        for i in range(args.pairs):
            for arm in (a, b) if i % 2 == 0 else (b, a):
                ask(arm)
                c0, s0 = float(ask("cpu")), steal_ticks()
                rps[arm].append(one_round(connections, args.requests, lambda: ask("flush")))
                cpu[arm] += float(ask("cpu")) - c0
                steal[arm] += steal_ticks() - s0
        for c in connections:
            c.close()
        n = args.pairs * (args.requests // args.clients * args.clients)
        for arm in (a, b):
            samples = sorted(rps[arm])
            print(
                f"ledger {arm:4s}  median {statistics.median(samples):7.1f} req/s  min {samples[0]:7.1f}  "
                f"p90 {samples[int(0.9 * (len(samples) - 1))]:7.1f}  max {samples[-1]:7.1f}  "
                f"server CPU {cpu[arm] / n * 1e6:6.1f} us/request  "
                f"steal {steal[arm] / os.sysconf('SC_CLK_TCK'):5.1f} s  (n={len(samples)}, mode {args.mode})"
            )
        paired = [x / y for x, y in zip(rps[a], rps[b])]
        low, high = bootstrap_median(paired)
        total = sum(1 / r for r in rps[b]) / sum(1 / r for r in rps[a])  # equal requests per round
        print(f"ratio of total throughput {total:.3f}; server CPU per request {b} / {a}: {cpu[b] / cpu[a]:.3f}")
        label = "A/A check: off / off" if args.aa else "ledger on / off"
        print(
            ratio_line(
                f"requests/s {label} ({args.mode}, median of {len(paired)} paired rounds, 95% CI {low:.3f}-{high:.3f})",
                statistics.median(paired),
                "~ 1.0" if args.aa else ">= 0.98",
            )
        )
        per_call = recording_cost()
        print(
            f"recording one request in process: {per_call * 1e6:.1f} us of CPU (router.observe + ledger.record, "
            f"writer thread included) = {per_call / (cpu['off'] / n):.2%} of the server's CPU per request"
        )
    finally:
        proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
