"""The host prompt cache's bookkeeping (llmctl/serve/promptcache.py): the byte budget, least recently
used out first, prefixes of a saved prompt are redundant. The states are stand-ins (the sizes are what
matters here); tests/integration/test_serve_batching.py runs it on the real engine."""

from __future__ import annotations

from llmctl.serve.promptcache import MIN_SAVE, PromptCache

A = list(range(100, 100 + MIN_SAVE * 2))
B = list(range(500, 500 + MIN_SAVE * 2))


def state(size: int) -> tuple[object, int]:
    return object(), size


def test_best_is_the_longest_shared_prefix_and_short_prompts_are_not_saved():
    cache = PromptCache(1000)
    assert not cache.wants(A[: MIN_SAVE - 1])
    cache.put(A, state(10))
    cache.put(B, state(10))
    found = cache.best(A[:70] + [1, 2, 3])
    assert found is not None and found[0] == tuple(A) and found[2] == 70
    assert cache.best([7, 8, 9]) is None


def test_a_prefix_of_a_saved_prompt_is_redundant_both_ways():
    cache = PromptCache(1000)
    cache.put(A[:MIN_SAVE], state(10))
    cache.put(A, state(20))  # the longer one serves both: the shorter goes
    assert len(cache) == 1 and cache.used == 20
    assert not cache.wants(A[: MIN_SAVE + 5])  # already inside a saved prompt


def test_the_budget_drops_the_least_recently_used_first():
    cache = PromptCache(25)
    cache.put(A, state(10))
    cache.put(B, state(10))
    cache.best(A)  # A used: B is now the oldest
    cache.put(list(range(900, 900 + MIN_SAVE)), state(10))
    assert cache.used == 20 and cache.best(B) is None and cache.best(A) is not None
    cache.put(list(range(2000, 2000 + MIN_SAVE)), state(26))  # larger than the whole budget: not kept
    assert cache.used == 20


def test_off_at_zero():
    assert not PromptCache(0).wants(A)
