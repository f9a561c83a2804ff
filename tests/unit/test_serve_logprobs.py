"""Completions' logprobs in the legacy shape (llmctl.serve.choices), from the engine's per-token entries."""

from __future__ import annotations

from llmctl.serve.choices import completion_logprobs, legacy_logprobs


def entry(token: str, logprob: float, top: dict[str, float]) -> dict:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top.items()],
    }


def test_the_legacy_shape():
    entries = [entry("b", -0.1, {"b": -0.1, "c": -2.0}), entry("a", -1.5, {"c": -0.5, "a": -1.5})]
    c = completion_logprobs(entries, text_offset=10)
    assert c == {
        "tokens": ["b", "a"],
        "token_logprobs": [-0.1, -1.5],
        "top_logprobs": [{"b": -0.1, "c": -2.0}, {"c": -0.5, "a": -1.5}],
        "text_offset": [10, 11],
    }


def test_offsets_run_on_across_a_stream():
    offset = [0]
    first = {"choices": [{"text": "ba", "logprobs": {"content": [entry("b", -1, {}), entry("a", -1, {})]}}]}
    second = {"choices": [{"text": "cd", "logprobs": {"content": [entry("cd", -1, {"cd": -1})]}}]}
    assert legacy_logprobs(first, offset)["choices"][0]["logprobs"]["text_offset"] == [0, 1]
    assert legacy_logprobs(second, offset)["choices"][0]["logprobs"]["text_offset"] == [2]
    none = {"choices": [{"text": "", "logprobs": None}]}
    assert legacy_logprobs(none, offset) == none and offset == [4]
