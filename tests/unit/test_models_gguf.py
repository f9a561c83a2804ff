"""The GGUF header reader, on real files written by the `gguf` package."""

from __future__ import annotations

import pytest

from llmctl.errors import UsageError
from llmctl.models.gguf import read_gguf_info
from tests.ggufmake import make_gguf


@pytest.mark.parametrize("arch,ft,quant", [("llama", 15, "Q4_K_M"), ("gemma3", 18, "Q6_K"), ("qwen2", 1, "F16")])
def test_reads_arch_context_and_quantization(tmp_path, arch, ft, quant):
    f = make_gguf(
        tmp_path / "m.gguf", arch=arch, name="Some Model", context_length=131072, file_type=ft, payload_bytes=1024
    )
    info = read_gguf_info(f)
    assert (info.architecture, info.context_length, info.quantization, info.name) == (arch, 131072, quant, "Some Model")
    assert info.version == 3 and info.tensor_count == 1


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(UsageError, match="not a GGUF"):
        read_gguf_info(p)


def test_truncated_header(tmp_path):
    f = make_gguf(tmp_path / "m.gguf", payload_bytes=1024)
    p = tmp_path / "cut.gguf"
    p.write_bytes(f.read_bytes()[:40])
    with pytest.raises(UsageError, match="truncated"):
        read_gguf_info(p)


@pytest.mark.model
def test_the_smoke_model(smoke_model):
    info = read_gguf_info(smoke_model)
    assert (info.architecture, info.quantization, info.context_length) == ("gemma3", "Q4_K_M", 32768)


def test_read_gguf_string_finds_the_chat_template_past_the_arrays(tmp_path):
    from llmctl.models.gguf import read_gguf_string

    template = "{% for m in messages %}<tool_call>{{ m.content }}{% endfor %}"
    path = make_gguf(tmp_path / "t.gguf", chat_template=template)
    assert read_gguf_string(path, "tokenizer.chat_template") == template
    assert read_gguf_string(path, "general.name") == "Tiny Test"
    assert read_gguf_string(make_gguf(tmp_path / "n.gguf"), "tokenizer.chat_template") is None
