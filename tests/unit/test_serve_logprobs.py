"""Log probabilities in OpenAI's shapes (llmctl.serve.logprobs): pure, numpy only."""

from __future__ import annotations

import math

import pytest

from llmctl.serve import logprobs as L

np = pytest.importorskip("numpy")
VOCAB = [b"a", b"b", b"c", b"\xe2\x82", b"d"]


def piece(token: int) -> bytes:
    return VOCAB[token]


def test_entry_is_the_log_softmax_and_its_top_k():
    logits = np.array([1.0, 3.0, 2.0, 0.0, -1.0], dtype=np.float32)
    e = L.entry(logits, 2, 3, piece)
    lse = math.log(sum(math.exp(x) for x in logits))
    assert e["token"] == "c" and e["bytes"] == [99]
    assert e["logprob"] == pytest.approx(2.0 - lse, abs=1e-5)
    assert [t["token"] for t in e["top_logprobs"]] == ["b", "c", "a"]
    assert sum(math.exp(t["logprob"]) for t in L.entry(logits, 0, 5, piece)["top_logprobs"]) == pytest.approx(1.0)
    assert L.entry(logits, 3, 0, piece)["top_logprobs"] == []
    assert L.entry(logits, 3, 0, piece)["bytes"] == [0xE2, 0x82]  # a partial UTF-8 character: bytes tell


def test_shapes():
    logits = np.array([1.0, 3.0, 2.0, 0.0, -1.0], dtype=np.float32)
    entries = [L.entry(logits, t, 2, piece) for t in (1, 0)]
    assert L.chat_logprobs(entries) == {"content": entries}
    c = L.completion_logprobs(entries, text_offset=10)
    assert c["tokens"] == ["b", "a"] and c["text_offset"] == [10, 11]
    assert list(c["top_logprobs"][0]) == ["b", "c"] and c["token_logprobs"][0] == entries[0]["logprob"]


def test_completions_get_the_legacy_shape_with_running_offsets():
    from llmctl.serve.choices import legacy_logprobs

    logits = np.array([1.0, 3.0, 2.0, 0.0, -1.0], dtype=np.float32)
    offset = [0]
    first = {"choices": [{"text": "ba", "logprobs": {"content": [L.entry(logits, t, 1, piece) for t in (1, 0)]}}]}
    second = {"choices": [{"text": "c", "logprobs": {"content": [L.entry(logits, 2, 1, piece)]}}]}
    assert legacy_logprobs(first, offset)["choices"][0]["logprobs"]["text_offset"] == [0, 1]
    lp = legacy_logprobs(second, offset)["choices"][0]["logprobs"]
    assert lp["tokens"] == ["c"] and lp["text_offset"] == [2] and list(lp["top_logprobs"][0]) == ["b"]
    none = {"choices": [{"text": "", "logprobs": None}]}
    assert legacy_logprobs(none, offset) == none
