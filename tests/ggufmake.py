"""Tiny but real GGUF files for tests, written with the `gguf` package (a test dependency)."""

from __future__ import annotations

from pathlib import Path


def make_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str = "Tiny Test",
    context_length: int = 2048,
    file_type: int = 15,
    payload_bytes: int = 1 << 20,
    seed: int = 0,
    shape: dict[str, int] | None = None,
    chat_template: str | None = None,
) -> Path:
    """A valid GGUF with the header keys llmctl reads and one int8 tensor of `payload_bytes`.
    `shape`: the attention's keys, by GGUFWriter's method (block_count=18 -> add_block_count(18))."""
    import numpy as np
    from gguf import GGUFWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_file_type(file_type)
    for key, value in (shape or {}).items():
        getattr(w, f"add_{key}")(value)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "world"])
    if chat_template is not None:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)
    w.add_tensor("blob", rng.integers(-128, 127, size=payload_bytes, dtype=np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
