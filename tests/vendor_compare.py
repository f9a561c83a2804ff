"""llama.cpp's own scripts/compare-llama-bench.py (vendored in tests/vendor/), run as a user runs it.

It is a script, not a module (it parses its arguments when imported), so tests run it in a subprocess
and read its constants with `ast`.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "vendor" / "compare-llama-bench.py"


@functools.lru_cache(maxsize=1)
def _constants() -> dict[str, list[str]]:
    out = {}
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("LLAMA_BENCH_DB_FIELDS", "LLAMA_BENCH_KEY_PROPERTIES"):
                out[name] = ast.literal_eval(node.value)
    return out


LLAMA_BENCH_DB_FIELDS: list[str] = _constants()["LLAMA_BENCH_DB_FIELDS"]
LLAMA_BENCH_KEY_PROPERTIES: list[str] = _constants()["LLAMA_BENCH_KEY_PROPERTIES"]


def required_keys() -> list[str]:
    """What the script refuses a row without (LlamaBenchData.check_keys)."""
    return [*LLAMA_BENCH_KEY_PROPERTIES, "build_commit", "test_time", "avg_ts"]


def run_compare(inputs: list[Path], baseline: str, compare: str, cwd: Path) -> subprocess.CompletedProcess:
    """`compare-llama-bench.py --tool llama-bench -i FILE... -b BASELINE -c COMPARE` in cwd (outside any git
    repository: with explicit commits it needs none). --tool: without it the script guesses the tool only
    for a SQLite file and stops with an AssertionError on the others, whoever wrote them."""
    argv = [sys.executable, str(SCRIPT), "--tool", "llama-bench", "-b", baseline, "-c", compare]
    for path in inputs:
        argv += ["-i", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)
