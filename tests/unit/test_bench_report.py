"""Statistics, llama-bench field names and output shapes, and the gates."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from llmctl.bench import gates as G
from llmctl.bench import llamabench as LB
from llmctl.bench.report import render
from llmctl.bench.results import (
    BenchReport,
    EndpointResult,
    EngineResult,
    HostInfo,
    Latency,
    mean,
    percentile,
    sample_stddev,
)
from llmctl.errors import UsageError

LLAMA_BENCH_FIELDS = [
    "build_commit",
    "cpu_info",
    "gpu_info",
    "backends",
    "model_type",
    "model_size",
    "model_n_params",
    "n_threads",
    "n_gpu_layers",
    "n_batch",
    "n_prompt",
    "n_gen",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
    "samples_ns",
    "samples_ts",
]


def engine_result(n_prompt=64, n_gen=0, samples=(1_000_000_000, 500_000_000), threads=2, **kw) -> EngineResult:
    base = dict(
        build_commit="abc1234",
        build_number=0,
        cpu_info="Test CPU",
        gpu_info="",
        backends="CPU",
        model_filename="/m.gguf",
        model_type="gemma3 270M Q4_K - Medium",
        model_size=246587904,
        model_n_params=268098176,
        n_batch=2048,
        n_ubatch=512,
        n_threads=threads,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=0,
        flash_attn=0,
        n_ctx=n_prompt + n_gen,
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=0,
        repack=True,
        test_time="2026-01-01T00:00:00Z",
        samples_ns=tuple(samples),
    )
    base.update(kw)
    return EngineResult(**base)


def host() -> HostInfo:
    return HostInfo(
        "Test CPU",
        2,
        4,
        8 << 30,
        ({"name": "GPU X", "vram_bytes": 16 << 30, "driver": "1"},),
        "TestOS",
        "6.0",
        "3.11",
        "0.1.0",
        "0.3.36",
        ("AVX2",),
        "CPU : AVX2 = 1 |",
    )


def test_stats_match_the_textbook():
    xs = [10.0, 12.0, 23.0, 23.0, 16.0]
    assert mean(xs) == pytest.approx(statistics.mean(xs))
    assert sample_stddev(xs) == pytest.approx(statistics.stdev(xs))
    assert sample_stddev([5.0]) == 0.0
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([7.0], 99) == 7.0


def test_ts_is_the_mean_of_per_repetition_rates():
    r = engine_result(n_prompt=64, samples=(1_000_000_000, 500_000_000))
    assert r.samples_ts == pytest.approx([64.0, 128.0])
    assert r.avg_ts == pytest.approx(96.0)  # not 128 / 1.5 s: llama-bench averages the rates
    assert r.stddev_ts == pytest.approx(statistics.stdev([64.0, 128.0]))
    assert r.avg_ns == 750_000_000
    assert r.test == "pp64" and r.kind == "pp"


def test_json_is_llama_benchs_array_and_json_full_has_the_host():
    rep = BenchReport("engine", host(), (engine_result(), engine_result(n_prompt=0, n_gen=16)), model="smoke")
    rows = json.loads(render(rep, "json"))
    assert isinstance(rows, list) and len(rows) == 2
    assert list(rows[0]) == [*LB.FIELDS, "samples_ns", "samples_ts"]  # every key, in llama-bench's order
    lines = render(rep, "jsonl").splitlines()
    assert [list(json.loads(line)) for line in lines] == [[*LB.FIELDS, "samples_ns", "samples_ts"]] * 2
    doc = json.loads(render(rep, "json-full", [{"gate": "--min-pp"}]))
    assert doc["kind"] == "bench" and doc["schema_version"] == 1 and doc["gates"] == [{"gate": "--min-pp"}]
    assert doc["llama_bench_schema"] == LB.SCHEMA_VERSION
    assert doc["results"][1]["test"] == "tg16" and doc["results"][1]["n_ctx"] == 16
    for rec in doc["results"]:
        assert set(LLAMA_BENCH_FIELDS) <= set(rec)
    assert doc["host"]["gpus"][0]["name"] == "GPU X"
    assert doc["host"]["simd"] == ["AVX2"]


def test_csv_header_is_llama_bench_order():
    rep = BenchReport("engine", host(), (engine_result(),))
    rows = list(csv.reader(io.StringIO(render(rep, "csv"))))
    assert tuple(rows[0]) == LB.FIELDS
    assert rows[0][:5] == ["build_commit", "build_number", "cpu_info", "gpu_info", "backends"]
    assert len(rows) == 2


def test_min_gates_name_the_figure_and_shortfall():
    res = [engine_result(), engine_result(n_prompt=0, n_gen=16, samples=(1_000_000_000,))]
    out = G.check_minimums(res, min_pp=100.0, min_tg=10.0)
    assert [(o.gate, o.test, o.passed) for o in out] == [("--min-pp", "pp64", False), ("--min-tg", "tg16", True)]
    assert "96.00 t/s is below --min-pp 100.00 by 4.00 t/s" in out[0].detail


def test_baseline_from_our_json_and_llama_bench_json(tmp_path):
    ours = BenchReport("engine", host(), (engine_result(),))
    f = tmp_path / "ours.json"
    f.write_text(render(ours, "json"))
    base = G.load_baseline(f)
    now = [engine_result(samples=(1_000_000_000, 1_000_000_000))]  # 64 t/s vs 96: -33%
    out, unmatched = G.check_regression(now, base, 10.0, str(f))
    assert not out[0].passed and unmatched == []
    assert "-33.3%" in out[0].detail and "allowed -10%" in out[0].detail
    out, _ = G.check_regression(now, base, 50.0, str(f))
    assert out[0].passed
    # llama-bench's own -o json: a list, no `test` field, flash_attn as a number
    lb = tmp_path / "lb.json"
    lb.write_text(
        json.dumps(
            [
                {
                    "model_type": "gemma3 270M Q4_K - Medium",
                    "n_prompt": 64,
                    "n_gen": 0,
                    "n_threads": 2,
                    "n_gpu_layers": 0,
                    "n_batch": 2048,
                    "flash_attn": False,
                    "avg_ts": 70.0,
                }
            ]
        )
    )
    out, _ = G.check_regression(now, G.load_baseline(lb), 10.0, str(lb))
    assert out[0].passed


def test_baseline_without_a_matching_row_fails(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            [
                {
                    "model_type": "gemma3 270M Q4_K - Medium",
                    "n_prompt": 64,
                    "n_gen": 0,
                    "n_threads": 8,
                    "n_batch": 2048,
                    "avg_ts": 1.0,
                }
            ]
        )
    )
    out, unmatched = G.check_regression([engine_result()], G.load_baseline(f), 10.0, str(f))
    assert len(unmatched) == 1 and not out[0].passed and "no result matches" in out[0].detail
    # another model with the same test and parameters is not a baseline either
    out, _ = G.check_regression(
        [engine_result(threads=8, model_type="llama 7B Q4_0")], G.load_baseline(f), 10.0, str(f)
    )
    assert not out[0].passed


@pytest.mark.parametrize("text", ["not json", "{}", '[{"n_prompt": 1}]', '{"results": [1]}'])
def test_bad_baseline_is_a_usage_error(tmp_path, text):
    f = tmp_path / "b.json"
    f.write_text(text)
    with pytest.raises(UsageError, match="--baseline"):
        G.load_baseline(f)


def test_endpoint_rows_render_and_gate():
    lat = Latency.of([10.0, 20.0])
    r = EndpointResult("http://x", "chat", "m", 4, 8, 8, 0, 32, 5, 256, 2.0, lat, lat, lat, "t")
    assert r.avg_ts == 128.0 and r.requests_per_s == 4.0
    rep = BenchReport("endpoint", host(), (r,))
    rows = list(csv.DictReader(io.StringIO(render(rep, "csv"))))
    assert rows[0]["ttft_ms_p50"] == "15.0" and rows[0]["output_tokens_per_s"] == "128.0"
    assert "| c4 |" in render(rep, "md")
    out = G.check_minimums([r], None, 200.0)
    assert not out[0].passed and "concurrency 4" in out[0].detail
