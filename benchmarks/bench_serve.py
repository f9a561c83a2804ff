"""`llmctl serve` throughput against its baselines, in the same run, on the same model and settings.

1. Single stream: tokens/s of one streaming completion through `llmctl serve` (HTTP, SSE, the real
   `openai` client) against llama-cpp-python generating in this process (create_completion with
   stream=True, the same call the engine makes). Target: ratio >= 0.95.
2. Four concurrent streams: aggregate tokens/s through `llmctl serve` against llama-cpp-python's
   own server (`python -m llama_cpp.server`, run with --interrupt_requests False so that all four
   streams finish, as they do in llmctl). Informational target: ratio >= 1.0.

Same model (smoke), n_ctx, threads, chat format, prompt, max_tokens, temperature 0 and seed for
every candidate; candidates alternate round by round so drift on a shared machine hits all.
tokens/s = generated text chunks / wall time from sending the request to the last chunk
(prompt processing included, identically for all). Needs llmctl[serve,smoke,test] plus
sse-starlette, starlette-context and pydantic-settings for llama_cpp.server.

Usage: python benchmarks/bench_serve.py [--max-tokens 64] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
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

PROMPT = "Once upon a time, in a small village by the sea, there lived"

# llama_cpp.server, loading the model the way llmctl does (see engine._model_params_hook: on AMX
# CPUs the repacked weight buffers crash llama.cpp, so both load without them).
LLAMA_SERVER = """
import runpy, sys
from llmctl.serve.engine import _model_params_hook
_model_params_hook()
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, deadline_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode} before it was ready ({url})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not ready: {url}")


_CLIENTS: dict[tuple[str, int], object] = {}


def client_for(base_url: str, slot: int = 0):
    """One openai client (and its connection pool) per server and thread slot, made outside the timings."""
    import openai

    key = (base_url, slot)
    if key not in _CLIENTS:
        _CLIENTS[key] = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    return _CLIENTS[key]


def stream_once(base_url: str, max_tokens: int, slot: int = 0) -> tuple[int, float]:
    """One streaming completion through the openai client: (text chunks, seconds)."""
    client = client_for(base_url, slot)
    t0 = time.perf_counter()
    n = 0
    for chunk in client.completions.create(model="smoke", prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                                           seed=1, stream=True):
        if chunk.choices and chunk.choices[0].text:
            n += 1
    return n, time.perf_counter() - t0


def in_process_once(llm, max_tokens: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0, seed=1, stream=True):
        if chunk["choices"] and chunk["choices"][0]["text"]:
            n += 1
    return n, time.perf_counter() - t0


def concurrent_once(base_url: str, max_tokens: int, clients: int) -> tuple[int, float]:
    results: list[tuple[int, float]] = []
    errors: list[BaseException] = []

    def one(slot: int) -> None:
        try:
            results.append(stream_once(base_url, max_tokens, slot))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for slot in range(clients):
        client_for(base_url, slot)
    threads = [threading.Thread(target=one, args=(slot,)) for slot in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(n for n, _ in results), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: llama.cpp's)")
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp)
        os.environ["LLMCTL_HOME"] = str(home)
        os.environ.pop("LLMCTL_CONFIG", None)
        (home / "config.yaml").write_text("version: 1\n")
        from llmctl.config import load_config
        from llmctl.paths import resolve_paths
        from llmctl.serve.engine import load_llama
        from llmctl.serve.settings import resolve_settings

        print("assembling the smoke model ...", file=sys.stderr)
        loaded = load_config(str(home / "config.yaml"))
        settings = resolve_settings(loaded, resolve_paths(), "smoke", n_ctx=args.n_ctx, threads=args.threads,
                                    port=free_port())
        common = ["--n-ctx", str(args.n_ctx)] + (["--threads", str(args.threads)] if args.threads else [])
        env = {**os.environ, "LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(home / "config.yaml")}
        procs: list[subprocess.Popen] = []
        try:
            llmctl_port = settings.port
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "llmctl", "serve", "smoke", "--port", str(llmctl_port), *common],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            lcp_port = free_port()
            lcp_args = ["--model", str(settings.model_path), "--port", str(lcp_port), "--n_ctx", str(args.n_ctx),
                        "--chat_format", settings.chat_format or "gemma", "--interrupt_requests", "False",
                        "--verbose", "False"]
            if args.threads:
                lcp_args += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
            procs.append(subprocess.Popen([sys.executable, "-c", LLAMA_SERVER, *lcp_args], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            llm = load_llama(settings)
            wait_http(f"http://127.0.0.1:{llmctl_port}/health", procs[0])
            wait_http(f"http://127.0.0.1:{lcp_port}/v1/models", procs[1])
            llmctl_url = f"http://127.0.0.1:{llmctl_port}/v1"
            lcp_url = f"http://127.0.0.1:{lcp_port}/v1"

            # Warm-up: every candidate once (page cache, first-decode allocations, connections).
            in_process_once(llm, 8)
            concurrent_once(llmctl_url, 8, args.concurrency)
            concurrent_once(lcp_url, 8, args.concurrency)

            single: dict[str, list[float]] = {"in-process llama-cpp-python": [], "llmctl serve": []}
            for _ in range(args.rounds):
                n, s = in_process_once(llm, args.max_tokens)
                single["in-process llama-cpp-python"].append(n / s)
                n, s = stream_once(llmctl_url, args.max_tokens)
                single["llmctl serve"].append(n / s)
            print(f"single stream, {args.max_tokens} tokens, {args.rounds} rounds (tokens/s, median [min-max]):")
            for name, tps in single.items():
                print(f"  {name:32s} {statistics.median(tps):8.1f}  [{min(tps):.1f}-{max(tps):.1f}]")

            agg: dict[str, list[float]] = {"llmctl serve": [], "llama_cpp.server": []}
            for _ in range(args.rounds):
                n, s = concurrent_once(llmctl_url, args.max_tokens, args.concurrency)
                agg["llmctl serve"].append(n / s)
                n, s = concurrent_once(lcp_url, args.max_tokens, args.concurrency)
                agg["llama_cpp.server"].append(n / s)
            print(f"{args.concurrency} concurrent streams, aggregate tokens/s (median [min-max]):")
            for name, tps in agg.items():
                print(f"  {name:32s} {statistics.median(tps):8.1f}  [{min(tps):.1f}-{max(tps):.1f}]")

            print(ratio_line("single-stream llmctl serve / in-process llama-cpp-python",
                             statistics.median(single["llmctl serve"])
                             / statistics.median(single["in-process llama-cpp-python"]), ">= 0.95"))
            print(ratio_line(f"{args.concurrency}-stream aggregate llmctl serve / llama_cpp.server",
                             statistics.median(agg["llmctl serve"]) / statistics.median(agg["llama_cpp.server"]),
                             ">= 1.0"))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
