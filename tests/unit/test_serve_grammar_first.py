"""Grammar-first sampling (llmctl.serve.grammar_first) against llama.cpp's own grammar-in-the-chain
sampling, on the smoke model through llama.cpp's C API: at temperature 0 both must write the same
tokens, and what they write must be JSON of the schema."""

from __future__ import annotations

import ctypes
import json

import pytest

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")

pytestmark = pytest.mark.model

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "year": {"type": "integer"},
        "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["sea", "storm"]}},
    },
    "required": ["title", "year", "tags"],
}
PROMPT = b"<start_of_turn>user\nA story about a lighthouse, as JSON.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def llama(smoke_store):
    import llama_cpp.llama_cpp as C

    from llmctl.serve.engine import _model_params_hook

    undo = _model_params_hook()
    try:
        C.llama_backend_init()
        path = smoke_store / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf"
        model = C.llama_model_load_from_file(str(path).encode(), C.llama_model_default_params())
    finally:
        undo()
    params = C.llama_context_default_params()
    params.n_ctx, params.n_batch = 512, 512
    ctx = C.llama_init_from_model(model, params)
    yield C, model, ctx
    C.llama_free(ctx)
    C.llama_model_free(model)


def generate(C, model, ctx, first: bool, max_tokens: int = 48) -> list[int]:
    from llmctl.serve.grammar import schema_to_gbnf
    from llmctl.serve.grammar_first import GrammarFirst

    vocab = C.llama_model_get_vocab(model)
    gbnf = schema_to_gbnf(SCHEMA).encode()
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    toks = (C.llama_token * 256)()
    n = C.llama_tokenize(vocab, PROMPT, len(PROMPT), toks, 256, True, True)
    assert C.llama_decode(ctx, C.llama_batch_get_one(toks, n)) == 0
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    grammar = C.llama_sampler_init_grammar(vocab, gbnf, b"root")
    if not first:
        C.llama_sampler_chain_add(chain, grammar)
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
    sampler = GrammarFirst(ctx, C.llama_vocab_n_tokens(vocab))
    out: list[int] = []
    try:
        for _ in range(max_tokens):
            token = sampler.sample(chain, grammar, -1) if first else C.llama_sampler_sample(chain, ctx, -1)
            if C.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            one = (C.llama_token * 1)(token)
            assert C.llama_decode(ctx, C.llama_batch_get_one(one, 1)) == 0
    finally:
        C.llama_sampler_free(chain)
        if first:
            C.llama_sampler_free(grammar)
    if first:
        assert sampler.sampled == len(out) + (len(out) < max_tokens)
    return out


def text(C, model, tokens: list[int]) -> str:
    vocab = C.llama_model_get_vocab(model)
    out = b""
    for t in tokens:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(vocab, t, buf, 64, 0, False)
        out += buf.raw[:n]
    return out.decode("utf-8")


def test_grammar_first_writes_what_the_chain_writes(llama):
    C, model, ctx = llama
    chain = generate(C, model, ctx, first=False)
    first = generate(C, model, ctx, first=True)
    assert first == chain
    doc = text(C, model, first)
    if len(first) < 48:  # finished: the grammar let it end, so it is the whole object
        value = json.loads(doc)
        assert set(value) == {"title", "year", "tags"} and isinstance(value["year"], int)
