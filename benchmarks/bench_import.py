"""`llmctl models import SOURCE` (adopting an Ollama model: verified against its digest, installed, locked)
against what verifying or copying those bytes costs with coreutils, same 253 MB file, same run.

- link: `llmctl models import ollama:gemma3:270m` (a hard link, hashed once) vs `openssl dgst -sha256
  BLOB`, the least any verification of those bytes costs (OpenSSL's SHA-NI code; coreutils 9.1's
  sha256sum is 4x slower here and would flatter llmctl). Target <= 2.0: the rest is a Python
  process starting and finding the model.
- copy: `llmctl models import ollama:gemma3:270m --copy` (hashed while copying, fsynced, renamed)
  vs `cp BLOB DST && openssl dgst -sha256 DST && sync DST` (copy, check, make durable by hand).
  Target <= 1.2.

The file is the smoke GGUF (Gemma 3 270M Q4_K_M), assembled once from its PyPI chunks into a
stand-in Ollama store under its real layout. Both arms read it from the page cache (a warm-up run
first). Each pair of rounds runs A B B A (ABBA), each command a fresh process into a fresh, empty
directory; the figure is the median of the pairs' ratios. `--aa` runs the baseline against itself
(the noise of this design on this machine). Load average and steal time are printed with the figures.

Usage: python benchmarks/bench_import.py [--mode link|copy] [--pairs 5] [--aa]
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
from _util import ratio_line, steal_seconds, summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("link", "copy"), default="link")
    ap.add_argument("--pairs", type=int, default=5, help="ABBA pairs (each arm runs twice per pair)")
    ap.add_argument("--aa", action="store_true", help="A/A check: the baseline against itself")
    args = ap.parse_args()
    if shutil.which("openssl") is None:
        sys.exit("the baseline needs the openssl command line tool")

    from llmctl.models.smoke import SMOKE_SHA256, ensure_smoke
    from llmctl.models.store import Store
    from llmctl.paths import Paths
    from tests._stores import add_ollama_model

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp = Path(tmp)
        src_root = tmp / "src"
        src = Store(Paths("home", src_root, src_root, src_root / "state", src_root / "cache"))
        smoke = src.model_path(ensure_smoke(src))
        ollama = tmp / "ollama"
        add_ollama_model(ollama, smoke, "gemma3", "270m", link=False)
        blob = ollama / "blobs" / f"sha256-{SMOKE_SHA256}"
        print(f"file: {blob.stat().st_size} bytes, mode {args.mode}{' (A/A)' if args.aa else ''}")
        (tmp / "config.yaml").write_text("version: 1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "HF_", "OLLAMA_"))}
        env.update(
            {
                "OLLAMA_MODELS": str(ollama),
                "HF_HUB_CACHE": str(tmp / "no-hf"),
                "LLMCTL_HOME": str(tmp / "home"),
                "LLMCTL_CONFIG": str(tmp / "config.yaml"),
            }
        )
        extra = ["--copy"] if args.mode == "copy" else []

        def timed(argv: list[str], cleanup: Path) -> float:
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            dt = time.perf_counter() - t0
            if cleanup.is_dir():
                shutil.rmtree(cleanup)
            else:
                cleanup.unlink(missing_ok=True)
            return dt

        def llmctl() -> float:
            return timed(
                [sys.executable, "-m", "llmctl", "models", "import", "ollama:gemma3:270m", "--quiet", *extra],
                tmp / "home",
            )

        def baseline() -> float:
            if args.mode == "link":
                return timed(["openssl", "dgst", "-sha256", str(blob)], tmp / "none")
            dst = tmp / "copy.gguf"
            return timed(
                ["sh", "-c", 'cp "$1" "$2" && openssl dgst -sha256 "$2" && sync "$2"', "sh", str(blob), str(dst)], dst
            )

        a_name = "baseline (A)" if args.aa else f"llmctl models import{' --copy' if extra else ''}"
        b_name = "baseline (B)" if args.aa else ("openssl dgst" if args.mode == "link" else "cp + openssl dgst + sync")
        arms = {a_name: baseline if args.aa else llmctl, b_name: baseline}
        for fn in arms.values():  # warm-up: page cache, .pyc files
            fn()
        samples: dict[str, list[float]] = {k: [] for k in arms}
        ratios = []
        load0, steal0 = os.getloadavg()[0], steal_seconds()
        for _ in range(args.pairs):
            got = {k: 0.0 for k in arms}
            for name in (a_name, b_name, b_name, a_name):
                dt = arms[name]()
                samples[name].append(dt)
                got[name] += dt
            ratios.append(got[a_name] / got[b_name])
        load1, steal1 = os.getloadavg()[0], steal_seconds()
    for name, s in samples.items():
        print(f"{name:32s} {summary(s)}")
    print(
        f"load average {load0:.1f} -> {load1:.1f}, steal {steal1 - steal0:.1f} s, "
        f"{os.cpu_count()} CPUs; pair ratios {' '.join(f'{r:.3f}' for r in ratios)}"
    )
    target = "~ 1.0" if args.aa else ("<= 2.0" if args.mode == "link" else "<= 1.2")
    print(ratio_line(f"{a_name} / {b_name}", statistics.median(ratios), target))


if __name__ == "__main__":
    main()
