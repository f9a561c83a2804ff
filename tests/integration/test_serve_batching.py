"""Continuous batching in `llmctl serve`, end to end: a real server of the smoke model on 127.0.0.1, the
real `openai` client and raw HTTP. Concurrent requests share decodes and never mix; a client that
leaves frees its slot and its KV cells; a request that cannot fit gets a clear answer; SIGTERM with
every slot streaming still exits 0.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from tests._serve import Server, assert_openai_error, metric, poll, start_smoke, stop_server

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

N_CTX = 512
PARALLEL = 4
NO_EOS = {"1": -100, "106": -100}  # the smoke model's <eos> and <end_of_turn>: keep the stream going
# Greedy continuations with a clear margin (see CLEAR_PROMPTS in test_serve.py for why).
CLEAR_PROMPTS = ("1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "A, B, C, D, E,", "January, February, March,")
SHARED = (
    "You are the help desk of a hardware shop. Answer in one short sentence, politely, and never "
    "invent a product. " * 12
)


@pytest.fixture(scope="module")
def served(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_smoke(
        tmp_path_factory.mktemp("batch-home"),
        smoke_store,
        n_ctx=N_CTX,
        service=f"parallel: {PARALLEL}\npublic_metrics: true\nshutdown_timeout_s: 5",
        limits="queue_length: 0\nmax_tokens: 256\nrate_limit_rpm: 0",
    )
    try:
        yield server
    finally:
        assert stop_server(server) == 0, "\n".join(server.log_lines()[-20:])


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def scrape(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=30).text


def test_concurrent_streams_share_decodes_and_each_gets_its_own_answer(served):
    c = client(served)
    alone = [
        c.completions.create(model="smoke", prompt=p, max_tokens=8, temperature=0).choices[0].text
        for p in CLEAR_PROMPTS
    ]
    before = scrape(served)
    results: list = [None] * len(CLEAR_PROMPTS)
    go = threading.Barrier(len(CLEAR_PROMPTS))

    def worker(i: int) -> None:
        try:
            go.wait(30)
            parts = list(
                client(served).completions.create(
                    model="smoke", prompt=CLEAR_PROMPTS[i], max_tokens=8, temperature=0, stream=True
                )
            )
            results[i] = "".join(p.choices[0].text for p in parts if p.choices)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(CLEAR_PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == alone
    after = scrape(served)
    # Some decodes held more than one sequence: the streams were batched, not taken in turn.
    steps = metric(after, "llmctl_batch_sequences_count") - metric(before, "llmctl_batch_sequences_count")
    single = metric(after, "llmctl_batch_sequences_bucket", 'le="1.0"') - metric(
        before, "llmctl_batch_sequences_bucket", 'le="1.0"'
    )
    assert steps > single >= 0
    assert metric(after, "llmctl_decode_calls_total") - metric(before, "llmctl_decode_calls_total") == steps
    assert metric(after, "llmctl_slots") == PARALLEL


def test_a_shared_prefix_is_served_from_the_cache(served):
    """A conversation's earlier turns (or a shared instruction) are not decoded again. (llama-cpp-python's
    `gemma` format drops system messages, so the shared part here is the first turns.)"""
    c = client(served)

    def ask(question: str):
        return c.chat.completions.create(
            model="smoke",
            max_tokens=4,
            temperature=0,
            messages=[
                {"role": "user", "content": SHARED},
                {"role": "assistant", "content": "Understood."},
                {"role": "user", "content": question},
            ],
        )

    first = ask("Do you sell screws?")
    cached0 = metric(scrape(served), "llmctl_prompt_tokens_cached_total")
    second = ask("When do you open?")
    cached = metric(scrape(served), "llmctl_prompt_tokens_cached_total") - cached0
    shared_tokens = first.usage.prompt_tokens - 20  # the question and the turn markers are a few tokens
    assert cached >= shared_tokens > 100
    assert second.usage.prompt_tokens > cached  # usage counts the whole prompt, cached or not


def test_a_prefix_evicted_from_every_slot_comes_back_from_the_host_cache(served):
    """More distinct prompts than slots overwrite a slot that held a long prompt; its KV was saved in host
    memory first (promptcache.py) and a request sharing it decodes only the rest. The restored KV is
    the same bytes as the slot held: the answer equals the one served from the slot itself."""
    c = client(served)

    def ask():
        return c.chat.completions.create(
            model="smoke",
            max_tokens=6,
            temperature=0,
            messages=[{"role": "user", "content": SHARED + " Do you sell screws?"}],
        )

    ask()
    from_slot = ask()  # the whole prompt cached in its slot: only the last token decoded
    for i in range(PARALLEL + 1):  # every slot taken by another prompt (least recently used first)
        c.completions.create(
            model="smoke", prompt=f"{i} {CLEAR_PROMPTS[i % len(CLEAR_PROMPTS)]}", max_tokens=2, temperature=0
        )
    cached0 = metric(scrape(served), "llmctl_prompt_tokens_cached_total")
    from_host = ask()
    cached = metric(scrape(served), "llmctl_prompt_tokens_cached_total") - cached0
    assert cached >= from_host.usage.prompt_tokens - 1 > 100
    assert from_host.choices[0].message.content == from_slot.choices[0].message.content


def test_a_client_that_leaves_frees_its_slot_and_its_kv(served):
    kv0 = metric(scrape(served), "llmctl_kv_cache_usage_ratio")
    with (
        httpx.Client(timeout=120) as h,
        h.stream(
            "POST",
            served.url + "/v1/completions",
            json={
                "prompt": "Tell me a long story about a lighthouse keeper:",
                "max_tokens": 250,
                "stream": True,
                "logit_bias": NO_EOS,
            },
        ) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert first["choices"]
        busy = poll(
            lambda: (t := scrape(served)) and metric(t, "llmctl_requests_processing") == 1 and t,
            what="the stream to hold a slot",
        )
        kv_busy = metric(busy, "llmctl_kv_cache_usage_ratio")
    # The connection is closed mid-stream: at the next step the slot is free and its cells are dropped.
    idle = poll(
        lambda: (t := scrape(served)) and metric(t, "llmctl_requests_processing") == 0 and t,
        what="the slot to be freed",
    )
    kv_idle = metric(idle, "llmctl_kv_cache_usage_ratio")
    prompt_cells = 10 / (N_CTX * PARALLEL)  # the prompt alone is more than ten tokens
    assert kv_idle <= kv_busy - prompt_cells, (kv0, kv_busy, kv_idle)
    assert kv_idle <= kv0 + 1e-9  # nothing of the cancelled request is left
    r = client(served).completions.create(model="smoke", prompt="One, two,", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_a_request_that_cannot_fit_gets_a_clear_answer(served):
    # Larger than a slot's context: 400 context_length_exceeded, although the whole KV cache
    # (n_ctx x parallel cells) could hold it: n_ctx is per request.
    long = "alpha beta gamma delta " * 200
    r = httpx.post(served.url + "/v1/completions", json={"prompt": long, "max_tokens": 8}, timeout=60)
    err = assert_openai_error(r, 400, "context_length_exceeded")
    assert "at most" in err["message"]
    r = httpx.post(
        served.url + "/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": long}], "max_tokens": 8},
    )
    assert_openai_error(r, 400, "context_length_exceeded")
    # Every slot busy and no queue (queue_length 0): 503 with Retry-After at once, and the server goes on.
    with httpx.Client(timeout=120) as h:
        streams, kept = [], []
        try:
            for i in range(PARALLEL):
                cm = h.stream(
                    "POST",
                    served.url + "/v1/completions",
                    json={"prompt": f"Story {i}:", "max_tokens": 250, "stream": True, "logit_bias": NO_EOS},
                )
                r = cm.__enter__()
                streams.append(cm)
                lines = r.iter_lines()
                kept.append(lines)  # a dropped iterator closes its connection (and the server cancels)
                assert next(line for line in lines if line.startswith("data: "))
            poll(lambda: metric(scrape(served), "llmctl_requests_processing") == PARALLEL, what="every slot busy")
            full = httpx.post(served.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60)
            assert_openai_error(full, 503, "queue_full")
            assert int(full.headers["Retry-After"]) >= 1
        finally:
            for cm in streams:
                cm.__exit__(None, None, None)
    poll(lambda: metric(scrape(served), "llmctl_requests_processing") == 0, what="the slots to be freed")
    r = client(served).completions.create(model="smoke", prompt="One, two,", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_sigterm_with_eight_active_streams_exits_0(smoke_store: Path, tmp_path: Path):
    server = start_smoke(
        tmp_path / "home",
        smoke_store,
        n_ctx=512,
        service="parallel: 8\npublic_metrics: true\nshutdown_timeout_s: 2",
        limits="max_tokens: 400\nrate_limit_rpm: 0",
    )
    outcomes: list[dict] = [{} for _ in range(8)]
    started = [threading.Event() for _ in range(8)]

    def stream(i: int) -> None:
        out = outcomes[i]
        try:
            with (
                httpx.Client(timeout=120) as h,
                h.stream(
                    "POST",
                    server.url + "/v1/completions",
                    json={
                        "prompt": f"Stream {i} tells a long story:",
                        "max_tokens": 400,
                        "stream": True,
                        "logit_bias": NO_EOS,
                    },
                ) as r,
            ):
                out["status"] = r.status_code
                lines = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        started[i].set()
                out["lines"] = lines
        except httpx.HTTPError as exc:  # cut at the shutdown timeout: also an acceptable end
            out["error"] = exc
        finally:
            started[i].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(120), "\n".join(server.log_lines()[-15:])
        poll(lambda: metric(scrape(server), "llmctl_requests_processing") == 8, what="eight busy slots")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(2 + 30)  # the shutdown timeout plus a wide margin for a loaded machine
        assert code == 0, "\n".join(server.log_lines()[-20:])
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        for out in outcomes:
            assert out.get("status") == 200, out
            lines = out.get("lines")
            if lines:  # ended cleanly: finished, or cut at the shutdown timeout with an error event
                assert lines[-1] == "data: [DONE]" or json.loads(lines[-1][6:])["error"]["code"] == "shutting_down"
            else:
                assert "error" in out, out
    finally:
        stop_server(server)
