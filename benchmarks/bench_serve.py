"""`llmctl serve` against llama.cpp's own `llama-server`, in the same run, on the same model and settings
(issue 12's "What it must show").

The anchor: llama-server built from the llama.cpp that the installed llama-cpp-python vendors and linked
against its own libraries (`llamacpp_build.build_llama_server()`, cached after the first build, about 10
minutes on 2 cores), run as
    llama-server -np N -t T -c N*n_ctx -b B -ub B -fa off --chat-template gemma --no-jinja [--no-repack]
and the candidate as `llmctl serve` with the same threads, per-slot context (`--n-ctx`), batch size and
flash attention (off: llmctl's default), `--parallel N` when `llmctl serve --help` lists it (today's engine
runs one request at a time and has none: the output says so), repacked weights off on AMX CPUs in both.

Scenarios (streamed chat completions through the real `openai` client, max_tokens 64, temperature 0):
- 1 stream: tokens/s of one request (from sending it to its last chunk). Target: ratio >= 0.95.
- 4 and 8 concurrent streams: aggregate tokens/s (all streams' tokens / wall time). Target >= 1.0.
- TTFT p50 at 4 streams (time to the first content chunk, median of the 4). Target <= 2x llama-server's.
- 4 streams sharing a ~900-word prefix (each a different question after it): TTFT p50. Target <= 2x.
  The prefix opens the user message rather than being a system message: llama-cpp-python's `gemma`
  chat format drops system messages (Gemma has no system role) while llama-server's prepends them to
  the first user turn, so only this way do both servers get the same prompt. A warm-up round first:
  the scenario measures a prefix already cached, as on a server whose clients share a system prompt.
- `--scaling`: aggregate tokens/s at 1, 2, 4, 8 and 16 streams.

Every request in a round has its own prompt (a different question per stream and per round; the same
ones for both servers), so neither server answers from an identical cached prompt. Token counts are
the servers' own (`usage.completion_tokens`, stream_options.include_usage); the prompt tokens they
report are compared, and a difference is printed. Rounds alternate the servers ABBA so that drift on a
shared machine hits both; each scenario has one warm-up round per server first. Figures are medians
over rounds; each ratio is the median of the per-round (paired) ratios, with a 95% bootstrap interval.
The machine's steal time during each server's turns is printed: on a shared VM, compare runs only
when it is small. `--aa` measures llama-server against itself (the noise of this design here; both
arms send the same prompts then, so the second of a round may find its short prompt cached: a small
bias that the ABBA order puts on each arm in turn).

Needs llmctl[serve,smoke,test] and a C++ compiler for the first build of llama-server (or --llama-server PATH).

Usage: python benchmarks/bench_serve.py [--rounds 5] [--max-tokens 64] [--threads T] [--n-ctx 2048]
                                        [--parallel N] [--scaling] [--aa] [--only c1,c4,...]
                                        [--llama-server PATH] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _util import bootstrap_median, ratio_line, steal_ticks  # noqa: E402

CANDIDATE, BASELINE = "llmctl serve", "llama-server"

SUBJECTS = (
    "a lighthouse keeper",
    "a clockmaker's apprentice",
    "a lost robot",
    "a desert caravan",
    "a deep-sea diver",
    "a mountain village",
    "a retired astronaut",
    "a talking crow",
    "a night train",
    "a forgotten library",
    "a beekeeper",
    "a river ferry",
    "an old violin",
    "a snowbound inn",
    "a market in Marrakesh",
    "a glass factory",
    "a chess prodigy",
    "a migrating whale",
    "a city without cars",
    "a garden on Mars",
    "a border guard",
    "a street musician",
    "a shipwreck",
    "a bakery at dawn",
    "a comet hunter",
    "a paper mill",
    "an island school",
    "a fire lookout",
    "a silk road merchant",
    "a jazz club",
    "a weather station",
    "a salt mine",
    "a circus strongman",
    "a radio operator",
    "a tea plantation",
)
ASKS = (
    "Write a long story about {}.",
    "Describe a day in the life of {} in detail.",
    "Write a long letter from {} to a friend.",
)
QUESTIONS = (
    "Which rule above matters most when a user reports that a service is down, and why?",
    "Summarise the section on change management in three sentences.",
    "How should the assistant answer a question about disk usage on a database host?",
    "What must the assistant never do with credentials, according to the rules above?",
    "Explain the escalation steps in your own words.",
    "What should the assistant say when it does not know the answer?",
    "Which logs should be checked first after a failed deployment?",
    "How does the assistant decide whether a change needs a maintenance window?",
    "List the checks before restarting a model server.",
    "How should the assistant handle a request to delete old backups?",
    "What is the rule about time zones in reports?",
    "Write a short status update for a degraded inference service.",
    "What are the steps when a GPU node stops responding?",
    "How should alerts be worded according to the guidelines?",
    "What does the handbook say about capacity planning?",
    "Give an example of a good incident summary.",
    "Why do the rules insist on reversible changes?",
    "What should be in a post-incident review?",
    "How are on-call hand-overs done?",
    "What is the policy for third-party APIs?",
)
_SECTIONS = ("Scope and tone", "Safety", "Change management", "Incidents", "Reporting")
_RULES = (
    "Answer the operator's question directly, then give the one command or setting that acts on it.",
    "Prefer reversible changes, and say how to undo every change before suggesting that it be made.",
    "Never print, log or repeat an API key, a password or a token, even when the user pastes one.",
    "When a figure is quoted, name where it comes from and when it was measured, with its unit.",
    "If a question is ambiguous, state the assumption you make in one sentence and then answer it.",
    "Keep answers short on a pager and longer in a ticket; never pad an answer with pleasantries.",
    "Escalate to the on-call engineer when user data may be lost, and say so in the first line.",
    "Use the host's own time zone in reports, and UTC in anything that crosses teams or regions.",
    "Point to the runbook section that applies, and say when the runbook looks out of date.",
    "Do not guess at the state of a machine: ask for the output of the check that would settle it.",
    "Treat every change to production as planned work with an owner, a window and a way back.",
)


def shared_prefix() -> str:
    """About 900 words of an operations handbook that every request of the scenario starts with."""
    lines = [
        (
            "You are the operations assistant of a team that runs language models on its own servers. "
            "Follow this handbook in every answer."
        )
    ]
    for i, section in enumerate(_SECTIONS):
        lines.append(f"Section {i + 1}, {section}.")
        for j, rule in enumerate(_RULES):
            if (i + j) % 5 != 4:  # not every rule in every section: the sections differ
                lines.append(f"Rule {i + 1}.{j + 1}: {rule}")
    return "\n".join(lines)


def prompt_for(scenario: str, rnd: int, stream: int, width: int) -> str:
    """The user message of `stream` in round `rnd` (-1: warm-up): distinct within a run of the scenario."""
    k = (rnd + 1) * width + stream
    if scenario == "prefix":
        question = QUESTIONS[k % len(QUESTIONS)]
        suffix = f" (question {k + 1})" if k >= len(QUESTIONS) else ""
        return f"{PREFIX}\n\n{question}{suffix}"
    subject = SUBJECTS[k % len(SUBJECTS)]
    ask = ASKS[(k // len(SUBJECTS)) % len(ASKS)]
    return ask.format(subject)


PREFIX = shared_prefix()


@dataclass
class Sample:
    tokens: int
    ttft: float  # seconds to the first content chunk
    total: float  # seconds to the last chunk
    prompt_tokens: int | None


@dataclass
class Arm:
    name: str
    base_url: str
    model: str = ""
    clients: list[Any] = field(default_factory=list)
    prompt_tokens: dict[str, set[int]] = field(default_factory=dict)

    def client(self, slot: int):
        import openai

        while len(self.clients) <= slot:
            self.clients.append(openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=900))
        return self.clients[slot]


def one_request(arm: Arm, slot: int, prompt: str, max_tokens: int) -> Sample:
    client = arm.client(slot)
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    stream = client.chat.completions.create(
        model=arm.model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError(f"{arm.name} streamed no content for a request")
    tokens = usage.completion_tokens if usage is not None else chunks
    return Sample(tokens, ttft, total, usage.prompt_tokens if usage is not None else None)


def streams_round(arm: Arm, scenario: str, rnd: int, width: int, max_tokens: int) -> tuple[list[Sample], float]:
    """`width` concurrent streams, released together: (their samples, wall seconds of the round)."""
    samples: list[Sample | None] = [None] * width
    errors: list[BaseException] = []
    prompts = [prompt_for(scenario, rnd, i, width) for i in range(width)]
    for i in range(width):
        arm.client(i)
    gate = threading.Barrier(width + 1)

    def run(i: int) -> None:
        gate.wait()
        try:
            samples[i] = one_request(arm, i, prompts[i], max_tokens)
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(width)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{arm.name}, {scenario}, {width} streams: {errors[0]!r}") from errors[0]
    done = [s for s in samples if s is not None]
    arm.prompt_tokens.setdefault(scenario, set()).update(s.prompt_tokens for s in done if s.prompt_tokens)
    return done, wall


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fn: Callable[[list[Sample], float], float]  # (a round's samples, its wall seconds) -> the figure
    unit: str
    target: str | None  # printed with the RATIO line; None: informational (no RATIO line)


@dataclass(frozen=True)
class Scenario:
    key: str  # "prefix", or cN: N streams of story prompts
    width: int  # concurrent streams
    metrics: tuple[Metric, ...]


def aggregate_tps(samples: list[Sample], wall: float) -> float:
    return sum(s.tokens for s in samples) / wall


def ttft_p50(samples: list[Sample], wall: float) -> float:
    return statistics.median(s.ttft for s in samples)


def _tps(n: int, target: str | None) -> Metric:
    label = "1 stream, tok/s" if n == 1 else f"{n} streams, aggregate tok/s"
    return Metric(f"c{n}", label, aggregate_tps, "tok/s", target)


ALL_SCENARIOS = (
    Scenario("c1", 1, (_tps(1, ">= 0.95"),)),
    Scenario("c2", 2, (_tps(2, None),)),
    Scenario("c4", 4, (_tps(4, ">= 1.0"), Metric("ttft4", "4 streams, TTFT p50", ttft_p50, "s", "<= 2.0"))),
    Scenario("c8", 8, (_tps(8, ">= 1.0"),)),
    Scenario("c16", 16, (_tps(16, None),)),
    Scenario("prefix", 4, (Metric("prefix", "4 streams, shared ~900-word prefix, TTFT p50", ttft_p50, "s", "<= 2.0"),)),
)
DEFAULT_SCENARIOS = ("c1", "c4", "c8", "prefix")
SCALING_SCENARIOS = ("c1", "c2", "c4", "c8", "c16", "prefix")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"{url}: the server exited {proc.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling interval
    raise SystemExit(f"server not ready within {deadline_s:.0f} s: {url}")


def served_model(base_url: str) -> str:
    import httpx

    return httpx.get(base_url + "/models", timeout=10).json()["data"][0]["id"]


def llmctl_has_parallel(env: dict[str, str]) -> bool:
    """Whether this `llmctl serve` takes --parallel (the batching engine of issue 12)."""
    r = subprocess.run(
        [sys.executable, "-m", "llmctl", "serve", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        timeout=120,
    )
    return "--parallel" in r.stdout


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="llama.cpp threads for both servers (default: the CPUs this process may use)",
    )
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per slot (the shared prefix needs ~1,300)")
    ap.add_argument("--n-batch", type=int, default=512, help="both servers' batch (llmctl's n_batch; -b/-ub)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="slots of both servers (default: the most concurrent streams measured, 8; 16 with --scaling)",
    )
    ap.add_argument("--scaling", action="store_true", help="also 2 and 16 streams: the aggregate from 1 to 16")
    ap.add_argument("--aa", action="store_true", help="llama-server against itself: this machine's noise")
    ap.add_argument("--only", help="comma list of scenarios to run (c1,c4,c8,prefix,c2,c16); default all")
    ap.add_argument("--llama-server", metavar="PATH", help="this llama-server binary instead of building one")
    ap.add_argument("--keep-logs", metavar="DIR", type=Path, help="copy both servers' logs to DIR at the end")
    args = ap.parse_args()
    keys: tuple[str, ...] = SCALING_SCENARIOS if args.scaling else DEFAULT_SCENARIOS
    if args.only:
        keys = tuple(args.only.split(","))
        unknown = set(keys) - {s.key for s in ALL_SCENARIOS}
        if unknown:
            ap.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    plan = [s for s in ALL_SCENARIOS if s.key in keys]
    parallel = args.parallel or max(s.width for s in plan)

    import llamacpp_build

    binary = Path(args.llama_server) if args.llama_server else llamacpp_build.build_llama_server()
    repack = llamacpp_build.llama_server_repack_args()
    t_start = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp)
        config = home / "config.yaml"
        port = free_port()
        # Limits that the benchmark must not hit: 16 streams queue behind today's one-at-a-time engine.
        config.write_text(
            "version: 1\nservices:\n  bench:\n    model: smoke\n    host: 127.0.0.1\n"
            f"    port: {port}\n    n_ctx: {args.n_ctx}\n    n_batch: {args.n_batch}\n    n_threads: {args.threads}\n"
            "    limits:\n      queue_length: 64\n      queue_timeout_s: 3600\n      max_concurrent_streams: 64\n"
            "      rate_limit_rpm: 0\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
        env.update({"LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(config), "NO_COLOR": "1"})
        os.environ.update({"LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(config)})
        from llmctl.config import load_config
        from llmctl.paths import resolve_paths
        from llmctl.serve.settings import resolve_settings

        print("assembling the smoke model ...", file=sys.stderr)
        settings = resolve_settings(load_config(str(config)), resolve_paths(), "bench")
        has_parallel = llmctl_has_parallel(env)
        llmctl_argv = [sys.executable, "-m", "llmctl", "serve", "bench"]
        if has_parallel:
            llmctl_argv += ["--parallel", str(parallel)]
        server_port = free_port()
        server_argv = [
            str(binary),
            "-m",
            str(settings.model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(server_port),
            "-np",
            str(parallel),
            "-t",
            str(args.threads),
            "-c",
            str(parallel * args.n_ctx),
            "-b",
            str(args.n_batch),
            "-ub",
            str(args.n_batch),
            "-fa",
            "off",
            "--chat-template",
            "gemma",
            "--no-jinja",
            *repack,
        ]
        procs: list[subprocess.Popen] = []
        logs = {CANDIDATE: home / "llmctl-serve.log", BASELINE: home / "llama-server.log"}
        try:
            with open(logs[BASELINE], "wb") as log:
                procs.append(subprocess.Popen(server_argv, stdout=log, stderr=subprocess.STDOUT, env=env))
            if not args.aa:
                with open(logs[CANDIDATE], "wb") as log:
                    procs.append(subprocess.Popen(llmctl_argv, stdout=log, stderr=subprocess.STDOUT, env=env))
            wait_healthy(f"http://127.0.0.1:{server_port}/health", procs[0], logs[BASELINE])
            baseline = Arm(BASELINE, f"http://127.0.0.1:{server_port}/v1")
            if args.aa:
                candidate = Arm(f"{BASELINE} (A/A)", baseline.base_url)
            else:
                wait_healthy(f"http://127.0.0.1:{port}/health", procs[1], logs[CANDIDATE])
                candidate = Arm(CANDIDATE, f"http://127.0.0.1:{port}/v1")
            for arm in (candidate, baseline):
                arm.model = served_model(arm.base_url)
            print(f"servers up after {time.monotonic() - t_start:.0f} s; measuring ...", file=sys.stderr)
            results = run_plan(plan, candidate, baseline, args.rounds, args.max_tokens)
        finally:
            stop(procs)
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log_path in logs.values():
                    if log_path.exists():
                        shutil.copy(log_path, args.keep_logs / log_path.name)

    wall = time.monotonic() - t_start
    report(args, plan, results, candidate, baseline, binary, server_argv, has_parallel, parallel, repack, wall)


Results = dict[str, dict[str, list[float]]]  # metric key -> arm name -> per-round values


def run_plan(
    plan: list[Scenario],
    candidate: Arm,
    baseline: Arm,
    rounds: int,
    max_tokens: int,
) -> tuple[Results, dict[str, int]]:
    results: Results = {}
    steal = {candidate.name: 0, baseline.name: 0}
    for sc in plan:
        for m in sc.metrics:
            results[m.key] = {candidate.name: [], baseline.name: []}
        for arm in (candidate, baseline):  # warm-up: connections, first allocations, the shared prefix
            streams_round(arm, sc.key, -1, sc.width, max_tokens)
        for rnd in range(rounds):
            order = (candidate, baseline) if rnd % 2 == 0 else (baseline, candidate)  # ABBA
            for arm in order:
                s0 = steal_ticks()
                samples, wall = streams_round(arm, sc.key, rnd, sc.width, max_tokens)
                steal[arm.name] += steal_ticks() - s0
                for m in sc.metrics:
                    results[m.key][arm.name].append(m.fn(samples, wall))
        print(f"  {sc.key} ({sc.width} streams): done", file=sys.stderr)
    return results, steal


def report(
    args,
    plan: list[Scenario],
    run: tuple[Results, dict[str, int]],
    candidate: Arm,
    baseline: Arm,
    binary: Path,
    server_argv: list[str],
    has_parallel: bool,
    parallel: int,
    repack: list[str],
    wall: float,
) -> None:
    results, steal = run
    tick = os.sysconf("SC_CLK_TCK")
    a, b = candidate.name, baseline.name
    print(f"{BASELINE}: {binary}")
    print(f"  {' '.join(server_argv[1:])}")
    if args.aa:
        print(f"{a}: the same server (A/A: the noise of this design on this machine)")
    else:
        print(
            f"{CANDIDATE}: llmctl serve (threads {args.threads}, n_ctx {args.n_ctx} per slot, n_batch {args.n_batch}, "
            f"flash attention off, repack {'on' if repack == ['--repack'] else 'off'})"
            + (
                f" --parallel {parallel}"
                if has_parallel
                else "; no --parallel in `llmctl serve --help`: today's engine runs one request at a time"
            )
        )
    print(
        f"model {Path(server_argv[server_argv.index('-m') + 1]).name}, {args.max_tokens} tokens per request, "
        f"temperature 0, streamed chat completions; {args.rounds} round(s) per scenario (ABBA) after a warm-up"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; steal time {steal[a] / tick:.1f} s "
        f"during {a}'s turns, {steal[b] / tick:.1f} s during {b}'s; {wall:.0f} s in all"
    )
    for sc in plan:
        pa, pb = candidate.prompt_tokens.get(sc.key, set()), baseline.prompt_tokens.get(sc.key, set())
        if sc.key == "prefix" and pb:
            print(f"  prompt tokens of the shared-prefix requests: {min(pb)}-{max(pb)}")
        if pa and pb and pa != pb and not args.aa:
            print(f"  NOTE {sc.key}: the servers counted different prompt tokens ({sorted(pa)} vs {sorted(pb)})")
    lines = []
    for sc in plan:
        for m in sc.metrics:
            av, bv = results[m.key][a], results[m.key][b]
            ratios = [x / y for x, y in zip(av, bv)]
            med = statistics.median(ratios)
            lo, hi = bootstrap_median(ratios) if len(ratios) > 1 else (med, med)
            f = "{:.1f}" if m.unit == "tok/s" else "{:.3f}"
            print(
                f"{m.label:>45}: {a} {f.format(statistics.median(av))} {m.unit} "
                f"[{f.format(min(av))}-{f.format(max(av))}], {b} {f.format(statistics.median(bv))} {m.unit} "
                f"[{f.format(min(bv))}-{f.format(max(bv))}], ratio {med:.3f}"
            )
            if m.target:
                lines.append(ratio_line(f"{m.label} {a} / {b} (95% CI {lo:.3f}-{hi:.3f})", med, m.target))
    for line in lines:
        print(line)
    widths = [sc.width for sc in plan if sc.key.startswith("c")]
    if len(widths) > 1:
        print(
            "aggregate tok/s by streams (median), "
            f"{a} / {b}: "
            + "; ".join(
                f"{w}: {statistics.median(results[f'c{w}'][a]):.1f} / {statistics.median(results[f'c{w}'][b]):.1f}"
                for w in widths
            )
        )


if __name__ == "__main__":
    main()
