"""What this server process takes: resident memory (psutil), per model file, and GPU memory
(`nvidia-smi`, when there is one). Read by the pool when a model loads and by `GET /status`.

Each reader returns None when it cannot tell (no psutil support, no nvidia-smi, the process is not
listed) rather than raising: the status of a server must not fail because a probe of it did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 3.0


def process_rss(pid: int | None = None) -> int | None:
    """The process's resident set size in bytes."""
    try:
        import psutil

        return int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except Exception:  # noqa: BLE001 - see the module docstring
        return None


def mapped_rss(paths: Iterable[Path], pid: int | None = None) -> dict[str, int]:
    """Resident bytes of the mappings of each file (a model's weights, when llama.cpp maps them),
    by the file's resolved path. A file that is not mapped is absent."""
    wanted = {str(Path(p).resolve()) for p in paths}
    if not wanted:
        return {}
    try:
        import psutil

        maps = psutil.Process(pid or os.getpid()).memory_maps(grouped=True)
    except Exception:  # noqa: BLE001
        return {}
    out: dict[str, int] = {}
    for m in maps:
        path = getattr(m, "path", "")
        if path in wanted:
            out[path] = out.get(path, 0) + int(getattr(m, "rss", 0))
    return out


def gpu_memory(pid: int | None = None) -> int | None:
    """GPU memory the process uses in bytes, from `nvidia-smi` (0 when it lists no memory of this
    process); None without nvidia-smi, or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    pid = pid or os.getpid()
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    total = 0
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            total += int(parts[1]) * (1 << 20)  # MiB
    return total


def snapshot(model_paths: Iterable[Path], *, gpu: bool = True) -> dict:
    """The process's memory for `GET /status`: resident bytes, each model file's mapped resident
    bytes, GPU memory (None without nvidia-smi). Blocking (smaps, nvidia-smi): run it off the loop."""
    return {"rss": process_rss(), "mapped": mapped_rss(model_paths), "vram": gpu_memory() if gpu else None}
