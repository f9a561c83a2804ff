"""Request validation (llmctl.serve.protocol): raw body -> validated model -> GenerationRequest.

Pure functions; the integration tests (test_serve_hardening.py) send the same bodies to a real server.
"""

from __future__ import annotations

import json

import pytest

from llmctl.serve import protocol as P
from llmctl.serve.engine import NotReady

LIMITS = P.Limits(model_name="smoke", n_ctx=512, max_tokens=64, max_prompt_tokens=None)
N_VOCAB = 1000
MSG = [{"role": "user", "content": "hi"}]


def translate(body: dict | bytes, n_vocab: int = N_VOCAB):
    data = P.parse_body(body if isinstance(body, bytes) else json.dumps(body).encode())
    model = P.validate_chat(data) if "messages" in data else P.validate_completion(data)
    return P.to_generation_request(model, LIMITS, n_vocab)


def refused(body: dict | bytes, n_vocab: int = N_VOCAB) -> P.InvalidRequest:
    with pytest.raises(P.InvalidRequest) as info:
        translate(body, n_vocab)
    assert info.value.status == 400 and info.value.message
    return info.value


# -- the body: JSON that parses, nests sanely and is text -------------------------------------------------


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests too deeply"),
        (b'{"prompt": ' + b"[" * 70 + b"]" * 70 + b"}", "nests too deeply"),
        (b'{"prompt": "\\ud800", "max_tokens": 2}', "lone UTF-16 surrogate"),
        (b'{"prompt": "x", "\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"prompt": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate encoded in UTF-8
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"prompt": "x", "temperature": NaN}', "NaN is not a JSON number"),
        (b'{"prompt": "x", "temperature": Infinity}', "Infinity is not a JSON number"),
        (b'{"prompt": "x", "temperature": -1e999}', "out of range"),
        (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "could not parse"),
        (b"{not json", "could not parse"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bodies_that_are_not_sane_json_text_are_400(raw, words):
    assert words in refused(raw).message


def test_a_lone_surrogate_in_a_key_is_named_with_an_escape():
    err = refused(b'{"prompt": "x", "echo": {"a": {"\\ud800": 1}}}')
    assert err.param == "echo.a.\\ud800"
    err.param.encode("utf-8")  # the error response can be written


def test_a_paired_surrogate_escape_is_text():
    assert translate(b'{"prompt": "\\ud83d\\ude00", "max_tokens": 2}').params["prompt"] == "\U0001f600"


# -- strict types, ranges, and what only the vocabulary can tell ----------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 5.0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream": 1}, "stream"),
        ({"prompt": "x", "temperature": "0.5"}, "temperature"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": True}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "top_k": 2**31}, "top_k"),
        ({"prompt": "x", "repeat_penalty": 0}, "repeat_penalty"),
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "stop": ""}, "stop"),
        ({"prompt": "x", "stop": ["a"] * 17}, "stop"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logprobs": 1}, "logprobs"),
        ({"prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"prompt": "x", "logit_bias": {"-5": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"05": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5.0": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"1000": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"prompt": "x", "logit_bias": {"5": "1"}}, "logit_bias.5"),
        ({"prompt": [1000]}, "prompt[0]"),
        ({"prompt": [-5]}, "prompt[0]"),
        ({"prompt": [1, True]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [""]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [2, 100], "echo": True}, "echo"),
        ({"prompt": "x", "echo": "true"}, "echo"),
        ({"prompt": "x", "suffix": 5}, "suffix"),
        ({"prompt": [1] * 449}, "prompt"),  # 512 - 64 = 448 tokens of room
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "function", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "r"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages[0].content[0].type"),
        ({"messages": MSG, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": MSG, "logprobs": True}, "logprobs"),
        ({"messages": MSG, "response_format": {}}, "response_format"),
        ({"messages": MSG, "response_format": "json"}, "response_format"),
        ({"messages": MSG, "response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"messages": MSG, "response_format": {"type": "json_object", "schema": {"enum": []}}},
            "response_format.schema.enum",
        ),
    ],
)
def test_lax_or_impossible_values_are_400_naming_the_field(body, param):
    assert refused(body).param == param


def test_image_parts_are_refused_clearly():
    err = refused(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                    ],
                }
            ]
        }
    )
    assert err.code == "unsupported_content" and "text only" in err.message


def test_token_ids_cannot_be_checked_while_loading():
    with pytest.raises(NotReady):
        translate({"prompt": [1, 2]}, n_vocab=0)
    with pytest.raises(NotReady):
        translate({"prompt": "x", "logit_bias": {"1": 1}}, n_vocab=0)
    assert translate({"prompt": "x"}, n_vocab=0).params["prompt"] == "x"  # text needs no vocabulary


# -- the normalized shape the engine relies on ------------------------------------------------------------


def test_chat_is_normalized_for_the_engine():
    req = translate(
        {
            "model": "anything",
            "max_tokens": 9,
            "temperature": 0,
            "seed": -1,
            "stop": "END",
            "logit_bias": {"0": -100, "999": 2.5},
            "stream": True,
            "user": "u-1",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "name": "ann",
                    "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                    "extra": 1,
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            ],
        }
    )
    assert req.endpoint == "chat" and req.stream is True
    assert req.max_prompt_tokens == 512 - 9
    assert req.params == {
        "max_tokens": 9,
        "model": "smoke",
        "temperature": 0,
        "seed": -1,
        "stop": ["END"],
        "logit_bias": {0: -100.0, 999: 2.5},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one\ntwo", "name": "ann"},
            # tool traffic as text in the generic tool format (llmctl.serve.tools), which any template renders
            {"role": "assistant", "content": '{"tool_calls": [{"name": "f", "arguments": {}}]}'},
            {"role": "user", "content": '{"tool_response": {"name": "f", "content": "42", "tool_call_id": "c1"}}'},
            {"role": "assistant", "content": "no"},
        ],
    }


def test_completion_is_normalized_for_the_engine():
    req = translate({"prompt": [[5, 6, 7]], "max_tokens": 1000})
    assert req.params == {"max_tokens": 64, "model": "smoke", "prompt": [5, 6, 7], "echo": False, "suffix": None}
    req = translate({"prompt": ["Hello"], "echo": True, "suffix": "!", "top_k": 0, "min_p": 0.1})
    assert req.params == {
        "max_tokens": 64,
        "model": "smoke",
        "prompt": "Hello",
        "echo": True,
        "suffix": "!",
        "top_k": 0,
        "min_p": 0.1,
    }
    assert P.prompt_text(req) == "Hello"
    assert P.prompt_text(translate({"prompt": [1, 2]})) == ""


def test_response_format_reaches_the_engine_only_as_grammar():
    pytest.importorskip("llama_cpp", reason="the converter is llama-cpp-python's")
    req = translate({"messages": MSG, "response_format": {"type": "json_object"}})
    assert "response_format" not in req.params
    assert req.params["grammar"].startswith("array ::=") and "root ::= object" in req.params["grammar"]
    assert "grammar" not in translate({"messages": MSG, "response_format": {"type": "text"}}).params


def test_unknown_fields_are_accepted_and_not_passed_on():
    req = translate({"prompt": "x", "frobnicate": {"deep": [1, 2]}, "grammar": 'root ::= "x"'})
    assert "frobnicate" not in req.params and "grammar" not in req.params


def test_the_prompt_budget_is_the_context_less_max_tokens_within_the_cap():
    """max_prompt_tokens (what the engine checks on the formatted prompt) = n_ctx - max_tokens, and no
    more than the server's max_prompt_tokens; no room at all is a 400 on max_tokens."""
    assert translate({"prompt": "x", "max_tokens": 12}).max_prompt_tokens == 512 - 12
    assert translate({"messages": MSG}).max_prompt_tokens == 512 - 64
    capped = P.Limits(model_name="smoke", n_ctx=512, max_tokens=64, max_prompt_tokens=100)
    body = P.validate_completion(P.parse_body(b'{"prompt": "x", "max_tokens": 12}'))
    assert P.to_generation_request(body, capped, N_VOCAB).max_prompt_tokens == 100
    full = P.Limits(model_name="smoke", n_ctx=64, max_tokens=64, max_prompt_tokens=None)
    with pytest.raises(P.InvalidRequest) as info:
        P.to_generation_request(P.validate_completion({"prompt": "x"}), full, N_VOCAB)
    assert info.value.param == "max_tokens" and "no room for a prompt" in info.value.message
    ids = P.validate_completion({"prompt": [1] * 101})
    with pytest.raises(P.InvalidRequest) as info:
        P.to_generation_request(ids, capped, N_VOCAB)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"


def test_the_translation_is_pure():
    """The same body gives the same request, and the body is left as it was (the router forwards it)."""
    data = {
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]}],
        "stop": "x",
        "logit_bias": {"5": 1},
        "stream": True,
    }
    snapshot = json.loads(json.dumps(data))
    body = P.validate_chat(data)
    first, second = P.to_generation_request(body, LIMITS, N_VOCAB), P.to_generation_request(body, LIMITS, N_VOCAB)
    assert first == second and first.stream is True and first.endpoint == "chat"
    assert data == snapshot


def test_limits_of_the_settings():
    from types import SimpleNamespace

    settings = SimpleNamespace(
        model_name="chat", n_ctx=2048, limits=SimpleNamespace(max_tokens=256, max_prompt_tokens=1000, max_n=3)
    )
    assert P.Limits.of(settings) == P.Limits("chat", 2048, 256, 1000, 3)  # type: ignore[arg-type]


def test_max_tokens_defaults_and_is_capped():
    assert translate({"prompt": "x"}).params["max_tokens"] == 64
    assert translate({"prompt": "x", "max_tokens": 3}).params["max_tokens"] == 3
    assert translate({"messages": MSG, "max_tokens": 3, "max_completion_tokens": 7}).params["max_tokens"] == 7


@pytest.mark.parametrize(
    "value, result",
    [
        ("hi", "hi"),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_embedding_input(value, result):
    body = P.validate_embedding(P.parse_body(json.dumps({"input": value}).encode()))
    assert P.embedding_input(body) == result


@pytest.mark.parametrize(
    "value, param",
    [
        ("", "input"),
        ([], "input"),
        (["a", ""], "input[1]"),
        ([1, 2], "input"),
        ([[1, 2]], "input"),
        (5, "input"),
        (["a"] * 2049, "input"),
    ],
)
def test_bad_embedding_input_is_400(value, param):
    with pytest.raises(P.InvalidRequest) as info:
        P.embedding_input(P.validate_embedding(P.parse_body(json.dumps({"input": value}).encode())))
    assert info.value.param == param
