"""The batching engine's text handling without a model: UTF-8 split across tokens, stop strings held
back and cut, the response shapes, and the chat formats it takes from llama-cpp-python."""

from __future__ import annotations

import pytest

from llmctl.serve.text import Shaper, TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.add(p) for p in pieces] + [stream.finish()]


def test_a_character_split_across_tokens_waits_for_its_last_byte():
    euro = "€".encode()  # three bytes
    out = feed(TextStream(), [b"price: ", euro[:1], euro[1:2], euro[2:] + b"5"])
    assert out == ["price: ", "", "", "€5", ""]


def test_text_that_may_start_a_stop_string_is_held_back_until_it_cannot():
    s = TextStream(["</end>"])
    out = feed(s, [b"Hello </", b"en", b"d is not here"])
    assert "".join(out) == "Hello </end is not here"
    assert out[0] == "Hello " and out[1] == ""  # "</" and "</en" could have been the stop string


def test_a_stop_string_cuts_the_text_before_it_even_across_tokens():
    s = TextStream(["STOP", "\n\n"])
    out = feed(s, [b"one two ", b"ST", b"OP three"])
    assert "".join(out) == "one two " and s.stopped and s.text == "one two "
    assert s.add(b"more") == ""


def test_the_earliest_stop_wins_and_nothing_after_it_is_sent():
    s = TextStream(["b", "abc"])
    assert "".join(feed(s, [b"xxab", b"c"])) == "xxa"


def test_invalid_utf8_is_dropped_like_llama_cpp_python_does():
    assert "".join(feed(TextStream(), [b"ok \xff\xfe", b"fine"])) == "ok fine"


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_shapes(endpoint: str):
    shaper = Shaper(endpoint, "smoke")
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    delta = shaper.delta("hi")
    final = shaper.final("length", usage)
    result = shaper.result("hi", "stop", usage)
    assert delta["id"] == final["id"] == result["id"] and delta["model"] == "smoke"
    assert final["usage"] == result["usage"] == usage
    if endpoint == "chat":
        assert delta["object"] == "chat.completion.chunk" and delta["choices"][0]["delta"] == {"content": "hi"}
        assert shaper.role()["choices"][0]["delta"] == {"role": "assistant"}
        assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "length"
        assert result["object"] == "chat.completion"
        assert result["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    else:
        assert delta["object"] == "text_completion" and delta["choices"][0]["text"] == "hi"
        assert final["choices"][0]["text"] == "" and result["choices"][0]["text"] == "hi"


def test_chat_formats_come_from_llama_cpp_python():
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    from llmctl.serve.chat import ChatFormatError, resolve

    gemma = resolve("gemma", {}, "<bos>", "<eos>", 1)
    out = gemma.format([{"role": "user", "content": "Hi"}])
    assert out.prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert out.stops == ("<end_of_turn>\n",) and out.add_bos
    # No format configured and no template in the GGUF: llama-cpp-python's fallback.
    assert resolve(None, {}, "", "", -1).name == "llama-2"
    # The GGUF's own template, when llama-cpp-python does not recognise it as one of its formats.
    meta = {"tokenizer.chat_template": "{% for m in messages %}[{{ m.content }}]{% endfor %}"}
    assert resolve(None, meta, "", "", -1).format([{"role": "user", "content": "x"}]).prompt == "[x]"
    with pytest.raises(ChatFormatError, match="unknown chat_format"):
        resolve("no-such-format", {}, "", "", -1)
    with pytest.raises(ChatFormatError, match="special handler"):
        resolve("functionary-v2", {}, "", "", -1)


def test_gemma_keeps_the_system_message_at_the_head_of_the_first_user_turn():
    """llama-cpp-python's `gemma` format drops system messages; Gemma's own template and llama-server
    put them at the head of the first user turn. A system prompt must reach the model."""
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    from llmctl.serve.chat import resolve

    gemma = resolve("gemma", {}, "<bos>", "<eos>", 1)
    out = gemma.format(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Why?"},
        ]
    )
    assert out.prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
        "<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )
    only_system = gemma.format([{"role": "system", "content": "Be brief."}])
    assert "Be brief." in only_system.prompt
    # Other formats keep their own handling of the system turn.
    chatml = resolve("chatml", {}, "", "", -1).format(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert "<|im_start|>system\nS" in chatml.prompt
