"""`llmctl bench` wiring: usage errors exit 2 with the flag named, the endpoint mode end to end
(subprocess CLI against a real SSE server on 127.0.0.1), output formats and gates (exit 1)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.unit.test_bench_endpoint import sse_server  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-o", "xml"], "-o/--output"),
        (["-t", "1,,2"], "-t/--threads"),
        (["-p", "abc"], "-p/--n-prompt"),
        (["-ngl", "-5"], "-ngl/--n-gpu-layers"),
        (["-fa", "maybe"], "-fa/--flash-attn"),
        (["--max-regression", "5"], "--max-regression needs --baseline"),
        (["--url", "http://127.0.0.1:1", "-t", "2"], "-t: engine options have no meaning with --url"),
        (["--url", "http://127.0.0.1:1", "--min-pp", "5"], "--min-pp"),
        (["--url", "127.0.0.1:1"], "--url"),
        (["--baseline", "/nonexistent/b.json"], "--baseline: cannot read"),
        (["smoke", "-p", "128", "--ctx", "64"], "--ctx 64 is too small"),
    ],
)
def test_usage_errors_exit_2(llmctl, args, needle):
    r = llmctl("bench", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error: ")
    assert needle in r.stderr
    assert r.stdout == ""


def test_unknown_model_exits_2(llmctl):
    r = llmctl("bench", "no-such-model", "-p", "8", "-n", "0")
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr


def test_help_lists_the_flags(llmctl):
    r = llmctl("bench", "--help")
    assert r.returncode == 0
    for flag in ("-ngl", "--n-gpu-layers", "--min-pp", "--baseline", "--concurrency", "--flash-attn"):
        assert flag in r.stdout


def test_endpoint_json_and_gates(llmctl, sse_server, tmp_path):  # noqa: F811
    r = llmctl("bench", "--url", sse_server.url, "--concurrency", "1,2", "--requests", "2", "-n", "4",
               "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "endpoint" and doc["kind"] == "bench"
    assert [x["test"] for x in doc["results"]] == ["c1", "c2"]
    for x in doc["results"]:
        assert x["output_tokens"] == 8 and x["avg_ts"] > 0
        assert set(x["ttft_ms"]) == {"mean", "p50", "p90", "p99"}
    assert "bench c2: request 2/2 done" in r.stderr  # progress on stderr
    assert doc["host"]["cpu_model"]

    base = tmp_path / "base.json"
    base.write_text(r.stdout)
    ok = llmctl("bench", "--url", sse_server.url, "--concurrency", "1,2", "--requests", "2", "-n", "4",
                "-o", "csv", "--baseline", str(base), "--max-regression", "100", "-q")
    assert ok.returncode == 0, ok.stderr
    assert [row["test"] for row in csv.DictReader(io.StringIO(ok.stdout))] == ["c1", "c2"]

    for x in doc["results"]:
        x["avg_ts"] *= 1e9  # a baseline nobody can reach
    base.write_text(json.dumps(doc))
    bad = llmctl("bench", "--url", sse_server.url, "--concurrency", "1,2", "--requests", "2", "-n", "4",
                 "--baseline", str(base), "--max-regression", "10", "-q")
    assert bad.returncode == 1
    assert "gate FAILED: output t/s at concurrency 1" in bad.stderr
    assert "gate FAILED: output t/s at concurrency 2" in bad.stderr
    assert "allowed -10%" in bad.stderr and "short of" in bad.stderr
    assert bad.stderr.rstrip().endswith("Error: 2 benchmark gates not met (listed above)")

    one = llmctl("bench", "--url", sse_server.url, "--requests", "1", "-n", "4", "--baseline", str(base), "-q")
    assert one.returncode == 1
    assert "Error: benchmark gate not met: output t/s at concurrency 1" in one.stderr

    gate = llmctl("bench", "--url", sse_server.url, "--requests", "1", "-n", "2", "--min-tg", "1e12", "-o", "md")
    assert gate.returncode == 1
    assert "is below --min-tg" in gate.stderr
    assert gate.stdout.startswith("| test |")  # the result is still printed


def test_endpoint_failures_exit_1(llmctl, sse_server):  # noqa: F811
    sse_server.fail_every = 2
    r = llmctl("bench", "--url", sse_server.url, "--requests", "4", "-n", "2", "--no-warmup", "-o", "jsonl")
    assert r.returncode == 1
    assert "2 of 4 requests failed at concurrency 1: HTTP 500: model exploded" in r.stderr
    assert json.loads(r.stdout.splitlines()[0])["n_failed"] == 2


def test_endpoint_unreachable_exit_1(llmctl, sse_server):  # noqa: F811
    url = sse_server.url
    sse_server.shutdown()
    sse_server.server_close()
    r = llmctl("bench", "--url", url, "--requests", "1", "-n", "2", "--timeout", "5")
    assert r.returncode == 1 and "warm-up request failed" in r.stderr
    assert "Hint:" in r.stderr


def test_api_key_from_env_is_never_printed(llmctl, sse_server):  # noqa: F811
    sse_server.api_key = "very-secret-key"
    r = llmctl("bench", "--url", sse_server.url, "--requests", "1", "-n", "2", "-o", "json",
               env={"OPENAI_API_KEY": "very-secret-key"})
    assert r.returncode == 0, r.stderr
    assert "very-secret-key" not in r.stdout + r.stderr
