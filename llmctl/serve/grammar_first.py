"""Grammar-constrained sampling that costs about one token's check, as llama-server samples.

llama.cpp's grammar sampler, put in a sampler chain, checks every token of the vocabulary against
the grammar at every step: 262k tokens for Gemma 3, 50-80 ms a token on a CPU, more than the
decode itself. llama-server (common/sampling.cpp) does better: it samples with the chain alone,
checks only the token drawn against the grammar, and only when the grammar rejects it applies the
grammar to the whole vocabulary and samples again. The result has the same distribution: an
allowed token t comes out with P(t) + (1 - A) P(t) / A = P(t) / A, A the mass the grammar allows.

`GrammarFirst(ctx, n_vocab).sample(chain, grammar, index)` does that on llama.cpp's C API through
llama-cpp-python's ctypes: `chain` without the grammar, `grammar` a llama_sampler from
llama_sampler_init_grammar; both accept the token chosen. One instance per llama_context (its
buffer is reused; the worker thread that owns the context is its only user).
"""

from __future__ import annotations

import ctypes
from typing import Any


class GrammarFirst:
    def __init__(self, ctx: Any, n_vocab: int) -> None:
        import llama_cpp.llama_cpp as C
        import numpy as np

        self._C, self._np = C, np
        self._ctx = ctx
        self.n_vocab = n_vocab
        dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data
        assert dtype.itemsize == ctypes.sizeof(C.llama_token_data)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._buf = np.empty(n_vocab, dtype=dtype)
        self._one = np.empty(1, dtype=dtype)
        self.rejected = 0  # tokens the chain drew that the grammar refused (statistics)
        self.sampled = 0

    def _array(self, buf: Any, logits: Any, ids: Any) -> Any:
        C = self._C
        buf["id"] = ids
        buf["logit"] = logits
        buf["p"] = 0.0
        return C.llama_token_data_array(buf.ctypes.data_as(ctypes.POINTER(C.llama_token_data)), len(buf), -1, False)

    def sample(self, chain: Any, grammar: Any, index: int) -> int:
        C, np = self._C, self._np
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
        arr = self._array(self._buf, logits, self._ids)
        C.llama_sampler_apply(chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)
        one = self._array(self._one, logits[token], token)
        C.llama_sampler_apply(grammar, ctypes.byref(one))
        if not np.isfinite(self._one["logit"][0]):  # refused: the grammar over everything, then draw again
            self.rejected += 1
            arr = self._array(self._buf, logits, self._ids)
            C.llama_sampler_apply(grammar, ctypes.byref(arr))
            C.llama_sampler_apply(chain, ctypes.byref(arr))
            token = int(arr.data[arr.selected].id)
        C.llama_sampler_accept(grammar, token)
        C.llama_sampler_accept(chain, token)
        self.sampled += 1
        return token
