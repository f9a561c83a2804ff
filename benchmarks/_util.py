"""Helpers shared by the benchmarks: run a thing and its baseline in the same run, print the ratio."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def time_command(argv: Sequence[str], runs: int, env: dict | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each candidate once per round, alternating, so drift on a shared machine hits both."""
    results: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            results[name].append(fn())
    return results


def summary(samples: list[float]) -> str:
    med = statistics.median(samples)
    return f"median {med * 1000:8.1f} ms  min {min(samples) * 1000:8.1f} ms  (n={len(samples)})"


def ratio_line(label: str, value: float, target: str) -> str:
    return f"RATIO {label}: {value:.3f}  (target {target})"
