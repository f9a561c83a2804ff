"""Tool calling (llmctl.serve.tools): validation, rendering per format, grammars, parsing, streaming.

Pure functions. The grammars are checked with llama.cpp's own parser (tests/gbnf_check.py) where the
format needs one; the integration tests (test_serve_tools.py) run them on the smoke model.
"""

from __future__ import annotations

import json

import pytest

from llmctl.serve import protocol as P
from llmctl.serve import tools as T

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
LIMITS = P.Limits(model_name="smoke", n_ctx=512, max_tokens=64, max_prompt_tokens=None, max_n=4)


def spec(choice=None, parallel=True, tools=(WEATHER, TIME)) -> T.ToolSpec:
    out = T.parse_tools(list(tools), choice, parallel)
    assert out is not None
    return out


# -- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tools,choice,parallel,param",
    [
        ("f", None, None, "tools"),
        ([], None, None, "tools"),
        ([{"type": "retrieval"}], None, None, "tools[0].type"),
        ([{"type": "function"}], None, None, "tools[0].function"),
        ([{"type": "function", "function": {"name": "a b"}}], None, None, "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "x" * 65}}], None, None, "tools[0].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "description": 5}}],
            None,
            None,
            "tools[0].function.description",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            None,
            None,
            "tools[0].function.parameters",
        ),
        (
            [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"enum": []}}}},
                }
            ],
            None,
            None,
            "tools[0].function.parameters.properties.x.enum",
        ),
        (
            [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
                    },
                }
            ],
            None,
            None,
            "tools[0].function.parameters.properties.x.$ref",
        ),
        ([WEATHER, WEATHER], None, None, "tools[1].function.name"),
        ([WEATHER], "sometimes", None, "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, None, "tool_choice.function.name"),
        ([WEATHER], {"type": "function"}, None, "tool_choice.function.name"),
        ([WEATHER], None, "yes", "parallel_tool_calls"),
        (None, "required", None, "tool_choice"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(tools, choice, parallel, param):
    with pytest.raises(T.ToolError) as info:
        T.parse_tools(tools, choice, parallel)
    assert info.value.param == param


def test_tools_parse():
    s = spec({"type": "function", "function": {"name": "get_time"}}, False)
    assert [t.name for t in s.tools] == ["get_weather", "get_time"]
    assert s.choice == "get_time" and s.forced and not s.parallel
    assert [t.name for t in s.offered] == ["get_time"]
    assert spec("none").offered == () and spec("required").forced
    assert not T.parse_tools([WEATHER]).parallel  # one call per answer unless asked, as llama-server
    assert T.parse_tools(None, "none") is None and T.parse_tools(None) is None


def test_detect_format():
    assert T.detect_format("{% for m in messages %}<tool_call>{% endfor %}") == "hermes"
    assert T.detect_format("[AVAILABLE_TOOLS] [TOOL_CALLS]") == "mistral"
    assert T.detect_format("<|start_header_id|>ipython<|end_header_id|> <|python_tag|>") == "llama3"
    assert T.detect_format("<start_of_turn>user") == "generic"
    assert T.detect_format(None) == "generic"


# -- rendering ----------------------------------------------------------------------------------------------

HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
]


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_render_gives_plain_alternating_messages(fmt):
    out = T.render_messages(HISTORY, spec(), fmt)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert all(isinstance(m["content"], str) and set(m) <= {"role", "content", "name"} for m in out)
    assert "get_weather" in out[0]["content"] and "get_time" in out[0]["content"]
    assert "Paris" in out[2]["content"] and "21 C" in out[3]["content"] and "sunny" in out[3]["content"]
    # The past call is written the way the model is asked to write one: it parses back.
    parsed = T.parse_output(out[2]["content"], spec(), fmt)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Paris"})]


def test_render_keeps_a_system_prompt_and_formats():
    out = T.render_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], spec(), "hermes"
    )
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and "<tools>" in out[0]["content"]
    generic = T.render_messages(HISTORY, spec(), "generic")
    assert json.loads(generic[3]["content"].split("\n\n")[0]) == {
        "tool_response": {"name": "get_weather", "content": "21 C", "tool_call_id": "call_1"}
    }
    assert "<tool_response>\n21 C\n</tool_response>" in T.render_messages(HISTORY, spec(), "hermes")[3]["content"]
    # tool_choice none: the definitions stay out; the history is still text
    out = T.render_messages(HISTORY, spec("none"), "generic")
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert T.render_messages([{"role": "user", "content": "x", "name": "ann"}], None, "generic") == [
        {"role": "user", "content": "x", "name": "ann"}
    ]


# -- grammars -----------------------------------------------------------------------------------------------


def test_grammar_only_where_needed():
    assert T.grammar_for(spec("none"), "generic") is None
    assert T.grammar_for(spec("auto"), "hermes") is None
    for fmt in T.FORMATS:
        assert T.grammar_for(spec("required"), fmt)
    assert T.grammar_for(spec("auto"), "generic")


@pytest.fixture(scope="module")
def parser(smoke_store):
    from tests.unit.test_serve_grammar import Parser

    p = Parser(smoke_store / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf")
    yield p
    p.close()


@pytest.mark.model
def test_grammars_are_ones_llama_cpp_parses(parser):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for fmt in T.FORMATS:
        for choice in ("auto", "required", named):
            for parallel in (True, False):
                gbnf = T.grammar_for(spec(choice, parallel), fmt)
                assert gbnf is None or parser.accepts(gbnf), (fmt, choice, gbnf)


def test_named_grammar_names_only_that_function():
    gbnf = T.grammar_for(spec({"type": "function", "function": {"name": "get_weather"}}), "hermes")
    assert gbnf is not None and "get_weather" in gbnf and "get_time" not in gbnf
    assert gbnf.startswith('root ::= "<tool_call>\\n" tool-json "\\n</tool_call>"')


# -- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,text,content,calls",
    [
        (
            "generic",
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        ("generic", '{"response": "Hello \\"you\\""}', 'Hello "you"', []),
        ("generic", "plain words", "plain words", []),
        ("generic", '{"response": "cut \\u00e9 sho', "cut \u00e9 sho", []),  # max_tokens: the text so far
        (
            "generic",
            '{"tool_calls": [{"name": "unknown", "arguments": {}}]}',
            '{"tool_calls": [{"name": "unknown", "arguments": {}}]}',
            [],
        ),
        (
            "hermes",
            (
                'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
                '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
            ),
            "Let me check.",
            [("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})],
        ),
        (
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        ("hermes", "No tools needed.", "No tools needed.", []),
        ("hermes", "<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
        (
            "mistral",
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        ("mistral", ' [{"name": "get_time", "arguments": {"zone": "UTC"}}]', None, [("get_time", {"zone": "UTC"})]),
        ("mistral", "[1, 2] are numbers", "[1, 2] are numbers", []),
        (
            "llama3",
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        (
            "llama3",
            ('{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_time", "parameters": {"zone": "B"}}'),
            None,
            [("get_weather", {"city": "A"}), ("get_time", {"zone": "B"})],
        ),
        ("llama3", '{"a": 1}', '{"a": 1}', []),
    ],
)
def test_parse_output(fmt, text, content, calls):
    parsed = T.parse_output(text, spec(), fmt)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in parsed.calls)
    assert parsed.finish_reason == ("tool_calls" if calls else None)


def test_parallel_false_keeps_one_call():
    text = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "A"}}, '
        '{"name": "get_time", "arguments": {"zone": "B"}}]}'
    )
    assert len(T.parse_output(text, spec(parallel=False), "generic").calls) == 1
    assert len(T.parse_output(text, spec(), "generic").calls) == 2


# -- streaming ----------------------------------------------------------------------------------------------


def stream(text: str, fmt: str, s: T.ToolSpec | None = None, step: int = 3) -> tuple[str, list[dict], bool]:
    """Feed `text` in pieces of `step` characters; reassemble as the openai SDK does."""
    a = T.StreamAssembler(s or spec(), fmt)
    deltas: list[dict] = []
    for i in range(0, len(text), step):
        deltas += a.feed(text[i : i + step])
    rest, called = a.finish()
    deltas += rest
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            if "id" in tc:
                c["id"] = tc["id"]
                assert tc["type"] == "function"
            c["name"] += tc["function"].get("name", "")
            c["arguments"] += tc["function"].get("arguments", "")
    return content, [calls[i] for i in sorted(calls)], called


@pytest.mark.parametrize(
    "fmt,text",
    [
        ("generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'),
        ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'),
        ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]'),
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo"}}'),
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_streamed_calls_match_the_whole_parse(fmt, text, step):
    content, calls, called = stream(text, fmt, step=step)
    whole = T.parse_output(text, spec(), fmt)
    assert called and content.strip() == (whole.content or "")  # streamed: blanks before a call may have gone out
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (c.name, json.loads(c.arguments)) for c in whole.calls
    ]
    assert all(c["id"].startswith("call_") for c in calls)


@pytest.mark.parametrize(
    "fmt,text,expected",
    [
        ("generic", '{"response": "Hi \\"there\\" \\u00e9\\ud83d\\ude00\\n"}', 'Hi "there" \u00e9\U0001f600\n'),
        ("generic", "not json at all", "not json at all"),
        ("hermes", "Just text, < and <tool but no call.", "Just text, < and <tool but no call."),
        ("mistral", "Plain answer [1].", "Plain answer [1]."),
        ("mistral", "[not a call]", "[not a call]"),
        ("llama3", "{curly} text", "{curly} text"),
        ("llama3", "Plain.", "Plain."),
    ],
)
@pytest.mark.parametrize("step", [1, 2, 7])
def test_streamed_content_arrives_whole(fmt, text, expected, step):
    content, calls, called = stream(text, fmt, step=step)
    assert (content, calls, called) == (expected, [], False)


def test_generic_response_streams_before_the_end():
    a = T.StreamAssembler(spec(), "generic")
    assert a.feed('{"response": "Hel') == [{"content": "Hel"}]
    assert a.feed('lo"}') == [{"content": "lo"}]
    assert a.finish() == ([], False)


def test_hermes_content_streams_before_the_call():
    a = T.StreamAssembler(spec(), "hermes")
    assert a.feed("Sure. <tool") == [{"content": "Sure. "}]
    assert a.feed('_call>\n{"name": "get_time", "arguments": {"zone": "X"}}\n</tool_call>') == []
    rest, called = a.finish()
    assert called and rest[0]["tool_calls"][0]["function"]["name"] == "get_time"


# -- through protocol ---------------------------------------------------------------------------------------


def translate(body: dict, fmt: str = "generic"):
    data = P.parse_body(json.dumps(body).encode())
    model = P.validate_chat(data)
    return P.to_generation_request(model, LIMITS, 1000, tools=P.tool_spec(model), tool_format=fmt)


def test_protocol_renders_tools_and_sets_the_grammar():
    req = translate({"messages": HISTORY, "tools": [WEATHER], "tool_choice": "required"})
    assert [m["role"] for m in req.params["messages"]] == ["system", "user", "assistant", "user"]
    assert "tool_calls" in req.params["grammar"]
    req = translate({"messages": HISTORY, "tools": [WEATHER]}, "hermes")
    assert "grammar" not in req.params


@pytest.mark.parametrize(
    "body,param",
    [
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters.properties.x.$ref",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"n": 5}, "n"),
        ({"top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_protocol_refusals_name_the_field(body, param):
    with pytest.raises(P.InvalidRequest) as info:
        translate({"messages": [{"role": "user", "content": "hi"}], **body})
    assert info.value.param == param


def test_json_schema_with_refs_and_strict():
    req = translate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "Person",
                    "strict": True,
                    "schema": {
                        "$defs": {
                            "Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
                        },
                        "type": "object",
                        "properties": {"pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
                        "required": ["pets"],
                        "additionalProperties": False,
                    },
                },
            },
        }
    )
    assert "pets" in req.params["grammar"]
    assert translate({"messages": [{"role": "user", "content": "hi"}], "n": 4}).params["messages"]


@pytest.mark.parametrize(
    "fmt,text",
    [
        (
            "generic",
            (
                '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "O\\"s}lo"}}, '
                '{"name": "get_time", "arguments": {"zone": "UTC"}}]}'
            ),
        ),
        (
            "hermes",
            (
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "O\\"s}lo"}}\n</tool_call>\n'
                '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
            ),
        ),
        (
            "mistral",
            (
                '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "O\\"s}lo"}}, '
                '{"name": "get_time", "arguments": {"zone": "UTC"}}]'
            ),
        ),
    ],
)
def test_forced_calls_stream_their_arguments_as_written(fmt, text):
    s = spec("required", parallel=True)
    a = T.StreamAssembler(s, fmt)
    deltas: list[dict] = []
    for ch in text:
        deltas += a.feed(ch)
    assert a.finish() == ([], True)
    pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert len([p for p in pieces if "id" in p]) == 2
    assert sum(1 for p in pieces if p["function"].get("arguments")) > 4  # piece by piece, not at the end
    args = {0: "", 1: ""}
    for p in pieces:
        args[p["index"]] += p["function"]["arguments"]
    assert json.loads(args[0]) == {"city": 'O"s}lo'} and json.loads(args[1]) == {"zone": "UTC"}
    assert not [d for d in deltas if d.get("content")]


def test_a_forced_call_cut_short_stays_as_sent():
    a = T.StreamAssembler(spec("required"), "generic")
    out = a.feed('{"tool_calls": [{"name": "get_time", "arguments": {"zone": "U')
    assert out[0]["tool_calls"][0]["function"]["name"] == "get_time"
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in out[1:]) == '{"zone": "U'
    assert a.finish() == ([], True)


def test_logprobs_reach_the_engine_only_where_it_has_them():
    def req(body: dict, supported: bool = True):
        data = P.parse_body(json.dumps(body).encode())
        model = P.validate_chat(data) if "messages" in data else P.validate_completion(data)
        return P.to_generation_request(model, LIMITS, 1000, logprobs=supported)

    msgs = [{"role": "user", "content": "hi"}]
    assert req({"messages": msgs, "logprobs": True, "top_logprobs": 3}).params["logprobs"] == 3
    assert req({"messages": msgs, "logprobs": True}).params["logprobs"] == 0
    assert "logprobs" not in req({"messages": msgs, "logprobs": False}).params
    assert req({"prompt": "x", "logprobs": 2}).params["logprobs"] == 2
    for body, param in [
        ({"messages": msgs, "top_logprobs": 2}, "top_logprobs"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": 1, "echo": True}, "logprobs"),
    ]:
        with pytest.raises(P.InvalidRequest) as info:
            req(body)
        assert info.value.param == param
    with pytest.raises(P.InvalidRequest) as info:
        req({"messages": msgs, "logprobs": True}, supported=False)
    assert info.value.param == "logprobs" and info.value.code == "unsupported_parameter"
