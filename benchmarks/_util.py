"""Helpers shared by the benchmarks: run a thing and its baseline in the same run, print the ratio."""

from __future__ import annotations

import os
import random
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


def steal_ticks() -> int:
    """The machine's steal time so far (/proc/stat, clock ticks): what the hypervisor took from this VM."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8])
    except (OSError, IndexError, ValueError):
        return 0


def steal_seconds() -> float:
    """steal_ticks() in seconds."""
    return steal_ticks() / os.sysconf("SC_CLK_TCK")


def bootstrap_median(values: list[float], n: int = 5000, seed: int = 1) -> tuple[float, float]:
    """A 95% bootstrap interval of the median."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n)]
