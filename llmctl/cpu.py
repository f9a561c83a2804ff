"""How many threads llama.cpp gets when the config names none: the physical cores this process may
run on, as llama.cpp's own tools pick (common's cpu_get_num_math). llama.cpp's context default is a
fixed 4, which on a 2-core host halves decode speed (measured: 41 against 90 tok/s)."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Physical cores, bounded by the CPUs this process may use (a container or cgroup may allow fewer)."""
    import psutil

    n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    return max(n, 1)
