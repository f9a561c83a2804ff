"""`llmctl serve` end to end: one real server (a subprocess on 127.0.0.1, the smoke model), the real
`openai` client, shared by the tests that can share it. Servers that need other settings
(SIGTERM, a full queue) are in test_serve_lifecycle.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import pytest

from tests._serve import Server, assert_openai_error, free_port, metric, poll, start_server, stop_server, wait_healthy
from tests._store import link_smoke_store

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEY = "sk-test-main-0123456789"
BURST_KEY = "sk-test-burst-abcdef"
SECRET_MARKER = "zebra-quokka-7731"  # appears in a prompt; must never reach the log


# -- the shared server ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def served(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serve-home")
    link_smoke_store(smoke_store, home)
    keys = home / "api-keys"
    keys.write_text(f"# test keys\n{KEY}\n\n{BURST_KEY}\n")
    port = free_port()
    config = f"""version: 1
services:
  smoke:
    model: smoke
    port: {port}
    n_ctx: 512
    api_keys_file: {keys}
    shutdown_timeout_s: 5
    limits:
      max_body_bytes: 65536
      max_tokens: 200
      queue_length: 16
      queue_timeout_s: 120
      rate_limit_rpm: 120
      rate_limit_burst: 40
"""
    server = start_server(home, config, "smoke")
    try:
        wait_healthy(server)
        yield server
    finally:
        code = stop_server(server)
        assert code == 0, "\n".join(server.log_lines()[-20:])


@pytest.fixture
def client(served: Server):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def still_serving(served: Server) -> None:
    c = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    r = c.completions.create(model="smoke", prompt="One, two,", max_tokens=2)
    assert r.usage.completion_tokens >= 1


# -- the endpoints, through the openai client -------------------------------------------------------------


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smoke"]


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="smoke", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "smoke"


def test_chat_completion_stream_with_usage(client):
    stream = client.chat.completions.create(
        model="smoke",
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert 1 <= usage.completion_tokens <= 8 and usage.prompt_tokens > 0
    assert isinstance(content, str)


def test_completion_stream_matches_non_stream(client):
    kwargs = dict(model="smoke", prompt="The capital of France is", max_tokens=8, temperature=0, seed=7)
    whole = client.completions.create(**kwargs)
    parts = list(client.completions.create(**kwargs, stream=True))
    text = "".join(p.choices[0].text for p in parts if p.choices)
    assert text == whole.choices[0].text
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"
    assert parts[-1].choices[0].finish_reason == "length"


def test_max_tokens_is_capped(client):
    r = client.completions.create(model="smoke", prompt="1 2 3 4 5 6 7", max_tokens=100000, temperature=0)
    assert r.usage.completion_tokens <= 200


# -- auth, limits, bad input: the right error, and the server keeps serving -------------------------------


def test_missing_or_wrong_key_is_401(served):
    for headers in ({}, auth("sk-wrong"), {"X-Api-Key": "sk-wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=headers)
        assert_openai_error(r, 401, "invalid_api_key")
    bad = openai.OpenAI(base_url=served.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    ok = httpx.get(served.url + "/v1/models", headers={"X-Api-Key": KEY})
    assert ok.status_code == 200
    still_serving(served)


def test_health_is_public_metrics_is_not(served):
    assert httpx.get(served.url + "/health").status_code == 200
    assert_openai_error(httpx.get(served.url + "/metrics"), 401)
    assert httpx.get(served.url + "/metrics", headers=auth()).status_code == 200
    ready = httpx.get(served.url + "/ready")  # public with /health (public_health)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_burst_past_the_limit_is_429_with_retry_after(served):
    bursty = openai.OpenAI(base_url=served.url + "/v1", api_key=BURST_KEY, max_retries=0)
    limited = None
    for _ in range(80):
        try:
            bursty.models.list()
        except openai.RateLimitError as exc:
            limited = exc.response
            break
    assert limited is not None, "no 429 within 80 requests (burst 40)"
    err = assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert err["type"] == "rate_limit_error"
    assert int(limited.headers["Retry-After"]) >= 1
    # The bucket is per key: the main key is still served.
    still_serving(served)


def test_oversized_body_is_413(served, client):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="smoke", prompt="word " * 20000, max_tokens=1)
    assert info.value.status_code == 413

    # Without Content-Length (chunked), the limit holds while reading.
    def chunks():
        for _ in range(40):
            yield b"x" * 4096

    r = httpx.post(served.url + "/v1/completions", content=chunks(), headers=auth())
    assert_openai_error(r, 413, "request_too_large")
    still_serving(served)


def test_malformed_json_is_400(served, client):
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(
            served.url + "/v1/chat/completions", content=content, headers={**auth(), "Content-Type": "application/json"}
        )
        assert_openai_error(r, 400)
    r = httpx.post(served.url + "/v1/chat/completions", json={"messages": "hi"}, headers=auth())
    assert_openai_error(r, 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smoke", messages=[], max_tokens=1)
    still_serving(served)


def test_prompt_longer_than_the_context_is_400(served, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smoke", prompt="alpha beta gamma delta " * 300, max_tokens=8)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="smoke", messages=[{"role": "user", "content": "alpha beta gamma delta " * 300}], max_tokens=8
        )
    still_serving(served)


def test_unknown_route_is_404_in_openai_shape(served):
    assert_openai_error(httpx.get(served.url + "/v1/nope", headers=auth()), 404)


# -- concurrency ------------------------------------------------------------------------------------------


# Prompts whose greedy continuation is clear-cut. llama.cpp's float results depend a little on how a
# sequence's tokens were grouped into decodes (a row decoded alone takes another matmul path than rows
# decoded together), so a near-tie ("Once upon a time, there was a little/girl") may go either way
# when the batch around it changes; these do not. See README, "Continuous batching".
CLEAR_PROMPTS = (
    "1, 2, 3, 4, 5,",
    "Monday, Tuesday, Wednesday,",
    "A, B, C, D, E,",
    "January, February, March,",
    "one two three four",
    "a b c d e f",
    "10, 20, 30, 40,",
    "Monday, Tuesday, Wednesday,",
)


def test_eight_concurrent_streams_all_complete(served, client):
    """Eight streams at once (more than the slots: some wait), each with its own prompt: each one
    gives what its prompt gives alone, so streams that share decodes never mix."""
    expected = {
        p: client.completions.create(model="smoke", prompt=p, max_tokens=6, temperature=0).choices[0].text
        for p in set(CLEAR_PROMPTS)
    }
    results: list[str | BaseException] = [""] * 8

    def worker(i: int) -> None:
        try:
            c = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
            parts = list(
                c.completions.create(model="smoke", prompt=CLEAR_PROMPTS[i], max_tokens=6, temperature=0, stream=True)
            )
            assert parts[-1].choices[0].finish_reason == "length"
            results[i] = "".join(p.choices[0].text for p in parts if p.choices)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == [expected[p] for p in CLEAR_PROMPTS]


def test_disconnected_client_frees_its_place(served, client):
    before = httpx.get(served.url + "/metrics", headers=auth()).text
    predicted0 = metric(before, "llmctl_completion_tokens_total")
    cancelled0 = metric(before, "llmctl_generations_cancelled_total")
    with httpx.Client(timeout=120) as h:
        with h.stream(
            "POST",
            served.url + "/v1/completions",
            headers=auth(),
            json={
                "prompt": "Write a very long story:",
                "max_tokens": 200,
                "stream": True,
                "temperature": 1.0,
                "seed": 3,
            },
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"]
        # leaving the block closes the connection mid-stream
    text = poll(
        lambda: (
            (t := httpx.get(served.url + "/metrics", headers=auth()).text)
            and metric(t, "llmctl_generations_cancelled_total") > cancelled0
            and t
        ),
        what="the generation to be cancelled",
    )
    assert metric(text, "llmctl_completion_tokens_total") - predicted0 < 200
    poll(
        lambda: metric(httpx.get(served.url + "/metrics", headers=auth()).text, "llmctl_requests_processing") == 0,
        what="the worker to be free",
    )
    still_serving(served)


# -- metrics and the access log ---------------------------------------------------------------------------


def test_metrics_move_with_requests(served, client):
    def scrape() -> str:
        return httpx.get(served.url + "/metrics", headers=auth()).text

    before = scrape()
    client.completions.create(model="smoke", prompt="Hello", max_tokens=3)
    after = poll(
        lambda: (
            (t := scrape())
            and metric(t, "llmctl_completion_tokens_total") > metric(before, "llmctl_completion_tokens_total")
            and t
        ),
        what="tokens_predicted to move",
    )
    label = 'endpoint="/v1/completions",status="200"'
    assert metric(after, "llmctl_requests_total", label) == metric(before, "llmctl_requests_total", label) + 1
    assert metric(after, "llmctl_prompt_tokens_total") > metric(before, "llmctl_prompt_tokens_total")
    assert (
        metric(after, "llmctl_time_to_first_token_seconds_count", 'endpoint="completion"')
        == metric(before, "llmctl_time_to_first_token_seconds_count", 'endpoint="completion"') + 1
    )
    for name in (
        "llmctl_requests_processing",
        "llmctl_requests_deferred",
        "llmctl_requests_in_flight",
        "llmctl_model_load_seconds",
        "llmctl_generation_throughput_tokens_per_second",
        "llmctl_rate_limited_total",
        "llmctl_request_duration_seconds_count",
    ):
        assert name in after, name
    assert metric(after, "llmctl_model_load_seconds") > 0


def test_access_log_is_json_without_prompts_or_keys(served, client):
    client.completions.create(model="smoke", prompt=f"My secret is {SECRET_MARKER}.", max_tokens=2)
    line = poll(
        lambda: next((ln for ln in reversed(served.log_lines()) if '"/v1/completions"' in ln), None),
        what="an access line",
    )
    records = [json.loads(ln) for ln in served.log_lines() if ln.startswith("{")]
    access = [r for r in records if r.get("event") == "access"]
    assert access and json.loads(line)["status"] == 200
    assert {"ts", "method", "path", "status", "duration_ms", "client"} <= set(access[-1])
    text = served.log_path.read_text()
    assert SECRET_MARKER not in text
    assert KEY not in text and BURST_KEY not in text
    assert any(r.get("key_id", "").startswith("key-") for r in access)
    keys_file = served.home / "api-keys"
    assert any(r.get("message") == f"API keys: 2 from {keys_file}" for r in records)  # where, not what


def test_embeddings_are_off_unless_enabled(served):
    r = httpx.post(served.url + "/v1/embeddings", json={"input": "hi"}, headers=auth())
    assert_openai_error(r, 400, "embeddings_disabled")


def test_a_stream_is_not_cancelled_by_another_request(served, client):
    """llama-cpp-python's own server interrupts a running stream when another request arrives."""
    first = threading.Event()
    out: dict = {}

    def long_stream() -> None:
        c = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        parts = []
        for p in c.completions.create(
            model="smoke",
            prompt="A list of fruits:",
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            parts.append(p)
            first.set()
        out["parts"] = parts

    t = threading.Thread(target=long_stream)
    t.start()
    assert first.wait(120)
    other = client.completions.create(model="smoke", prompt="Hi", max_tokens=2)
    t.join(300)
    assert other.usage.completion_tokens >= 1
    parts = out["parts"]
    finish = [p.choices[0].finish_reason for p in parts if p.choices and p.choices[0].finish_reason]
    assert finish == ["length"]
    assert parts[-1].usage.completion_tokens == 24


def test_a_client_that_leaves_the_queue_frees_its_place(served, client):
    """A non-streaming request waiting while long streams hold every slot; its client gives up: the
    place is freed."""

    def scrape() -> str:
        return httpx.get(served.url + "/metrics", headers=auth()).text

    cancelled0 = metric(scrape(), "llmctl_generations_cancelled_total")
    slots = int(metric(scrape(), "llmctl_slots"))
    assert slots >= 1
    kept = []  # a dropped line iterator closes its connection (and the server cancels the stream)
    with httpx.Client(timeout=120) as h, contextlib.ExitStack() as streams:
        for i in range(slots):
            r = streams.enter_context(
                h.stream(
                    "POST",
                    served.url + "/v1/completions",
                    headers=auth(),
                    json={
                        "prompt": f"Count {i}:",
                        "max_tokens": 200,
                        "stream": True,
                        "logit_bias": {"1": -100, "106": -100},
                    },
                )
            )
            lines = r.iter_lines()
            kept.append(lines)
            assert next(line for line in lines if line.startswith("data: "))
        with pytest.raises(httpx.ReadTimeout):  # waits behind the streams, then the client gives up
            httpx.post(
                served.url + "/v1/completions",
                headers=auth(),
                timeout=httpx.Timeout(60, read=0.5),
                json={"prompt": "Hi", "max_tokens": 1},
            )
        poll(
            lambda: metric(scrape(), "llmctl_generations_cancelled_total") > cancelled0,
            what="the waiting request to be dropped",
        )
        assert metric(scrape(), "llmctl_requests_deferred") == 0
    still_serving(served)
