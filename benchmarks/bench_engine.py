"""Generation speed: `llmctl bench` (llama-bench's method: one decode per token, no sampling) against
llama-cpp-python's plain high-level generation loop (`for tok in Llama.generate(...)`: decode and
sample per token), on the smoke model, same threads, same context, same run, interleaved.

Target: ratio (llmctl tg t/s / plain loop tg t/s) at least 1.0. The plain loop pays for sampling and
Python per token, llmctl bench does not: that is what llama-bench measures, the engine's own speed.

Both load the model the same way (the same `repack` choice: llama.cpp's extra weight buffers are off
on CPUs with AMX, see llmctl/bench/engine.py), and run the same way: each round starts one fresh
process for each (`llmctl bench -p 0 -n N -r R`; this script with --plain-child), each loads the model,
warms up, then times R repetitions. Medians of the per-repetition t/s are compared.

With --llama-bench [PATH] it instead checks agreement with llama.cpp's own llama-bench, built from the
same llama.cpp as the installed llama-cpp-python and linked against its very libraries (PATH, or
built and cached by benchmarks/llamacpp_build.py when no PATH is given): every row of llama-bench's
test matrix, pp, tg, pp+tg (-pg) and each of them at a depth (-d), same model, threads, repack,
flash attention off. Each round runs both programs once (fresh processes, ABBA order: A B, B A, ...);
the figure of a run is the median of its repetitions' t/s; a round's ratio is llmctl's / llama-bench's;
the result is the median of the paired ratios with a 95% bootstrap interval, per test: RATIO lines,
target 0.95-1.05. --aa runs llama-bench against itself the same way: the machine's own noise. The
1-minute load average and the steal time of each arm are printed with the figures.

Usage: python benchmarks/bench_engine.py [--n-gen 64] [--reps 3] [--rounds 3] [--threads 1]
       python benchmarks/bench_engine.py --llama-bench [PATH] [--n-prompt 64] [--n-gen 64] [--pg 32,8]
                                         [--depth 128] [--reps 3] [--rounds 3] [--threads 1] [--aa]
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
from _util import bootstrap_median, ratio_line, steal_ticks  # noqa: E402


def smoke_path(env: dict) -> Path:
    """The smoke model in the store llmctl uses (assembled on first use)."""
    os.environ.update(env)
    from llmctl.models.resolve import resolve_model
    from llmctl.models.store import Store
    from llmctl.paths import resolve_paths

    return resolve_model("smoke", Store(resolve_paths(None))).path


def llmctl_tg(n_gen: int, reps: int, threads: int, n_ctx: int, env: dict) -> list[float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmctl",
            "bench",
            "smoke",
            "-p",
            "0",
            "-n",
            str(n_gen),
            "-r",
            str(reps),
            "-t",
            str(threads),
            "--ctx",
            str(n_ctx),
            "-o",
            "json",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return list(json.loads(out)[0]["samples_ts"])  # -o json: llama-bench's array of rows


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
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_batch=2048,
            n_threads=threads,
            n_threads_batch=threads,
            swa_full=False,
            verbose=False,
        )
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
        [
            sys.executable,
            __file__,
            "--plain-child",
            str(path),
            "--n-gen",
            str(n_gen),
            "--reps",
            str(reps),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def engine_figures(argv: list[str], env: dict) -> dict[str, float]:
    """Per test (llama-bench's name), the median t/s of the run's repetitions, from a llama-bench style
    JSON array (llmctl bench -o json and llama-bench -o json write the same)."""
    from llmctl.bench.llamabench import test_name

    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    return {
        test_name(r["n_prompt"], r["n_gen"], r["n_depth"]): statistics.median(r["samples_ts"]) for r in json.loads(out)
    }


def versus_llama_bench(args, path: Path, env: dict, repack: bool) -> None:
    if args.llama_bench == "build":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from llamacpp_build import build_llama_bench

        args.llama_bench = str(build_llama_bench())
    common = [
        "-p",
        str(args.n_prompt),
        "-n",
        str(args.n_gen),
        "-r",
        str(args.reps),
        "-t",
        str(args.threads),
        "-d",
        f"0,{args.depth}" if args.depth else "0",
    ]
    if args.pg:
        common += ["-pg", args.pg]
    theirs_argv = [
        args.llama_bench,
        "-m",
        str(path),
        *common,
        "-ngl",
        "0",
        "-fa",
        "0",
        "--repack",
        "1" if repack else "0",
        "-o",
        "json",
    ]
    ours_argv = [
        sys.executable,
        "-m",
        "llmctl",
        "bench",
        str(path),
        *common,
        "-ngl",
        "0",
        "-fa",
        "0",
        "--repack" if repack else "--no-repack",
        "-o",
        "json",
        "-q",
    ]
    arms = {
        "llama-bench (A/A)" if args.aa else "llmctl bench": theirs_argv if args.aa else ours_argv,
        "llama-bench": theirs_argv,
    }
    a_name, b_name = list(arms)
    runs: dict[str, list[dict[str, float]]] = {a_name: [], b_name: []}
    loads: list[float] = []
    steal = {a_name: 0, b_name: 0}
    for rnd in range(args.rounds):
        order = [a_name, b_name] if rnd % 2 == 0 else [b_name, a_name]  # ABBA
        for name in order:
            loads.append(os.getloadavg()[0])
            s0 = steal_ticks()
            runs[name].append(engine_figures(arms[name], env))
            steal[name] += steal_ticks() - s0
        print(f"round {rnd + 1}/{args.rounds} done (load {loads[-1]:.1f})", file=sys.stderr)
    tick = os.sysconf("SC_CLK_TCK")
    print(
        f"model: {path.name}, threads {args.threads}, repack {'on' if repack else 'off'}, flash attention off, "
        f"{args.rounds} rounds (ABBA) x {args.reps} repetitions"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, 1-min load at each run: median {statistics.median(loads):.1f} "
        f"(min {min(loads):.1f}, max {max(loads):.1f}); steal {steal[a_name] / tick:.1f} s during {a_name}, "
        f"{steal[b_name] / tick:.1f} s during {b_name}"
    )
    for test in runs[b_name][0]:
        a = [r[test] for r in runs[a_name]]
        b = [r[test] for r in runs[b_name]]
        ratios = [x / y for x, y in zip(a, b)]
        low, high = bootstrap_median(ratios) if len(ratios) > 1 else (ratios[0], ratios[0])
        print(
            f"{test:>16}: {a_name} median {statistics.median(a):8.2f} t/s, {b_name} median "
            f"{statistics.median(b):8.2f} t/s, paired ratios {' '.join(f'{x:.2f}' for x in ratios)}"
        )
        print(
            ratio_line(
                f"{a_name} {test} t/s / llama-bench {test} t/s (95% CI {low:.3f}-{high:.3f})",
                statistics.median(ratios),
                "0.95-1.05",
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-prompt", type=int, default=64, help="with --llama-bench: the pp test")
    ap.add_argument("--pg", default="32,8", help="with --llama-bench: the pp+tg test (-pg), '' for none")
    ap.add_argument("--depth", type=int, default=128, help="with --llama-bench: every test again at this depth (-d)")
    ap.add_argument("--aa", action="store_true", help="with --llama-bench: llama-bench against itself (noise)")
    ap.add_argument(
        "--llama-bench",
        metavar="PATH",
        nargs="?",
        const="build",
        help="compare with llama.cpp's llama-bench instead (no PATH: build it, see llamacpp_build.py)",
    )
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
        print(
            f"round {rnd + 1}/{args.rounds}: llmctl bench {statistics.median(ours):.2f} t/s, "
            f"plain loop {statistics.median(plain):.2f} t/s (medians so far)",
            file=sys.stderr,
        )
    m_ours, m_plain = statistics.median(ours), statistics.median(plain)
    print(
        f"model: {path.name}, threads {args.threads}, n_ctx {n_ctx}, tg{args.n_gen}, repack {'on' if repack else 'off'}"
    )
    print(
        f"llmctl bench tg{args.n_gen}:   median {m_ours:8.2f} t/s  (n={len(ours)}, "
        f"min {min(ours):.2f}, max {max(ours):.2f})"
    )
    print(
        f"plain Llama.generate: median {m_plain:8.2f} t/s  (n={len(plain)}, min {min(plain):.2f}, max {max(plain):.2f})"
    )
    print(ratio_line("llmctl bench tg t/s / plain llama-cpp-python loop tg t/s", m_ours / m_plain, ">= 1.0"))


if __name__ == "__main__":
    main()
