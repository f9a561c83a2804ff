"""The CPU a cold start of `llmctl health` costs (cron and the systemd timer run it every minute on
every host), against a bare Python probe of the same closed port, in the same run.

- A: `llmctl health --url http://127.0.0.1:<closed port>` with config.example.yaml as the config in
  use (the config is loaded and validated, or its cached plan read, as in a real run);
- B: `python -c 'import http.client; ...'` asking the same port for /health: what any Python
  probe costs at the least.

Figures: CPU seconds of the child (user + sys, from os.wait4) and its max RSS. Each round runs
A B B A (ABBA) with fresh processes; a round's ratio is A's mean over B's; the figure is the median
of the rounds' ratios, and the absolute median of A's runs ("farm-style": a median of N runs), the
one with the target: <= 0.25 s CPU. The first run of a config validates it and caches health's
plan in the state dir; `--first` measures that run instead (the plan is deleted before each A).
`--aa` runs B against itself: the noise of this design on this machine. Load average and steal time
are printed with the figures. `--help-too` adds `llmctl --help` and `llmctl health --help`.

Other code or interpreters: `--python PY` (e.g. a venv with another Typer), `--pythonpath DIR` (an
unpacked tree of another commit: `git archive main | tar -x -C /tmp/before`).

Usage: python benchmarks/bench_cold_start.py [--rounds 10] [--first] [--aa] [--help-too]
       [--python PY] [--pythonpath DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ratio_line, steal_seconds  # noqa: E402

TARGET_CPU_S = 0.25
BARE = (
    "import http.client\n"
    "try:\n"
    "    c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n"
    "    c.request('GET', '/health')\n"
    "    c.getresponse().read()\n"
    "except OSError:\n"
    "    pass\n"
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: Sequence[str], env: dict[str, str], expect: tuple[int, ...]) -> tuple[float, float]:
    """(CPU seconds, max RSS MiB) of one fresh process."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
            ],
        )
    finally:
        os.close(devnull)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in expect:
        sys.exit(f"{' '.join(argv)} exited {code}, expected {expect}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def describe(label: str, samples: list[tuple[float, float]]) -> str:
    cpu = [c for c, _ in samples]
    rss = [r for _, r in samples]
    return (
        f"{label:34s} CPU median {statistics.median(cpu) * 1000:6.1f} ms  min {min(cpu) * 1000:6.1f} ms   "
        f"max RSS median {statistics.median(rss):5.1f} MiB  (n={len(samples)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10, help="ABBA rounds (each arm runs twice per round)")
    ap.add_argument("--first", action="store_true", help="measure the first run of a config (no cached plan)")
    ap.add_argument("--aa", action="store_true", help="A/A: the bare probe against itself")
    ap.add_argument("--help-too", action="store_true", help="also time `llmctl --help` and `llmctl health --help`")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs llmctl")
    ap.add_argument("--pythonpath", help="import llmctl from this directory instead")
    args = ap.parse_args()

    port = closed_port()
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
        env.update(LLMCTL_HOME=str(home), LLMCTL_CONFIG=str(ROOT / "config.example.yaml"), NO_COLOR="1")
        if args.pythonpath:  # -P below: the current directory does not come first
            env["PYTHONPATH"] = args.pythonpath
        health = [args.python, "-P", "-m", "llmctl", "health", "--url", f"http://127.0.0.1:{port}"]
        bare = [args.python, "-P", "-c", BARE.format(port=port)]
        plan = home / "state" / "health-plan.json"

        def a() -> tuple[float, float]:
            if args.first:
                plan.unlink(missing_ok=True)
            return run(health, env, (2,))  # CRITICAL: the port is closed

        def b() -> tuple[float, float]:
            return run(bare, env, (0,))

        first, second = (b, b) if args.aa else (a, b)
        names = (
            ("bare probe (A/A, first arm)", "bare probe (A/A, second arm)")
            if args.aa
            else ("llmctl health" + (" (first run)" if args.first else ""), "bare http.client probe")
        )
        run(health, env, (2,))  # warm-up: the page cache, and the cached plan unless --first
        b()
        samples: dict[str, list[tuple[float, float]]] = {names[0]: [], names[1]: []}
        ratios = []
        load0, steal0 = os.getloadavg()[0], steal_seconds()
        for _ in range(args.rounds):
            x1, y1, y2, x2 = first(), second(), second(), first()
            samples[names[0]] += [x1, x2]
            samples[names[1]] += [y1, y2]
            ratios.append((x1[0] + x2[0]) / (y1[0] + y2[0]))
        extra = {}
        if args.help_too:
            extra["llmctl --help"] = [
                run([args.python, "-P", "-m", "llmctl", "--help"], env, (0,)) for _ in range(args.rounds)
            ]
            extra["llmctl health --help"] = [
                run([args.python, "-P", "-m", "llmctl", "health", "--help"], env, (0,)) for _ in range(args.rounds)
            ]
        load1, steal1 = os.getloadavg()[0], steal_seconds()
        cached = (
            "n/a"
            if args.aa
            else "no (--first)"
            if args.first
            else "yes"
            if plan.is_file()
            else "no: this llmctl wrote none"
        )

    print(
        f"python {args.python}"
        + (f", PYTHONPATH {args.pythonpath}" if args.pythonpath else "")
        + f"; {args.rounds} ABBA rounds; closed port {port}; plan cached: {cached}"
    )
    for label, values in (*samples.items(), *extra.items()):
        print(describe(label, values))
    print(f"load average {load0:.1f} -> {load1:.1f}, steal {steal1 - steal0:.1f} s, {os.cpu_count()} CPUs")
    cpu_a = statistics.median(c for c, _ in samples[names[0]])
    print(
        ratio_line(
            f"CPU {names[0]} / {names[1]} (median of {args.rounds} paired rounds)",
            statistics.median(ratios),
            "about 1" if args.aa else "informational",
        )
    )
    if not args.aa:
        verdict = "met" if cpu_a <= TARGET_CPU_S else "NOT met"
        print(
            f"CPU {names[0]}: {cpu_a:.3f} s (median of {len(samples[names[0]])} runs; target <= "
            f"{TARGET_CPU_S} s: {verdict})"
        )


if __name__ == "__main__":
    main()
