"""`llmctl health` over 20 endpoints of which 5 hang, against the same over 1 hung endpoint, same run.

Services are checked concurrently, so the 20 should take about one timeout-plus-retries, like the
single hung endpoint: ratio about 1 (target <= 1.5). A serial checker would take 5 times the single
hung endpoint's time (printed for reference).

The endpoints are real HTTP servers on 127.0.0.1 in this process (tests/health_standin.py): 15 that
answer like `llmctl serve`, 3 that accept connections and never answer (what SIGSTOP looks like), 2
whose /health answers while inference hangs. Each run is a fresh `python -m llmctl health` process
(--no-restart), interleaved, medians compared.

Usage: python benchmarks/bench_health.py [--rounds 5] [--timeout 1] [--retries 1] [--retry-delay 0.2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _util import interleaved, ratio_line, summary  # noqa: E402

from tests.health_standin import HangServer, StandIn  # noqa: E402


def write_home(root: Path, ports: dict[str, int], health: str) -> dict[str, str]:
    root.mkdir(parents=True)
    services = "".join(f"  {name}: {{model: smoke, port: {port}}}\n" for name, port in ports.items())
    (root / "config.yaml").write_text(f"version: 1\nservices:\n{services}health: {{{health}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
    return {**env, "LLMCTL_HOME": str(root), "LLMCTL_CONFIG": str(root / "config.yaml"), "NO_COLOR": "1"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--retry-delay", type=float, default=0.2)
    args = ap.parse_args()
    health = f"timeout_s: {args.timeout}, retries: {args.retries}, retry_delay_s: {args.retry_delay}"

    healthy = [StandIn().start() for _ in range(15)]
    hung = [HangServer().start() for _ in range(3)] + [StandIn(mode="hang_completions").start() for _ in range(2)]
    try:
        with tempfile.TemporaryDirectory() as d:
            ports = {f"ok{i:02d}": s.port for i, s in enumerate(healthy)}
            ports |= {f"hung{i}": s.port for i, s in enumerate(hung)}
            env20 = write_home(Path(d) / "twenty", ports, health)
            env1 = write_home(Path(d) / "one", {"hung0": hung[0].port}, health)
            envok = write_home(Path(d) / "ok", {"ok00": healthy[0].port}, health)

            def run(env: dict[str, str], expect: int):
                def _once() -> float:
                    t0 = time.perf_counter()
                    proc = subprocess.run(
                        [sys.executable, "-m", "llmctl", "health", "--no-restart"],
                        env=env,
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                    )
                    elapsed = time.perf_counter() - t0
                    if proc.returncode != expect:
                        raise SystemExit(f"unexpected exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
                    return elapsed

                return _once

            candidates = {
                "20 endpoints, 5 hung": run(env20, 2),
                "1 hung endpoint": run(env1, 2),
                "1 healthy endpoint": run(envok, 0),
            }
            for fn in candidates.values():  # warm .pyc files and the page cache
                fn()
            res = interleaved(candidates, args.rounds)
    finally:
        for s in healthy + hung:
            s.stop()

    worst_case = (args.retries + 1) * args.timeout + args.retries * args.retry_delay
    print(
        f"probe policy: timeout {args.timeout:g}s, retries {args.retries}, delay {args.retry_delay:g}s"
        f" -> a hung endpoint costs {worst_case:g}s plus process start"
    )
    for name, samples in res.items():
        print(f"{name:22s} {summary(samples)}")
    twenty = statistics.median(res["20 endpoints, 5 hung"])
    one = statistics.median(res["1 hung endpoint"])
    start = statistics.median(res["1 healthy endpoint"])
    print(
        f"a serial checker would spend about 5 x {one - start:.1f} s = {5 * (one - start):.1f} s on the hung"
        f" endpoints alone; this run spent {twenty - start:.1f} s beyond a healthy run"
    )
    print(ratio_line("20 endpoints (5 hung) / 1 hung endpoint", twenty / one, "about 1, <= 1.5"))


if __name__ == "__main__":
    main()
