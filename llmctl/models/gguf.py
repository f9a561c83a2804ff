"""A small reader of a GGUF file's key-value header: architecture, name, context length, quantization.

Only the header is read (never the tensors), with the standard library: no numpy, no `gguf` package.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmctl.errors import UsageError

GGUF_MAGIC = b"GGUF"

# llama.cpp's `llama_ftype` (general.file_type) -> the name people use for the quantization.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}

# value type -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# <arch>.* keys read besides general.*: the context length, and the attention's shape (KV size).
_SHAPE_KEYS = (
    ".context_length",
    ".block_count",
    ".attention.head_count",
    ".embedding_length",
    ".attention.head_count_kv",
    ".attention.key_length",
    ".attention.value_length",
)


@dataclass(frozen=True)
class GgufInfo:
    version: int
    tensor_count: int
    architecture: str | None
    name: str | None
    context_length: int | None
    file_type: int | None
    # The shape of the attention (what the KV cache takes per token); None when not in the header.
    block_count: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None  # None also when it varies per layer (an array)
    embedding_length: int | None = None
    key_length: int | None = None
    value_length: int | None = None

    def kv_bytes_per_token(self) -> int | None:
        """What one token takes in the KV cache (kv_bytes_per_token), or None when the header
        does not say."""
        if not self.block_count or not self.head_count or not self.embedding_length:
            return None
        return kv_bytes_per_token(
            self.block_count,
            self.head_count,
            self.head_count_kv,
            self.embedding_length,
            self.key_length,
            self.value_length,
        )

    @property
    def quantization(self) -> str | None:
        if self.file_type is None:
            return None
        return FILE_TYPES.get(self.file_type, f"type {self.file_type}")


def kv_bytes_per_token(
    layers: int,
    heads: int,
    kv_heads: int | None,
    embedding_length: int,
    key_length: int | None = None,
    value_length: int | None = None,
) -> int:
    """The f16 K and V bytes one token takes in every layer's cache (llama.cpp's default cache
    type): layers x kv_heads x (key + value head size) x 2. kv_heads defaults to heads, the head
    sizes to embedding_length / heads. Sliding-window layers count as full ones (swa_full). The one
    rule: serve's start-up line (serve/backend.py) and the pool's estimate (serve/pool.py) use it."""
    kv = kv_heads or heads
    k = key_length or embedding_length // heads
    v = value_length or embedding_length // heads
    return layers * kv * (k + v) * 2


# The smallest encoding of a key-value pair (an empty key, a type, a one-byte value) and of a tensor
# info (an empty name, no dimensions, a type, an offset): a count that cannot fit in the rest of the
# file is refused before anything loops over it.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8


class _Reader:
    """Every count and length is checked against the bytes left in the file before it is used, so a
    hostile header costs at most one pass over the file, never a huge loop, seek or allocation."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh = fh
        self.path = path
        self.size = os.fstat(fh.fileno()).st_size

    def remaining(self) -> int:
        return self.size - self.fh.tell()

    def truncated(self) -> UsageError:
        return UsageError(f"{self.path}: truncated GGUF header")

    def read(self, n: int) -> bytes:
        if n > self.remaining():
            raise self.truncated()
        data = self.fh.read(n)
        if len(data) != n:
            raise self.truncated()
        return data

    def skip(self, n: int) -> None:
        if n > self.remaining():
            raise self.truncated()
        self.fh.seek(n, 1)

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def count(self, what: str, n: int, min_bytes: int) -> int:
        if n * min_bytes > self.remaining():
            raise UsageError(f"{self.path}: implausible GGUF {what} count {n} for a file of {self.size} bytes")
        return n

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 24:
            raise UsageError(f"{self.path}: implausible GGUF string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.scalar("<Q"))

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            self.skip_array()
            return None
        raise UsageError(f"{self.path}: unknown GGUF value type {vtype}")

    def skip_array(self) -> None:
        itype = self.scalar("<I")
        count = self.scalar("<Q")
        if itype in _SCALARS:
            self.skip(struct.calcsize(_SCALARS[itype]) * count)
        elif itype == _STRING:
            for _ in range(self.count("array element", count, 8)):
                self.skip_string()
        elif itype == _ARRAY:  # ggml's gguf reader refuses nested arrays too
            raise UsageError(f"{self.path}: nested GGUF arrays are not valid GGUF")
        else:
            raise UsageError(f"{self.path}: unknown GGUF array type {itype}")


def read_gguf_info(path: Path, *, file_type: bool = True) -> GgufInfo:
    """Read the header of a GGUF file; raise UsageError when it is not one. `file_type=False`:
    stop at the tokenizer's keys (llama.cpp's converter writes general.file_type after them, so
    reading it means skipping over every token: the estimate of serve's pool does not need it)."""
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh, path)
        if fh.read(4) != GGUF_MAGIC:
            raise UsageError(f"{path}: not a GGUF file (bad magic)")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise UsageError(f"{path}: unsupported GGUF version {version}")
        tensor_count = r.scalar("<Q")
        kv_count = r.count("key-value", r.scalar("<Q"), _MIN_KV_BYTES)
        r.count("tensor", tensor_count, _MIN_TENSOR_BYTES)  # the tensor infos follow the key-values
        kv: dict[str, object] = {}
        arch: str | None = None
        for _ in range(kv_count):
            key = r.string()
            if key.startswith("tokenizer.") and arch and (not file_type or "general.file_type" in kv):
                break  # the tokenizer's arrays (large) follow the model's keys: nothing wanted is left
            vtype = r.scalar("<I")
            wanted = key.startswith("general.") or key.endswith(_SHAPE_KEYS)
            if not wanted and vtype == _ARRAY:
                r.skip_array()
                continue
            if not wanted and vtype == _STRING:
                r.skip_string()
                continue
            val = r.value(vtype)
            if wanted:
                kv[key] = val
            if key == "general.architecture":
                arch = str(val)
            # Stop early once everything needed is known: the tokenizer arrays come later and are large.
            if (
                arch
                and "general.file_type" in kv
                and "general.name" in kv
                and all(f"{arch}{k}" in kv for k in _SHAPE_KEYS)
            ):
                break
    ctx = kv.get(f"{arch}.context_length") if arch else None

    def shape(key: str) -> int | None:
        value = kv.get(f"{arch}{key}") if arch else None
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    ft = kv.get("general.file_type")
    name = kv.get("general.name")
    return GgufInfo(
        version=version,
        tensor_count=tensor_count,
        architecture=arch,
        name=str(name) if name is not None else None,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        file_type=int(ft) if isinstance(ft, int) else None,
        block_count=shape(".block_count"),
        head_count=shape(".attention.head_count"),
        head_count_kv=shape(".attention.head_count_kv"),
        embedding_length=shape(".embedding_length"),
        key_length=shape(".attention.key_length"),
        value_length=shape(".attention.value_length"),
    )


def read_gguf_string(path: Path, key: str) -> str | None:
    """One string value of a GGUF header (such as `tokenizer.chat_template`), or None when the
    file does not have it. Arrays are skipped by seeking, so this reads a few KiB of a large file."""
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh, path)
        if fh.read(4) != GGUF_MAGIC:
            raise UsageError(f"{path}: not a GGUF file (bad magic)")
        if r.scalar("<I") not in (2, 3):
            raise UsageError(f"{path}: unsupported GGUF version")
        r.scalar("<Q")  # tensor count
        for _ in range(r.count("key-value", r.scalar("<Q"), _MIN_KV_BYTES)):
            name = r.string()
            vtype = r.scalar("<I")
            if name == key and vtype == _STRING:
                return r.string()
            if vtype == _ARRAY:
                r.skip_array()
            elif vtype == _STRING:
                r.skip_string()
            else:
                r.value(vtype)
    return None
