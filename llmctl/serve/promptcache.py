"""The host prompt cache: the KV of prompts that slots had to give up, kept in host memory.

A slot keeps its last request's tokens in its KV for prefix reuse, but only until another request
takes the slot. With more distinct prompts than slots, a shared system prompt is soon overwritten
and the next request that shares it decodes it again. llama-server answers this with a prompt cache
in host memory (`--cache-ram`); this is the same idea: before a slot's cached tokens are dropped,
their KV is copied out (`llama_state_seq_get_data`), and a request whose prompt shares a longer
prefix with a saved copy than with any slot gets it copied back (`llama_state_seq_set_data`) and
decodes only the rest.

Bounded by bytes (`services.<name>.prompt_cache_mib`, 0: off), least recently used out first.
An entry whose tokens begin another entry's is redundant (the longer one serves both) and is
dropped. Used only by the engine's worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MIN_SAVE = 64  # tokens: shorter prompts cost little to decode again


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()  # LRU first

    def __len__(self) -> int:
        return len(self._entries)

    def wants(self, tokens: list[int]) -> bool:
        """Worth saving: long enough, and not already held (as itself or inside a longer entry)."""
        if self.budget <= 0 or len(tokens) < MIN_SAVE:
            return False
        key = tuple(tokens)
        return not any(k[: len(key)] == key for k in self._entries)

    def put(self, tokens: list[int], state: tuple[Any, int]) -> None:
        size = state[1]
        if size > self.budget:
            return
        key = tuple(tokens)
        for k in [k for k in self._entries if key[: len(k)] == k]:  # prefixes of this one: redundant
            self._drop(k)
        while self._entries and self.used + size > self.budget:
            self._drop(next(iter(self._entries)))
        self._entries[key] = state
        self.used += size

    def best(self, tokens: list[int]) -> tuple[tuple[int, ...], tuple[Any, int], int] | None:
        """The entry sharing the longest prefix with `tokens`: (its tokens, its state, shared)."""
        best, best_n = None, 0
        for key in self._entries:
            n = common_prefix(key, tokens)
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None
        self._entries.move_to_end(best)
        return best, self._entries[best], best_n

    def _drop(self, key: tuple[int, ...]) -> None:
        self.used -= self._entries.pop(key)[1]
