"""A thin layer over llama.cpp's C API (llama-cpp-python's low-level bindings) for the batching engine.

One model, one context with `parallel` sequences (`n_seq_max`), one reusable `llama_batch`. The
engine (llmctl.serve.batch) owns the only thread that calls into a `Backend`, except `tokenize`,
which reads the vocabulary only and may run on the event loop (llama-server tokenizes on its HTTP
threads the same way).

KV memory: `n_ctx` is per slot, so the context holds `n_ctx * parallel` cells in one buffer per
sequence (kv_unified off: a sequence can never take another one's cells, so a request that passed
the per-slot length check always fits). Gemma 3 and other sliding-window models keep every position
in their sliding-window layers too (`swa_full`, the default): a cache of window size forgets the
start of a long prompt, and then a shared prefix cannot be reused and is decoded again for every
request. `swa_full: false` saves that memory at that cost. README ("Continuous batching") has the
figures.

`Backend` is the only class that touches llama.cpp in the generation path; a test may hand the
engine a stand-in with the same methods (tests/integration/test_upstreams_app.py does).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from llmctl.serve.settings import ServeSettings

PIECE_BUFFER = 64


class DecodeError(Exception):
    """llama_decode failed: `code` 1 means no KV room for the batch, anything else an internal error."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode returned {code}")
        self.code = code


def model_params() -> Any:
    """llama.cpp's default model parameters, without repacked weights on AMX hosts (see
    llmctl.llamacompat: ggml's AMX kernels crash in llama_decode there)."""
    import llama_cpp.llama_cpp as C

    from llmctl.llamacompat import default_extra_bufts

    params = C.llama_model_default_params()
    if not default_extra_bufts() and hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False
    return params


class Backend:
    """The model and its context, sized for `parallel` sequences of `n_ctx` tokens each."""

    def __init__(self, settings: ServeSettings, *, kv_unified: bool = False) -> None:
        import llama_cpp
        import llama_cpp.llama_cpp as C
        from llama_cpp import _internals

        from llmctl.serve.engine import route_llama_logs

        route_llama_logs()
        llama_cpp.llama_backend_init()
        self._C = C
        self.parallel = max(1, settings.parallel)
        self.n_ctx = settings.n_ctx  # per sequence
        params = model_params()
        params.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 0x7FFFFFFF
        self._model = _internals.LlamaModel(path_model=str(settings.model_path), params=params, verbose=False)
        self.vocab = self._model.vocab
        self.n_vocab = int(C.llama_vocab_n_tokens(self.vocab))
        cparams = C.llama_context_default_params()
        cparams.n_ctx = self.n_ctx * self.parallel
        cparams.n_batch = max(self.parallel, min(settings.n_batch, cparams.n_ctx))
        cparams.n_ubatch = cparams.n_batch
        cparams.n_seq_max = self.parallel
        cparams.kv_unified = kv_unified
        cparams.swa_full = settings.swa_full
        cparams.no_perf = True
        cparams.embeddings = False
        cparams.flash_attn_type = (
            C.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        from llmctl.cpu import default_threads

        cparams.n_threads = cparams.n_threads_batch = settings.n_threads or default_threads()
        self._ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=False)
        self.ctx = self._ctx.ctx
        self.memory = C.llama_get_memory(self.ctx)
        self.n_batch = int(cparams.n_batch)
        self.n_ctx_total = int(C.llama_n_ctx(self.ctx))
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(PIECE_BUFFER)
        self.metadata: dict[str, str] = self._model.metadata()
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(C.llama_vocab_bos(self.vocab))
        self.eos = int(C.llama_vocab_eos(self.vocab))

    # -- the vocabulary (read-only: safe from any thread) ----------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        C = self._C
        n = max(16, len(data) + 8)
        buf = (C.llama_token * n)()
        got = C.llama_tokenize(self.vocab, data, len(data), buf, n, add_bos, special)
        if got < 0:
            n = -got
            buf = (C.llama_token * n)()
            got = C.llama_tokenize(self.vocab, data, len(data), buf, n, add_bos, special)
            if got < 0:
                raise ValueError("the text could not be tokenized")
        return list(buf[:got])

    def piece(self, token: int) -> bytes:
        """The token's text as bytes (a part of a UTF-8 character, possibly); special tokens are empty."""
        n = self._C.llama_token_to_piece(self.vocab, token, self._piece, PIECE_BUFFER, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._C.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            return buf.raw[:n]
        return self._piece.raw[:n]

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self._C.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(self._C.llama_vocab_is_eog(self.vocab, token))

    # -- decoding (the engine's thread only) ------------------------------------------------------------

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], logits: Sequence[bool]
    ) -> None:
        """One llama_decode over the given entries (at most n_batch); DecodeError when it fails."""
        b = self._batch
        n = len(tokens)
        b.n_tokens = n
        tok, pos, nseq, sid, out = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i in range(n):
            tok[i] = tokens[i]
            pos[i] = positions[i]
            nseq[i] = 1
            sid[i][0] = seqs[i]
            out[i] = logits[i]
        code = self._C.llama_decode(self.ctx, b)
        if code != 0:
            raise DecodeError(code)

    def logprobs(self, index: int, token: int, top: int) -> dict[str, Any]:
        """The log-probability of `token` at batch entry `index` of the last decode (valid until
        the next one), with the `top` most likely tokens: OpenAI's logprobs entry. Read after the
        draw: the logits carry the request's logit_bias and penalties (sampling.ChainSampler)."""
        import numpy as np

        ptr = self._C.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        norm = peak + np.log(np.exp(logits - peak).sum())

        def entry(t: int) -> dict[str, Any]:
            raw = self.piece(t)
            return {"token": raw.decode("utf-8", "replace"), "logprob": float(logits[t] - norm), "bytes": list(raw)}

        best: list[int] = []
        if top > 0:
            k = min(top, self.n_vocab)
            part = np.argpartition(-logits, k - 1)[:k]
            best = [int(t) for t in part[np.argsort(-logits[part], kind="stable")]]
        out = entry(token)
        out["top_logprobs"] = [entry(t) for t in best]
        return out

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence (p1 -1: to the end); False when the memory cannot."""
        return bool(self._C.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int) -> None:
        """dst becomes a copy of src (every position; across KV streams llama.cpp copies the buffer
        at the next decode). Trim it with seq_rm."""
        self._C.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def seq_pos_min(self, seq: int) -> int:
        return int(self._C.llama_memory_seq_pos_min(self.memory, seq))

    def state_save(self, seq: int) -> tuple[Any, int]:
        """A copy of the sequence's KV (keys, values, positions) for the host prompt cache: the
        buffer and the bytes used in it (kept as a ctypes array: no second copy to load it back)."""
        size = int(self._C.llama_state_seq_get_size(self.ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        return buf, int(self._C.llama_state_seq_get_data(self.ctx, buf, size, seq))

    def state_load(self, seq: int, state: tuple[Any, int]) -> bool:
        """Replace the sequence's KV with a saved copy; False when llama.cpp refuses it (no room)."""
        buf, n = state
        self.seq_rm(seq, 0, -1)
        if int(self._C.llama_state_seq_set_data(self.ctx, buf, n, seq)) > 0:
            return True
        self.seq_rm(seq, 0, -1)
        return False

    def clear(self) -> None:
        self._C.llama_memory_clear(self.memory, True)

    def sampler(self, spec: Any) -> Any:
        from llmctl.serve.sampling import ChainSampler

        return ChainSampler(self, spec)

    def close(self) -> None:
        if self._batch is not None:
            self._C.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()


def kv_bytes_per_token(metadata: dict[str, str]) -> int | None:
    """f16 K+V bytes one token takes in every layer's cache (None when the GGUF does not say)."""
    from llmctl.models.gguf import kv_bytes_per_token as rule

    arch = metadata.get("general.architecture", "")
    try:
        layers = int(metadata[f"{arch}.block_count"])
        heads = int(metadata[f"{arch}.attention.head_count"])
        kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
        embd = int(metadata[f"{arch}.embedding_length"])
        k = int(metadata.get(f"{arch}.attention.key_length", embd // heads))
        v = int(metadata.get(f"{arch}.attention.value_length", embd // heads))
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return rule(layers, heads, kv_heads, embd, k, v)
