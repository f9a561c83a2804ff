"""Generation speed: `llmctl bench` (llama-bench's method: one decode per token, no sampling) against
llama-cpp-python's plain high-level generation loop (`for tok in Llama.generate(...)`: decode and
sample per token), on the smoke model, same threads, same context, same run, interleaved.

Target: ratio (llmctl tg t/s / plain loop tg t/s) at least 1.0. The plain loop pays for sampling and
Python per token, llmctl bench does not: that is what llama-bench measures, the engine's own speed.

Both load the model the same way (the same `repack` choice: llama.cpp's extra weight buffers are off
on CPUs with AMX, see llmctl/bench/engine.py), and run the same way: each round starts one fresh
process for each (`llmctl bench -p 0 -n N -r R`; this script with --plain-child), each loads the model,
warms up, then times R repetitions. Medians of the per-repetition t/s are compared.

With --llama-bench PATH (llama.cpp's tools/llama-bench, built from the same llama.cpp as the installed
llama-cpp-python), it instead checks agreement: pp and tg of `llmctl bench` against llama-bench's own
figures, same model, threads, repack, flash attention off, interleaved rounds; target ratio 0.95-1.05.
The closest comparison links llama-bench against the installed package's own libraries
(llama_cpp/lib/libllama.so, libggml*.so), compiled from the sdist's vendor/llama.cpp headers and sources
(tools/llama-bench/*.cpp, common/{common,log,fit}.cpp, the generated build-info.cpp), so that both
programs run the very same llama.cpp binary code.

Usage: python benchmarks/bench_engine.py [--n-gen 64] [--reps 3] [--rounds 3] [--threads 1]
       python benchmarks/bench_engine.py --llama-bench PATH [--n-prompt 64] [--n-gen 32] ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ratio_line  # noqa: E402


def smoke_path(env: dict) -> Path:
    """The smoke model in the store llmctl uses (assembled on first use)."""
    os.environ.update(env)
    from llmctl.models.resolve import resolve_model
    from llmctl.models.store import Store
    from llmctl.paths import resolve_paths

    return resolve_model("smoke", Store(resolve_paths(None))).path


def llmctl_tg(n_gen: int, reps: int, threads: int, n_ctx: int, env: dict) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-m", "llmctl", "bench", "smoke", "-p", "0", "-n", str(n_gen), "-r", str(reps),
         "-t", str(threads), "--ctx", str(n_ctx), "-o", "json", "-q"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    doc = json.loads(out)
    return list(doc["results"][0]["samples_ts"])


def plain_loop(path: Path, threads: int, n_ctx: int, repack: bool):
    import llama_cpp
    import llama_cpp.llama_cpp as L

    default_params = L.llama_model_default_params

    def model_params():  # the same weight-buffer choice as llmctl bench (no kwarg for it in Llama)
        p = default_params()
        p.use_extra_bufts = repack
        return p

    L.llama_model_default_params = model_params
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=2048, n_threads=threads, n_threads_batch=threads,
                              swa_full=False, verbose=False)
    finally:
        L.llama_model_default_params = default_params
    bos = llm.token_bos()

    def once(n_gen: int) -> float:
        llm.reset()
        t0 = time.perf_counter_ns()
        n = 0
        for _tok in llm.generate([bos]):  # decode + sample per token, llama-cpp-python's defaults
            n += 1
            if n == n_gen:
                break
        return 1e9 * n_gen / (time.perf_counter_ns() - t0)

    return once


def plain_tg(path: Path, n_gen: int, reps: int, threads: int, n_ctx: int, env: dict) -> list[float]:
    out = subprocess.run(
        [sys.executable, __file__, "--plain-child", str(path), "--n-gen", str(n_gen), "--reps", str(reps),
         "--threads", str(threads)],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def engine_figures(argv: list[str], env: dict) -> dict[str, list[float]]:
    """Per-test samples_ts from a llama-bench style JSON list (ours inside {"results": [...]})."""
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    doc = json.loads(out)
    rows = doc["results"] if isinstance(doc, dict) else doc
    return {("pp" if r["n_gen"] == 0 else "tg"): list(r["samples_ts"]) for r in rows}


def versus_llama_bench(args, path: Path, env: dict, repack: bool) -> None:
    common = ["-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.reps), "-t", str(args.threads)]
    ours_argv = [sys.executable, "-m", "llmctl", "bench", "smoke", *common, "-o", "json", "-q",
                 "--repack" if repack else "--no-repack"]
    theirs_argv = [args.llama_bench, "-m", str(path), *common, "-ngl", "0", "-fa", "0",
                   "--repack", "1" if repack else "0", "-o", "json"]
    ours: dict[str, list[float]] = {"pp": [], "tg": []}
    theirs: dict[str, list[float]] = {"pp": [], "tg": []}
    for rnd in range(args.rounds):
        for acc, argv in ((ours, ours_argv), (theirs, theirs_argv)) if rnd % 2 == 0 else \
                ((theirs, theirs_argv), (ours, ours_argv)):
            for k, v in engine_figures(argv, env).items():
                acc[k] += v
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    print(f"model: {path.name}, threads {args.threads}, repack {'on' if repack else 'off'}, "
          f"{args.rounds} rounds x {args.reps} repetitions")
    for k, n in (("pp", args.n_prompt), ("tg", args.n_gen)):
        a, b = statistics.median(ours[k]), statistics.median(theirs[k])
        print(f"{k}{n}: llmctl bench median {a:8.2f} t/s (min {min(ours[k]):.2f}, max {max(ours[k]):.2f})  "
              f"llama-bench median {b:8.2f} t/s (min {min(theirs[k]):.2f}, max {max(theirs[k]):.2f})")
        print(ratio_line(f"llmctl bench {k}{n} t/s / llama-bench {k}{n} t/s", a / b, "0.95-1.05"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-prompt", type=int, default=64, help="with --llama-bench: the pp test")
    ap.add_argument("--llama-bench", metavar="PATH", help="compare with llama.cpp's llama-bench instead")
    ap.add_argument("--plain-child", metavar="GGUF", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n_ctx = 256 if args.n_gen < 256 else args.n_gen + 1
    from llmctl.bench.engine import resolve_repack

    repack = resolve_repack(None)
    if args.plain_child:
        once = plain_loop(Path(args.plain_child), args.threads, n_ctx, repack)
        once(1)  # warm-up: one token, as llama-bench / llmctl bench
        print(json.dumps([once(args.n_gen) for _ in range(args.reps)]))
        return
    env = {**os.environ}
    env.setdefault("LLMCTL_HOME", str(Path.home() / ".cache" / "llmctl-bench-home"))
    path = smoke_path(env)
    if args.llama_bench:
        versus_llama_bench(args, path, env, repack)
        return
    ours: list[float] = []
    plain: list[float] = []
    for rnd in range(args.rounds):
        ours += llmctl_tg(args.n_gen, args.reps, args.threads, n_ctx, env)
        plain += plain_tg(path, args.n_gen, args.reps, args.threads, n_ctx, env)
        print(f"round {rnd + 1}/{args.rounds}: llmctl bench {statistics.median(ours):.2f} t/s, "
              f"plain loop {statistics.median(plain):.2f} t/s (medians so far)", file=sys.stderr)
    m_ours, m_plain = statistics.median(ours), statistics.median(plain)
    print(f"model: {path.name}, threads {args.threads}, n_ctx {n_ctx}, tg{args.n_gen}, "
          f"repack {'on' if repack else 'off'}")
    print(f"llmctl bench tg{args.n_gen}:   median {m_ours:8.2f} t/s  (n={len(ours)}, "
          f"min {min(ours):.2f}, max {max(ours):.2f})")
    print(f"plain Llama.generate: median {m_plain:8.2f} t/s  (n={len(plain)}, "
          f"min {min(plain):.2f}, max {max(plain):.2f})")
    print(ratio_line("llmctl bench tg t/s / plain llama-cpp-python loop tg t/s", m_ours / m_plain, ">= 1.0"))


if __name__ == "__main__":
    main()
