"""What a json_schema grammar costs: decode tokens/s through `llmctl serve` with a `response_format`
json_schema against the same request without one, in the same run, on the same server.

Candidates alternate in ABBA order round by round; each round gives one paired ratio
(grammar / plain) and the median of those is printed. Decode speed = (streamed chunks - 1) / (time
of the last chunk - time of the first), so prompt processing and the grammar's set-up before the
first token are not in it (they are reported apart as time to first token). The schema holds one
free string, so the model writes as long as it likes under both. `--aa` runs plain against plain:
the machine's own noise. Needs llmctl[serve,smoke,test].

`--llama-server [PATH]` measures the same on llama.cpp's own llama-server (built by llamacpp_build, or
PATH), the anchor: it samples first and checks only that token against the grammar.

Usage: python benchmarks/bench_grammar.py [--max-tokens 64] [--rounds 6] [--threads N] [--aa]
       [--llama-server [PATH]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _util import bootstrap_median, ratio_line  # noqa: E402

PROMPT = "Tell a short story about a lighthouse keeper and a storm."
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
    "required": ["title", "story"],
    "additionalProperties": False,
}


def once(client, max_tokens: int, grammar: bool) -> tuple[float, float]:
    """One streamed chat completion: (decode tokens/s, seconds to the first token)."""
    kw: dict = {}
    if grammar:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}
    t0 = time.perf_counter()
    times: list[float] = []
    for chunk in client.chat.completions.create(
        model="smoke",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.8,
        seed=7,
        stream=True,
        **kw,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
    if len(times) < 2:
        raise SystemExit("the model wrote fewer than two chunks; raise --max-tokens")
    return (len(times) - 1) / (times[-1] - times[0]), times[0] - t0


def measure(client, rounds: int, max_tokens: int, b_grammar: bool) -> dict[str, list[float]]:
    """ABBA rounds of plain (A) and grammar (B) on one server: per-round tokens/s, first-token times, ratios."""
    once(client, 8, False)
    once(client, 8, b_grammar)  # warm-up: both paths once
    out: dict[str, list[float]] = {"plain": [], "other": [], "ttft_plain": [], "ttft_other": [], "ratio": []}
    for r in range(rounds):
        order = [False, True] if r % 2 == 0 else [True, False]  # ABBA
        got: dict[bool, tuple[float, float]] = {}
        for is_b in order:
            got[is_b] = once(client, max_tokens, b_grammar and is_b)
        out["plain"].append(got[False][0])
        out["other"].append(got[True][0])
        out["ttft_plain"].append(got[False][1])
        out["ttft_other"].append(got[True][1])
        out["ratio"].append(got[True][0] / got[False][0])
    return out


def report(server: str, name: str, m: dict[str, list[float]], max_tokens: int) -> float:
    med = statistics.median
    print(f"{server}: decode tokens/s, {max_tokens} tokens, {len(m['ratio'])} rounds (median [min-max]):")
    print(
        f"  {'plain':24s} {med(m['plain']):8.1f}  [{min(m['plain']):.1f}-{max(m['plain']):.1f}]"
        f"  first token {med(m['ttft_plain']) * 1000:.0f} ms"
    )
    print(
        f"  {name:24s} {med(m['other']):8.1f}  [{min(m['other']):.1f}-{max(m['other']):.1f}]"
        f"  first token {med(m['ttft_other']) * 1000:.0f} ms"
    )
    lo, hi = bootstrap_median(m["ratio"])
    print(f"  paired ratios: {', '.join(f'{x:.3f}' for x in m['ratio'])}  (95% CI of the median {lo:.3f}-{hi:.3f})")
    return med(m["ratio"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--aa", action="store_true", help="plain against plain: the machine's noise")
    ap.add_argument(
        "--llama-server",
        metavar="PATH",
        nargs="?",
        const="build",
        help="also measure llama-server's grammar cost, the anchor (PATH, or built by llamacpp_build)",
    )
    args = ap.parse_args()

    import subprocess

    import httpx
    import openai

    from tests._serve import free_port, start_smoke, stop_server

    with tempfile.TemporaryDirectory(prefix="bench-grammar-") as tmp:
        home = Path(tmp)
        os.environ["LLMCTL_HOME"] = str(home)
        from llmctl.models.smoke import SMOKE_FILE, ensure_smoke
        from llmctl.models.store import Store
        from llmctl.paths import Paths

        store_root = home / "store"
        print("assembling the smoke model ...", file=sys.stderr)
        ensure_smoke(Store(Paths("home", store_root, store_root, store_root / "state", store_root / "cache")))
        service = f"n_threads: {args.threads}" if args.threads else ""
        server = start_smoke(
            home / "serve", store_root, n_ctx=1024, service=service, limits="rate_limit_rpm: 0\nmax_tokens: 512"
        )
        anchor: subprocess.Popen | None = None
        try:
            name = "plain (A/A)" if args.aa else "json_schema grammar"
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
            ours = report(
                "llmctl serve", name, measure(client, args.rounds, args.max_tokens, not args.aa), args.max_tokens
            )
            print(ratio_line(f"llmctl serve decode tokens/s {name} / plain", ours, "~1.0" if args.aa else ">= 0.9"))
            if args.llama_server:
                import llamacpp_build

                binary = (
                    llamacpp_build.build_llama_server() if args.llama_server == "build" else Path(args.llama_server)
                )
                port = free_port()
                model = store_root / "models" / "smoke" / SMOKE_FILE
                argv = [
                    str(binary),
                    "-m",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "-np",
                    "1",
                    "-c",
                    "1024",
                    "--chat-template",
                    "gemma",
                    "--no-jinja",
                    *(["-t", str(args.threads)] if args.threads else []),
                    *llamacpp_build.llama_server_repack_args(),
                ]
                anchor = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(1200):
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if anchor.poll() is not None:
                        raise SystemExit(f"llama-server exited {anchor.returncode}")
                    time.sleep(0.1)  # polling interval
                lc = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
                theirs = report(
                    "llama-server", name, measure(lc, args.rounds, args.max_tokens, not args.aa), args.max_tokens
                )
                print(ratio_line(f"llama-server decode tokens/s {name} / plain", theirs, "(the anchor)"))
                print(ratio_line("grammar cost: llmctl's ratio / llama-server's", ours / theirs, ">= 0.9"))
        finally:
            stop_server(server)
            if anchor is not None:
                anchor.terminate()
                anchor.wait(30)


if __name__ == "__main__":
    main()
