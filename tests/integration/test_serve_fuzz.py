"""Fuzzing serve's request validation with Hypothesis: random JSON bodies, OpenAI-shaped fields
mutated (wrong types, out-of-range numbers, lone surrogates, deep nesting, hostile schemas, broken
bytes), sent to a real `llmctl serve`. Every answer is a 2xx or a 4xx in OpenAI's shape, never a 5xx,
and the server is alive and serving at the end. LLMCTL_FUZZ_EXAMPLES sets the number of bodies
(300 by default, what CI runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests._serve import start_smoke, stop_server

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]

EXAMPLES = int(os.environ.get("LLMCTL_FUZZ_EXAMPLES", "300"))

# Text with everything JSON can carry: controls, lone surrogates (sent as \ud800 escapes), astral.
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=12)
NUMBER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 5, 2**31, 2**63, -(2**63) - 1, 262144]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.5, 2.5, 1e308, 5e-324]),
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT, st.sampled_from(["5", "true", "yes", "", "text"]))
JSON = st.recursive(
    SCALAR, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(TEXT, c, max_size=4)), max_leaves=12
)
SCHEMA = st.recursive(
    st.sampled_from(
        [
            {},
            {"type": "string"},
            {"type": "integer"},
            {"enum": []},
            {"anyOf": []},
            {"type": []},
            {"const": "\u0000"},
            {"type": "string", "pattern": "^\\d+$"},
            {"$ref": "#/$defs/x"},
            {"type": "array", "minItems": 100_000_000},
            {"type": "string", "maxLength": 3},
        ]
    ),
    lambda c: st.one_of(
        st.builds(
            lambda p: {"type": "object", "properties": p, "required": list(p)}, st.dictionaries(TEXT, c, max_size=3)
        ),
        st.builds(lambda i: {"type": "array", "items": i, "maxItems": 2}, c),
        st.builds(lambda a: {"anyOf": a}, st.lists(c, max_size=3)),
    ),
    max_leaves=6,
)
RESPONSE_FORMAT = st.one_of(
    st.builds(lambda s: {"type": "json_object", "schema": s}, SCHEMA),
    st.builds(lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}, SCHEMA),
    st.sampled_from([{}, {"type": "text"}, {"type": "json_object"}, {"type": "xml"}]),
    JSON,
)
TOOL = st.one_of(
    st.builds(
        lambda n, s: {
            "type": "function",
            "function": {"name": n, "parameters": {"type": "object", "properties": {"a": s}}},
        },
        st.one_of(st.sampled_from(["f", "g", "a b", "x" * 65, ""]), TEXT),
        SCHEMA,
    ),
    st.builds(lambda s: {"type": "function", "function": {"name": "f", "parameters": s}}, SCHEMA),
    JSON,
)
TOOL_CHOICE = st.one_of(
    st.sampled_from(
        ["auto", "none", "required", "sometimes", {"type": "function"}, {"type": "function", "function": {"name": "f"}}]
    ),
    JSON,
)
PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, TEXT),
    st.sampled_from([{"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text"}]),
    st.dictionaries(st.sampled_from(["type", "text", "refusal"]), JSON, max_size=3),
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]), JSON),
        "content": st.one_of(TEXT, st.lists(PART, max_size=3), st.none(), JSON),
        "name": st.one_of(TEXT, JSON),
        "tool_call_id": st.one_of(TEXT, JSON),
        "tool_calls": st.one_of(
            st.just([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]), JSON
        ),
    },
)
FIELDS = {
    "model": st.one_of(TEXT, JSON),
    "max_tokens": st.one_of(NUMBER, JSON),
    "max_completion_tokens": NUMBER,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "top_k": NUMBER,
    "min_p": NUMBER,
    "typical_p": NUMBER,
    "repeat_penalty": NUMBER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "seed": NUMBER,
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=20), JSON),
    "stream": st.one_of(st.booleans(), JSON),
    "stream_options": st.one_of(st.just({"include_usage": True}), JSON),
    "n": NUMBER,
    "best_of": NUMBER,
    "logprobs": st.one_of(st.booleans(), NUMBER),
    "logit_bias": st.one_of(
        st.dictionaries(
            st.one_of(TEXT, st.sampled_from(["-5", "5", "05", "262143", "1e3"])), st.one_of(NUMBER, JSON), max_size=3
        ),
        JSON,
    ),
    "echo": st.one_of(st.booleans(), JSON),
    "suffix": st.one_of(TEXT, JSON),
    "prompt": st.one_of(
        TEXT,
        st.lists(st.integers(-10, 300_000), max_size=5),
        st.lists(TEXT, max_size=3),
        st.lists(st.lists(st.integers(-10, 300_000), max_size=3), max_size=2),
        JSON,
    ),
    "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
    "response_format": RESPONSE_FORMAT,
    "tools": st.one_of(st.lists(TOOL, max_size=3), JSON),
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": st.one_of(st.booleans(), JSON),
    "top_logprobs": NUMBER,
    "functions": JSON,
    "modalities": st.one_of(st.just(["text"]), JSON),
    "user": JSON,
}
BASE = {
    "chat": {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2},
    "completion": {"prompt": "Hi", "max_tokens": 2},
}
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "embedding": "/v1/embeddings"}


@st.composite
def requests(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["chat", "completion", "chat", "completion", "embedding"]))
    body = dict(BASE.get(kind, {"input": "hi"}))
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True)):
        body[key] = draw(FIELDS[key])
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        del body[key]
    raw = json.dumps(body).encode()
    damage = draw(st.sampled_from(["none"] * 8 + ["truncate", "byte", "deep", "nan"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "byte":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i:]
    elif damage == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 1000, 20_000]))
        raw = raw[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    elif damage == "nan":
        raw = raw[:-1] + b', "temperature": ' + draw(st.sampled_from([b"NaN", b"Infinity", b"-1e999"])) + b"}"
    return PATHS[kind], raw


@pytest.fixture(scope="module")
def served(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_smoke(
        tmp_path_factory.mktemp("fuzz"),
        smoke_store,
        n_ctx=256,
        limits="max_tokens: 3\nqueue_length: 64\nqueue_timeout_s: 300\nrate_limit_rpm: 0",
    )
    try:
        yield server
    finally:
        assert stop_server(server) == 0, "\n".join(server.log_lines()[-20:])


def test_random_bodies_get_2xx_or_4xx_and_the_server_lives(served):
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(requests())
    def one(request):
        path, raw = request
        with httpx.Client(timeout=300) as c:
            r = c.post(served.url + path, content=raw, headers={"Content-Type": "application/json"})
            body = r.read()
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert 200 <= r.status_code < 500, (raw[:300], r.status_code, body[:300])
        if r.status_code >= 400:
            err = json.loads(body)["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
        assert served.proc.poll() is None, "the server died"

    one()
    assert statuses.get(200) and statuses.get(400), statuses  # both kinds were exercised
    assert served.proc.poll() is None
    r = httpx.post(served.url + "/v1/completions", json={"prompt": "One, two,", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    log = "\n".join(served.log_lines())
    assert "Exception in ASGI application" not in log and "Traceback" not in log
