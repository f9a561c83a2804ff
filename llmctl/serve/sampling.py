"""One llama.cpp sampler chain per sequence: sampling runs in C, and sequences never share state.

The chain is the one llama-cpp-python builds for create_completion (so answers do not change with
the engine): logit_bias, penalties (over the last 64 tokens; these two applied to the step's logits
here, the same float32 arithmetic as llama.cpp's samplers), then greedy at temperature 0, else
top_k, typical_p, top_p, min_p, temperature and a seeded draw. A grammar is not in the chain: as
llama-server does, the chain draws, the grammar checks that one token, and only when it refuses is
the grammar applied to the whole vocabulary and the draw made again (llmctl.serve.grammar_first:
the same distribution, without checking 262k tokens at every step). The grammar advances with
exactly the token chosen.

Defaults are llama-cpp-python's: chat (its chat handler) temperature 0.2 and repeat_penalty 1.1;
completions temperature 0.8 and repeat_penalty 1.0; both top_k 40, top_p 0.95, min_p 0.05.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmctl.serve.engine import BadRequest

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size

DEFAULTS = {
    "chat": {"temperature": 0.2, "repeat_penalty": 1.1},
    "completion": {"temperature": 0.8, "repeat_penalty": 1.0},
}


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    typical_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int  # 0..2**32-1
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any], endpoint: str) -> SamplingSpec:
        """The request's sampling parameters (protocol.to_generation_request's shape), with defaults."""
        d = DEFAULTS["chat" if endpoint == "chat" else "completion"]

        def get(key: str, default: Any) -> Any:
            value = params.get(key)
            return default if value is None else value

        seed = params.get("seed")
        grammar = params.get("grammar")
        if grammar is not None and not isinstance(grammar, str):
            raise BadRequest("the grammar must be GBNF text")
        return cls(
            temperature=float(get("temperature", d["temperature"])),
            top_k=int(get("top_k", 40)),
            top_p=float(get("top_p", 0.95)),
            min_p=float(get("min_p", 0.05)),
            typical_p=float(get("typical_p", 1.0)),
            repeat_penalty=float(get("repeat_penalty", d["repeat_penalty"])),
            presence_penalty=float(get("presence_penalty", 0.0)),
            frequency_penalty=float(get("frequency_penalty", 0.0)),
            seed=(random.getrandbits(32) if seed is None else int(seed) & 0xFFFFFFFF),
            logit_bias=tuple(sorted((int(k), float(v)) for k, v in (params.get("logit_bias") or {}).items())),
            grammar=grammar,
        )


def grammar_sampler(vocab: Any, gbnf: str) -> Any:
    """llama.cpp's grammar sampler for GBNF text, or BadRequest: a grammar its parser refuses is a
    NULL sampler (a SIGSEGV if used), never handed on."""
    import llama_cpp.llama_cpp as C

    if "\x00" in gbnf:
        raise BadRequest("the grammar holds a NUL character")
    sampler = C.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise BadRequest("the grammar for this response_format was refused by llama.cpp's parser")
    return sampler


class ChainSampler:
    """A llama_sampler chain for one sequence; `sample(i)` draws from the i-th entry of the last batch."""

    def __init__(self, backend: Any, spec: SamplingSpec, *, native_penalties: bool = False) -> None:
        import llama_cpp.llama_cpp as C
        import numpy as np

        self._C = C
        self._np = np
        self._ctx = backend.ctx
        self._n_vocab = backend.n_vocab
        params = C.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = C.llama_sampler_chain_init(params)
        self.grammar: Any = None  # a llama_sampler of its own, outside the chain (see the module docstring)
        self._first: Any = None
        # logit_bias and the penalties touch a few tokens: applied here to the step's logits, in place
        # and in float32 as llama.cpp's samplers do, they cost microseconds; llama.cpp's penalty
        # sampler looks every token of the vocabulary up (0.7 ms a token with Gemma's 262k).
        self._bias_ids = np.array([t for t, _ in spec.logit_bias], dtype=np.intp)
        self._bias = np.array([b for _, b in spec.logit_bias], dtype=np.float32)
        penalize = spec.repeat_penalty != 1.0 or bool(spec.frequency_penalty) or bool(spec.presence_penalty)
        self._penalties = penalize and not native_penalties
        self._repeat = np.float32(spec.repeat_penalty)
        self._freq = np.float32(spec.frequency_penalty)
        self._present = np.float32(spec.presence_penalty)
        self._recent: deque[int] = deque(maxlen=PENALTY_LAST_N)
        self._counts: dict[int, int] = {}
        try:
            add = lambda s: C.llama_sampler_chain_add(self.chain, s)  # noqa: E731
            if native_penalties:
                if spec.logit_bias:
                    arr = (C.llama_logit_bias * len(spec.logit_bias))()
                    for i, (token, bias) in enumerate(spec.logit_bias):
                        arr[i].token, arr[i].bias = token, bias  # type: ignore[assignment]  # ctypes fields take ints
                    add(C.llama_sampler_init_logit_bias(backend.n_vocab, len(spec.logit_bias), arr))
                    self._bias_ids = self._bias_ids[:0]
                if penalize:
                    add(
                        C.llama_sampler_init_penalties(
                            backend.n_vocab,
                            PENALTY_LAST_N,
                            spec.repeat_penalty,
                            spec.frequency_penalty,
                            spec.presence_penalty,
                        )
                    )
            if spec.grammar is not None:
                from llmctl.serve.grammar_first import GrammarFirst

                self.grammar = grammar_sampler(backend.vocab, spec.grammar)
                self._first = GrammarFirst(self._ctx, self._n_vocab)
            if spec.temperature <= 0.0:
                add(C.llama_sampler_init_greedy())
            else:
                add(C.llama_sampler_init_top_k(spec.top_k))
                add(C.llama_sampler_init_typical(spec.typical_p, 1))
                add(C.llama_sampler_init_top_p(spec.top_p, 1))
                add(C.llama_sampler_init_min_p(spec.min_p, 1))
                add(C.llama_sampler_init_temp(spec.temperature))
                add(C.llama_sampler_init_dist(spec.seed))
        except BaseException:
            self.close()
            raise

    def sample(self, index: int) -> int:
        """Draw (and accept: the grammar advances, the penalties count it) a token from batch entry
        `index`. The step's logits of that entry get the bias and the penalties first."""
        if len(self._bias_ids) or (self._penalties and self._counts):
            np = self._np
            logits = np.ctypeslib.as_array(self._C.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
            if len(self._bias_ids):
                logits[self._bias_ids] += self._bias
            if self._penalties and self._counts:  # llama.cpp's llama_sampler_penalties_apply, in float32
                ids = np.fromiter(self._counts.keys(), dtype=np.intp, count=len(self._counts))
                counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
                v = logits[ids]
                v = np.where(v <= 0, v * self._repeat, v / self._repeat)
                logits[ids] = v - (counts * self._freq + (counts > 0).astype(np.float32) * self._present)
        if self.grammar is not None:
            token = self._first.sample(self.chain, self.grammar, index)
        else:
            token = int(self._C.llama_sampler_sample(self.chain, self._ctx, index))
        if self._penalties:
            if len(self._recent) == PENALTY_LAST_N:
                old = self._recent[0]
                self._counts[old] -= 1
                if not self._counts[old]:
                    del self._counts[old]
            self._recent.append(token)
            self._counts[token] = self._counts.get(token, 0) + 1
        return token

    def close(self) -> None:
        if self.chain is not None:
            self._C.llama_sampler_free(self.chain)  # frees the samplers added to it
            self.chain = None
        if self.grammar is not None:
            self._C.llama_sampler_free(self.grammar)
            self.grammar = None
