"""`llmctl --help` wall time against a minimal one-command Typer app's `--help`, same run.

Target: ratio at most 1.3. Both run as fresh interpreters, interleaved, medians compared.
Usage: python benchmarks/bench_help.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import subprocess
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import interleaved, ratio_line, summary  # noqa: E402

BARE = '''
import typer
app = typer.Typer()
@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    print(name)
app()
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bare = Path(d) / "bare.py"
        bare.write_text(BARE)

        def run(argv):
            def _once() -> float:
                t0 = time.perf_counter()
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                return time.perf_counter() - t0

            return _once

        candidates = {
            "llmctl --help": run([sys.executable, "-m", "llmctl", "--help"]),
            "bare typer --help": run([sys.executable, str(bare), "--help"]),
        }
        for fn in candidates.values():  # warm the page cache and .pyc files
            fn()
        res = interleaved(candidates, args.rounds)
    for name, samples in res.items():
        print(f"{name:20s} {summary(samples)}")
    ratio = statistics.median(res["llmctl --help"]) / statistics.median(res["bare typer --help"])
    print(ratio_line("llmctl --help / bare typer --help", ratio, "<= 1.3"))


if __name__ == "__main__":
    main()
