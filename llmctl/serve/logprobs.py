"""Log probabilities of generated tokens, in OpenAI's shapes.

The engine hands each sampled token's logits row (the model's raw logits, the ones its sampler
chain started from) to `entry()`, which takes the log-softmax over the whole vocabulary and the top
`k` alternatives. `chat_logprobs()` and `completion_logprobs()` put a run of entries into the shape
of each endpoint:

- chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`
- completions (legacy): `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`

Pure (numpy only); nothing here calls llama.cpp: the engine passes `piece(token) -> bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_TOP = 20  # OpenAI's bound on top_logprobs


def entry(logits: Any, token: int, k: int, piece: Callable[[int], bytes]) -> dict:
    """One generated token's entry: its logprob and the `k` most likely tokens' (chat shape)."""
    import numpy as np

    row = np.asarray(logits, dtype=np.float32)
    top = float(row.max())
    lse = top + math.log(float(np.exp(row - top, dtype=np.float64).sum()))
    out = _one(token, float(row[token]) - lse, piece)
    alternatives: list[dict] = []
    if k > 0:
        k = min(k, MAX_TOP, row.shape[0])
        idx = np.argpartition(-row, k - 1)[:k]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        alternatives = [_one(int(i), float(row[i]) - lse, piece) for i in idx]
    out["top_logprobs"] = alternatives
    return out


def _one(token: int, logprob: float, piece: Callable[[int], bytes]) -> dict:
    raw = piece(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}


def chat_logprobs(entries: list[dict]) -> dict:
    return {"content": entries}


def completion_logprobs(entries: list[dict], text_offset: int = 0) -> dict:
    """The legacy completions shape; `text_offset`: where the first token's text starts."""
    offsets: list[int] = []
    at = text_offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }
