"""The host record: what machine and which build produced a figure."""

from __future__ import annotations

import os

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmctl.cpu import default_threads  # noqa: F401 - re-exported: bench's default -t

from llmctl import __version__
from llmctl.bench.results import HostInfo


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def nvidia_gpus(timeout: float = 10.0) -> list[dict[str, Any]]:
    """GPU name, VRAM and driver from nvidia-smi; [] without it (or when it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            try:
                vram = int(float(parts[1]) * 1024 * 1024)  # MiB
            except ValueError:
                vram = None
            gpus.append({"name": parts[0], "vram_bytes": vram, "driver": parts[2] if len(parts) > 2 else None})
    return gpus


def simd_features(system_info: str | None) -> tuple[str, ...]:
    """`CPU : SSE3 = 1 | AVX2 = 1 | ... |` -> ("SSE3", "AVX2", ...): the features switched on."""
    if not system_info:
        return ()
    return tuple(dict.fromkeys(m.group(1) for m in re.finditer(r"([A-Za-z0-9_]+)\s*=\s*1\b", system_info)))


def llama_cpp_python_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return None


def host_info(system_info: str | None = None, ggml_commit: str | None = None) -> HostInfo:
    import psutil

    try:
        ram = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - containers without /proc/meminfo
        ram = None
    return HostInfo(
        cpu_model=cpu_model(),
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_cores_logical=psutil.cpu_count(logical=True) or os.cpu_count(),
        ram_bytes=ram,
        gpus=tuple(nvidia_gpus()),
        os=os_name(),
        kernel=platform.release(),
        python=sys.version.split()[0],
        llmctl_version=__version__,
        llama_cpp_python_version=llama_cpp_python_version(),
        simd=simd_features(system_info),
        system_info=system_info.strip() if system_info else None,
        hostname=platform.node(),
        ggml_commit=ggml_commit,
    )
