"""Time to switch models in one `llmctl serve`, against loading the same model in a fresh process,
in the same run.

- A (switch): a running `llmctl serve --model smoke --model smoke-b --max-loaded 1` (the smoke model
  under two names) is asked for a one-token completion from the model that is not loaded: the pool
  unloads the other, loads this one, and answers. Time: the request, sent to answered.
- B (fresh serve): `llmctl serve smoke` started from nothing, to its first one-token completion
  answered (what switching costs without several models per server: restart the unit on the other
  model, or a swapper that starts a server per model).
- C (fresh python): a bare `python -c` that imports llama_cpp, loads the model with
  llama-cpp-python's high-level Llama (llmctl.serve.engine.load_llama: one sequence, no slots) and
  generates one token: the least a fresh Python process costs.
- D (fresh llama-server): llama.cpp's own llama-server, built against the installed
  llama-cpp-python's libraries (llamacpp_build.build_llama_server(), cached), started on the model
  to its first one-token completion: how llama-swap switches (one llama-server per model). The real
  anchor; `--no-llama-server` leaves it out, `--llama-server PATH` uses that binary.

Rounds are A B C D D C B A (ABBA); a round's ratio is A's mean over B's (over C's, over D's); the
figure is the median of the rounds' ratios. `--aa` times A against A (the machine's own noise).
Load average and steal time are printed with the figures. Same settings everywhere: n_ctx 256 per
slot, serve's default 4 slots (llama-server: -np 4 -c 1024), llama.cpp's default threads.

Usage: python benchmarks/bench_model_switch.py [--rounds 5] [--aa] [--no-llama-server | --llama-server PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _util import ratio_line, steal_ticks  # noqa: E402

N_CTX = 256
SLOTS = 4  # llmctl serve's default parallel
FRESH_PYTHON = """
import sys
from types import SimpleNamespace
from llmctl.serve.engine import load_llama
s = SimpleNamespace(model_path=sys.argv[1], n_ctx={n_ctx}, n_batch=512, n_threads=None, n_gpu_layers=0,
                    flash_attn=False, chat_format=None, embeddings=False)
llm = load_llama(s)
out = llm.create_completion("Hello", max_tokens=1, temperature=0)
assert out["choices"], out
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(home: Path) -> Path:
    """A store with the smoke model as `smoke` and (hard-linked) as `smoke-b`; returns the file."""
    from llmctl.models.smoke import ensure_smoke
    from llmctl.models.store import Store
    from llmctl.paths import Paths

    store = Store(Paths("home", home, home, home / "state", home / "cache"))
    ensure_smoke(store)
    lock = json.loads((home / "models.lock").read_text())
    entry = lock["models"]["smoke"]
    src = home / "models" / entry["path"]
    dst = home / "models" / "smoke-b" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    for s, d in ((src, dst), (src.with_name(f".{src.name}.verified"), dst.with_name(f".{dst.name}.verified"))):
        if s.exists() and not d.exists():
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
    lock["models"]["smoke-b"] = {**entry, "path": f"smoke-b/{src.name}"}
    (home / "models.lock").write_text(json.dumps(lock, indent=2))
    (home / "config.yaml").write_text("version: 1\n")
    return src


def start(home: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
    env.update(LLMCTL_HOME=str(home), LLMCTL_CONFIG=str(home / "config.yaml"), NO_COLOR="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmctl",
            "serve",
            *args,
            "--port",
            str(port),
            "--n-ctx",
            str(N_CTX),
            "--parallel",
            str(SLOTS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, deadline_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llmctl serve exited {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise SystemExit("llmctl serve did not become healthy")


def one_token(url: str, model: str) -> None:
    import httpx

    r = httpx.post(
        url + "/v1/completions",
        json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
        timeout=300,
    )
    r.raise_for_status()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--aa", action="store_true", help="time the switch against itself (noise)")
    ap.add_argument("--llama-server", metavar="PATH", help="this llama-server binary instead of building one")
    ap.add_argument("--no-llama-server", action="store_true", help="leave the llama-server anchor out")
    args = ap.parse_args()
    binary: Path | None = None
    repack: list[str] = []
    if not args.no_llama_server and not args.aa:
        import llamacpp_build

        binary = Path(args.llama_server) if args.llama_server else llamacpp_build.build_llama_server()
        repack = llamacpp_build.llama_server_repack_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    try:
        model_file = setup(tmp)
        server, url = start(tmp, "--model", "smoke", "--model", "smoke-b", "--max-loaded", "1")
        try:
            wait_healthy(server, url)
            one_token(url, "smoke")  # warm: the first request of a server costs more than the others
            loaded = ["smoke"]

            def switch() -> float:
                target = "smoke-b" if loaded[0] == "smoke" else "smoke"
                t0 = time.perf_counter()
                one_token(url, target)
                loaded[0] = target
                return time.perf_counter() - t0

            def fresh_serve() -> float:
                t0 = time.perf_counter()
                proc, u = start(tmp, "smoke")
                try:
                    wait_healthy(proc, u)
                    one_token(u, "smoke")
                    return time.perf_counter() - t0
                finally:
                    stop(proc)

            def fresh_python() -> float:
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-c", FRESH_PYTHON.format(n_ctx=N_CTX), str(model_file)],
                    check=True,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return time.perf_counter() - t0

            def fresh_llama_server() -> float:
                assert binary is not None
                port = free_port()
                t0 = time.perf_counter()
                proc = subprocess.Popen(
                    [
                        str(binary),
                        "-m",
                        str(model_file),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "-np",
                        str(SLOTS),
                        "-c",
                        str(SLOTS * N_CTX),
                        "-fa",
                        "off",
                        "--no-jinja",
                        "--chat-template",
                        "gemma",
                        *repack,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    u = f"http://127.0.0.1:{port}"
                    wait_healthy(proc, u)
                    one_token(u, "smoke")
                    return time.perf_counter() - t0
                finally:
                    stop(proc)

            switch()  # the first switch also pays one-time costs (the second model's first page-ins)
            steal0, load0 = steal_ticks(), os.getloadavg()[0]
            samples: dict[str, list[float]] = {
                "switch": [],
                "fresh_serve": [],
                "fresh_python": [],
                "fresh_llama_server": [],
            }
            ratios_serve, ratios_python, ratios_server = [], [], []
            for _ in range(args.rounds):
                if args.aa:
                    a1, a2, a3, a4 = switch(), switch(), switch(), switch()
                    samples["switch"] += [a1, a4]
                    samples["fresh_serve"] += [a2, a3]
                    ratios_serve.append((a1 + a4) / (a2 + a3))
                    continue
                a1, b1, c1 = switch(), fresh_serve(), fresh_python()
                if binary is not None:
                    d1, d2 = fresh_llama_server(), fresh_llama_server()
                    samples["fresh_llama_server"] += [d1, d2]
                c2, b2, a2 = fresh_python(), fresh_serve(), switch()
                samples["switch"] += [a1, a2]
                samples["fresh_serve"] += [b1, b2]
                samples["fresh_python"] += [c1, c2]
                ratios_serve.append((a1 + a2) / (b1 + b2))
                ratios_python.append((a1 + a2) / (c1 + c2))
                if binary is not None:
                    ratios_server.append((a1 + a2) / (d1 + d2))
            steal_s = (steal_ticks() - steal0) / os.sysconf("SC_CLK_TCK")
        finally:
            stop(server)
        print(
            f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; steal {steal_s:.1f} s; "
            f"{os.cpu_count()} CPUs; n_ctx {N_CTX}; {args.rounds} rounds"
        )
        for name, values in samples.items():
            if values:
                print(
                    f"{name:13s} median {statistics.median(values):7.3f} s  min {min(values):7.3f} s  (n={len(values)})"
                )
        if args.aa:
            print(ratio_line("model_switch_aa", statistics.median(ratios_serve), "1.0: the noise"))
            return
        print(ratio_line("model_switch_vs_fresh_serve", statistics.median(ratios_serve), "< 1"))
        print(ratio_line("model_switch_vs_fresh_python", statistics.median(ratios_python), "< 1"))
        if ratios_server:
            print(
                ratio_line(
                    "model_switch_vs_fresh_llama_server",
                    statistics.median(ratios_server),
                    "< 1: llama-swap's way, in C++",
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
