"""Parameter lists and the sweep they expand to (llama-bench's syntax and order)."""

from __future__ import annotations

import pytest

from llmctl.bench.params import EngineParams, expand, parse_bool_list, parse_int_list, name_of_test
from llmctl.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", [512]),
        ("128,512", [128, 512]),
        (" 1, 2 ", [1, 2]),
        ("1-4", [1, 2, 3, 4]),
        ("1-8+3", [1, 4, 7]),
        ("128-1024*2", [128, 256, 512, 1024]),
        ("2,2,1", [2, 1]),
        ([16, 32], [16, 32]),
        (7, [7]),
    ],
)
def test_int_lists(text, expected):
    assert parse_int_list(text, "-p") == expected


@pytest.mark.parametrize("text", ["", "1,,2", "a", "1.5", "4-2", "1-", "0-8*0", "-3"])
def test_bad_int_lists_name_the_flag(text):
    with pytest.raises(UsageError, match="-t"):
        parse_int_list(text, "-t", minimum=1 if text == "-3" else 0)


def test_negative_allowed_where_minimum_is_minus_one():
    assert parse_int_list("-1,0,99", "-ngl", minimum=-1) == [-1, 0, 99]
    with pytest.raises(UsageError, match="below the minimum"):
        parse_int_list("-2", "-ngl", minimum=-1)


def test_bool_lists():
    assert parse_bool_list("on,off", "-fa") == [True, False]
    assert parse_bool_list("0,1", "-fa") == [False, True]
    assert parse_bool_list(True, "-fa") == [True]
    with pytest.raises(UsageError, match="-fa"):
        parse_bool_list("maybe", "-fa")


def test_test_names_as_llama_bench():
    assert name_of_test(512, 0) == "pp512"
    assert name_of_test(0, 128) == "tg128"
    assert name_of_test(512, 128) == "pp512+tg128"


def test_expand_order_and_context_size():
    p = EngineParams(n_prompt=(16, 32), n_gen=(8,), threads=(1, 2), repetitions=2)
    tests = expand(p)
    assert [(t.name, t.n_threads) for t in tests] == [
        ("pp16", 1), ("pp32", 1), ("tg8", 1), ("pp16", 2), ("pp32", 2), ("tg8", 2),
    ]
    # llama-bench sizes the context to the test
    assert [t.n_ctx for t in tests[:3]] == [16, 32, 8]


def test_expand_skips_zero_and_checks_ctx():
    assert [t.name for t in expand(EngineParams(n_prompt=(0,), n_gen=(8,)))] == ["tg8"]
    with pytest.raises(UsageError, match="--ctx 64 is too small for pp128"):
        expand(EngineParams(n_prompt=(128,), n_gen=(8,), n_ctx=64))
    with pytest.raises(UsageError, match="nothing to measure"):
        EngineParams(n_prompt=(0,), n_gen=(0,))
    with pytest.raises(UsageError, match="repetitions"):
        EngineParams(repetitions=0)


def test_model_reloads_only_when_ngl_changes():
    tests = expand(EngineParams(n_prompt=(16,), n_gen=(0,), n_gpu_layers=(0, 1), batch_size=(64, 128)))
    ngl = [t.n_gpu_layers for t in tests]
    assert ngl == sorted(ngl)  # grouped by n_gpu_layers, outermost loop
