"""Parameter lists and the sweep they expand to (llama-bench's syntax and order)."""

from __future__ import annotations

import pytest

from llmctl.bench.params import (
    EngineParams,
    expand,
    name_of_test,
    parse_bool_list,
    parse_flash_attn_list,
    parse_int_list,
    parse_pairs,
)
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
    assert name_of_test(512, 0, 4096) == "pp512 @ d4096"
    assert name_of_test(512, 128, 4096) == "pp512+tg128 @ d4096"


def test_flash_attn_and_pairs():
    assert parse_flash_attn_list("on,off,auto", "-fa") == [1, 0, -1]
    assert parse_flash_attn_list(False, "-fa") == [0]
    assert parse_flash_attn_list("auto", "-fa") == [-1]
    with pytest.raises(UsageError, match="-fa: expected on, off or auto"):
        parse_flash_attn_list("maybe", "-fa")
    assert parse_pairs(["512,128", " 64, 16", "512,128"], "-pg") == [(512, 128), (64, 16)]
    assert parse_pairs([[8, 2]], "-pg") == [(8, 2)]
    for bad in (["512"], ["1,2,3"], ["-1,2"], ["a,b"], [[1]], [[1, -2]]):
        with pytest.raises(UsageError, match="-pg"):
            parse_pairs(bad, "-pg")


def test_expand_in_llama_benchs_order_with_depth_pg_and_ubatch():
    """llama-bench's loops: ... n_batch, n_ubatch, flash_attn, threads, depth; inside: pp, tg, then pg."""
    p = EngineParams(
        n_prompt=(16,), n_gen=(4,), n_pg=((8, 2),), n_depth=(0, 8), ubatch_size=(256, 512), flash_attn=(0, 1)
    )
    tests = expand(p)
    assert len(tests) == 2 * 2 * 2 * 3
    assert [(t.name, t.n_ubatch, t.flash_attn) for t in tests[:6]] == [
        ("pp16", 256, 0),
        ("tg4", 256, 0),
        ("pp8+tg2", 256, 0),
        ("pp16 @ d8", 256, 0),
        ("tg4 @ d8", 256, 0),
        ("pp8+tg2 @ d8", 256, 0),
    ]
    assert (tests[6].flash_attn, tests[12].n_ubatch) == (1, 512)
    # the context holds the depth and the test, as llama-bench sizes it
    assert [t.n_ctx for t in tests[:6]] == [16, 4, 10, 24, 12, 18]
    # -pg alone is something to measure; (0, 0) is skipped as llama-bench does
    assert [t.name for t in expand(EngineParams(n_prompt=(0,), n_gen=(0,), n_pg=((0, 0), (4, 4))))] == ["pp4+tg4"]


def test_expand_order_and_context_size():
    p = EngineParams(n_prompt=(16, 32), n_gen=(8,), threads=(1, 2), repetitions=2)
    tests = expand(p)
    assert [(t.name, t.n_threads) for t in tests] == [
        ("pp16", 1),
        ("pp32", 1),
        ("tg8", 1),
        ("pp16", 2),
        ("pp32", 2),
        ("tg8", 2),
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
