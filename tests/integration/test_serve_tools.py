"""Tools, structured outputs and n through a real `llmctl serve` of the smoke model, with the real
`openai` client: what agents and apps send (issue 14).

The smoke model (Gemma 3 270M) has no tool format of its own, so it gets the generic one; a grammar
built from the functions' schemas holds it to calls that parse and match, even at 270M.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests._serve import start_smoke, stop_server

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

pytestmark = [pytest.mark.model, pytest.mark.slow]

WEATHER_ARGS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER_ARGS},
}
TIME_ARGS = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}}, "required": ["zone"]}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a zone.", "parameters": TIME_ARGS},
}
ARGS = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def served(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_smoke(
        tmp_path_factory.mktemp("serve-tools"),
        smoke_store,
        n_ctx=2048,
        limits="max_tokens: 160\nqueue_timeout_s: 300\nrate_limit_rpm: 0\nmax_n: 3",
    )
    try:
        yield server
    finally:
        assert stop_server(server) == 0, "\n".join(server.log_lines()[-20:])


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0, timeout=300)


def valid_call(call) -> dict:
    """A tool call in OpenAI's shape whose arguments parse and match the function's schema."""
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, ARGS[call.function.name])
    return args


def healthy(served) -> None:
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200


# -- tool calls ---------------------------------------------------------------------------------------------


def test_required_call_parses_and_matches(client):
    r = client.chat.completions.create(
        model="smoke", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0.7, seed=3
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls and choice.message.content is None
    for call in choice.message.tool_calls:
        valid_call(call)


def test_named_call_streamed_is_reassembled_by_the_sdk(client):
    with client.chat.completions.stream(
        model="smoke",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    assert valid_call(choice.message.tool_calls[0])["zone"] in ("UTC", "CET", "PST")


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_with_a_call_or_text_never_the_envelope(client, stream):
    # one call at most: at 270M the model, offered parallel calls, tends to call again and again
    kw = dict(
        model="smoke",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="auto",
        seed=11,
        temperature=0.9,
        parallel_tool_calls=False,
    )
    if stream:
        with client.chat.completions.stream(**kw) as s:
            try:
                r = s.get_final_completion()
            except openai.LengthFinishReasonError as exc:  # a text answer may run to max_tokens
                r = exc.completion
    else:
        r = client.chat.completions.create(**kw)
    m = r.choices[0].message
    if m.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        for call in m.tool_calls:
            valid_call(call)
    else:
        assert r.choices[0].finish_reason in ("stop", "length")
        assert isinstance(m.content, str) and not m.content.lstrip().startswith('{"response"')


def test_a_tool_result_goes_back_in_the_next_turn(client):
    first = client.chat.completions.create(model="smoke", messages=ASK, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    r = client.chat.completions.create(
        model="smoke", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=24
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.content is not None and not r.choices[0].message.tool_calls


# -- structured outputs -----------------------------------------------------------------------------------


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    legs: int


class Owner(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    pets: list[Pet] = pydantic.Field(max_length=2)


def test_parse_with_a_pydantic_model_returns_the_object(client):
    # Owner's schema has $defs and $refs (Pet), strict mode from the SDK
    r = client.chat.completions.parse(
        model="smoke",
        response_format=Owner,
        messages=[{"role": "user", "content": "Ann has a dog called Rex. Describe her as JSON."}],
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Owner) and all(isinstance(p, Pet) for p in parsed.pets)


def test_json_object(client):
    r = client.chat.completions.create(
        model="smoke",
        response_format={"type": "json_object"},
        max_tokens=160,
        messages=[{"role": "user", "content": "A JSON object with a key a."}],
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "body,param",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
                    },
                }
            },
            "response_format.json_schema.schema.properties.a.$ref",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": []}}}},
            "response_format.json_schema.schema.enum",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"$ref": "#/$defs/Node"}},
                                "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters.$defs.Node.properties.next",
        ),  # recursive
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "missing"}}},
            "tool_choice.function.name",
        ),
    ],
)
def test_bad_schemas_are_400_and_the_server_lives(served, body, param):
    r = httpx.post(served.url + "/v1/chat/completions", json={"messages": ASK, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    healthy(served)


@pytest.mark.parametrize(
    "field,value",
    [
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("n", 4),  # above limits.max_n
    ],
)
def test_refused_fields_are_400_naming_them(served, field, value):
    r = httpx.post(served.url + "/v1/chat/completions", json={"messages": ASK, field: value}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


# -- n ------------------------------------------------------------------------------------------------------


def test_n_choices(client):
    r = client.chat.completions.create(model="smoke", messages=ASK, n=2, max_tokens=8, seed=5, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content is not None for c in r.choices)
    assert r.usage.completion_tokens >= 2 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_n_choices_streamed(client):
    seen: dict[int, str] = {}
    finished: set[int] = set()
    usage = None
    for chunk in client.chat.completions.create(
        model="smoke", messages=ASK, n=2, max_tokens=8, stream=True, stream_options={"include_usage": True}
    ):
        for c in chunk.choices:
            seen[c.index] = seen.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
        usage = chunk.usage or usage
    assert finished == {0, 1} and set(seen) == {0, 1}
    assert usage is not None and usage.completion_tokens >= 2


def test_n_with_a_required_tool_gives_calls_in_each_choice(client):
    r = client.chat.completions.create(model="smoke", messages=ASK, tools=[TIME], tool_choice="required", n=2)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.finish_reason == "tool_calls"
        valid_call(c.message.tool_calls[0])


# -- concurrency: nothing leaks between sequences -----------------------------------------------------------


def test_mixed_concurrent_streams_do_not_leak(client):
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def tool() -> None:
        with client.chat.completions.stream(
            model="smoke", messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
        ) as s:
            results["tool"] = s.get_final_completion()

    def schema() -> None:
        with client.chat.completions.stream(
            model="smoke",
            response_format=Owner,
            messages=[{"role": "user", "content": "Describe Ann and her cat as JSON."}],
        ) as s:
            results["schema"] = s.get_final_completion()

    def plain(name: str) -> None:
        text = ""
        for chunk in client.chat.completions.create(
            model="smoke", stream=True, max_tokens=24, messages=[{"role": "user", "content": "Say hello."}]
        ):
            for c in chunk.choices:
                assert not c.delta.tool_calls
                text += c.delta.content or ""
        results[name] = text

    def run(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in ((tool,), (schema,), (plain, "a"), (plain, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    tool_choice = results["tool"].choices[0]  # type: ignore[attr-defined]
    assert tool_choice.finish_reason == "tool_calls"
    valid_call(tool_choice.message.tool_calls[0])
    assert isinstance(results["schema"].choices[0].message.parsed, Owner)  # type: ignore[attr-defined]
    for name in ("a", "b"):
        assert isinstance(results[name], str) and not str(results[name]).lstrip().startswith("{")


def test_n_choices_for_completions(client):
    r = client.completions.create(model="smoke", prompt="One, two,", n=2, max_tokens=4, seed=1, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]


# -- the native formats, forced on the smoke model by services.<name>.tool_format ------------------------


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_native_formats_end_to_end(smoke_store: Path, tmp_path: Path, fmt: str):
    """The grammar writes each format's envelope, the parser reads it back: required, streamed and not."""
    server = start_smoke(
        tmp_path / fmt,
        smoke_store,
        n_ctx=2048,
        service=f"tool_format: {fmt}",
        limits="max_tokens: 160\nrate_limit_rpm: 0",
    )
    try:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
        named = {"type": "function", "function": {"name": "get_time"}}
        r = c.chat.completions.create(model="smoke", messages=ASK, tools=[WEATHER, TIME], tool_choice=named)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        assert [t.function.name for t in r.choices[0].message.tool_calls] == ["get_time"]
        valid_call(r.choices[0].message.tool_calls[0])
        with c.chat.completions.stream(model="smoke", messages=ASK, tools=[WEATHER], tool_choice="required") as s:
            final = s.get_final_completion()
        assert final.choices[0].finish_reason == "tool_calls"
        valid_call(final.choices[0].message.tool_calls[0])
        # a past call and its result go back in this format
        history = [
            *ASK,
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": r.choices[0].message.tool_calls[0].id, "content": "12:00"},
        ]
        again = c.chat.completions.create(model="smoke", messages=history, tools=[TIME], max_tokens=16)
        assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
    finally:
        assert stop_server(server) == 0


# -- logprobs -----------------------------------------------------------------------------------------------


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model="smoke", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = r.choices[0].logprobs.content
    assert (
        len(entries) == r.usage.completion_tokens and "".join(e.token for e in entries) == r.choices[0].message.content
    )
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        # temperature 0 takes the most likely token: the same logits gave both
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)


def test_chat_logprobs_streamed(client):
    text, entries = "", []
    for chunk in client.chat.completions.create(
        model="smoke", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            entries += (c.logprobs.content or []) if c.logprobs else []
    assert entries and "".join(e.token for e in entries) == text
    assert all(len(e.top_logprobs) == 3 for e in entries)


def test_completion_logprobs_in_the_legacy_shape(client):
    r = client.completions.create(model="smoke", prompt="One, two,", max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(t) <= 3 and tok in t for t, tok in zip(lp.top_logprobs, lp.tokens))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_logprobs_with_a_tool_call(client):
    r = client.chat.completions.create(
        model="smoke", messages=ASK, tools=[TIME], tool_choice="required", logprobs=True, top_logprobs=1
    )
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].logprobs.content
