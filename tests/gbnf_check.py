"""A worker process that asks llama.cpp's own GBNF parser about grammars (the test of record for
"llama.cpp accepts this grammar"). Run as `python -m tests.gbnf_check MODEL`: it reads one JSON
string (a grammar) per line on stdin and answers `ok` or `refused` per line. In a process of its
own because the parser is C++: a grammar that crashed it must not take pytest down with it.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import llama_cpp.llama_cpp as C
    from llama_cpp import Llama

    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    for line in sys.stdin:
        gbnf = json.loads(line)
        sampler = C.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        print("ok" if sampler else "refused", flush=True)
        if sampler:
            C.llama_sampler_free(sampler)


if __name__ == "__main__":
    main()
