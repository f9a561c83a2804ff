"""Work-arounds for llama.cpp builds, shared by every feature that loads a model (serve, bench).

AMX: ggml's AMX matmul segfaults on the first llama_decode on some hosts (seen here with the
llama-cpp-python 0.3.36 wheel on a Sapphire Rapids VM; upstream ggml-org/llama.cpp#20824).
Loading without llama.cpp's extra weight buffers (`--no-repack`, use_extra_bufts=False) avoids it,
so on CPUs that advertise AMX that is the default.
"""

from __future__ import annotations

import functools

AMX_FLAGS = frozenset({"amx_int8", "amx_tile"})


@functools.lru_cache(maxsize=1)
def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool(AMX_FLAGS & set(line.split()))
    except OSError:
        pass
    return False


def default_extra_bufts() -> bool:
    """Whether to load with llama.cpp's extra (repacked) weight buffers by default."""
    return not cpu_has_amx()
