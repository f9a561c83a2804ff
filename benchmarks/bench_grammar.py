"""What a json_schema grammar costs: decode tokens/s through `llmctl serve` with a `response_format`
json_schema against the same request without one, in the same run, on the same server.

Candidates alternate in ABBA order round by round; each round gives one paired ratio
(grammar / plain) and the median of those is printed. Decode speed = (streamed chunks - 1) / (time
of the last chunk - time of the first), so prompt processing and the grammar's set-up before the
first token are not in it (they are reported apart as time to first token). The schema holds one
free string, so the model writes as long as it likes under both. `--aa` runs plain against plain:
the machine's own noise. Needs llmctl[serve,smoke,test].

Usage: python benchmarks/bench_grammar.py [--max-tokens 64] [--rounds 6] [--threads N] [--aa]
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
SCHEMA = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
          "required": ["title", "story"], "additionalProperties": False}


def once(client, max_tokens: int, grammar: bool) -> tuple[float, float]:
    """One streamed chat completion: (decode tokens/s, seconds to the first token)."""
    kw: dict = {}
    if grammar:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}
    t0 = time.perf_counter()
    times: list[float] = []
    for chunk in client.chat.completions.create(model="smoke", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=max_tokens, temperature=0.8, seed=7, stream=True,
                                                **kw):
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
    if len(times) < 2:
        raise SystemExit("the model wrote fewer than two chunks; raise --max-tokens")
    return (len(times) - 1) / (times[-1] - times[0]), times[0] - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--aa", action="store_true", help="plain against plain: the machine's noise")
    args = ap.parse_args()

    import openai

    from tests._serve import start_smoke, stop_server

    with tempfile.TemporaryDirectory(prefix="bench-grammar-") as tmp:
        home = Path(tmp)
        os.environ["LLMCTL_HOME"] = str(home)
        from llmctl.models.smoke import ensure_smoke
        from llmctl.models.store import Store
        from llmctl.paths import Paths

        store_root = home / "store"
        print("assembling the smoke model ...", file=sys.stderr)
        ensure_smoke(Store(Paths("home", store_root, store_root, store_root / "state", store_root / "cache")))
        service = f"n_threads: {args.threads}" if args.threads else ""
        server = start_smoke(home / "serve", store_root, n_ctx=1024, service=service,
                             limits="rate_limit_rpm: 0\nmax_tokens: 512")
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
            b_grammar = not args.aa
            once(client, 8, False)
            once(client, 8, b_grammar)  # warm-up: both paths once
            plain: list[float] = []
            other: list[float] = []
            ttft_plain: list[float] = []
            ttft_other: list[float] = []
            ratios: list[float] = []
            for r in range(args.rounds):
                order = [False, True] if r % 2 == 0 else [True, False]  # ABBA
                got: dict[bool, tuple[float, float]] = {}
                for is_b in order:
                    got[is_b] = once(client, args.max_tokens, b_grammar and is_b)
                plain.append(got[False][0])
                other.append(got[True][0])
                ttft_plain.append(got[False][1])
                ttft_other.append(got[True][1])
                ratios.append(got[True][0] / got[False][0])
            name = "plain (A/A)" if args.aa else "json_schema grammar"
            print(f"decode tokens/s, {args.max_tokens} tokens, {args.rounds} rounds (median [min-max]):")
            print(f"  {'plain':24s} {statistics.median(plain):8.1f}  [{min(plain):.1f}-{max(plain):.1f}]"
                  f"  first token {statistics.median(ttft_plain) * 1000:.0f} ms")
            print(f"  {name:24s} {statistics.median(other):8.1f}  [{min(other):.1f}-{max(other):.1f}]"
                  f"  first token {statistics.median(ttft_other) * 1000:.0f} ms")
            lo, hi = bootstrap_median(ratios)
            print(f"  paired ratios: {', '.join(f'{x:.3f}' for x in ratios)}  (95% CI of the median {lo:.3f}-{hi:.3f})")
            print(ratio_line(f"decode tokens/s {name} / plain", statistics.median(ratios),
                             "~1.0" if args.aa else ">= 0.9"))
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
