"""`llmctl bench` wiring: usage errors exit 2 with the flag named, the endpoint mode end to end
(subprocess CLI against a real SSE server on 127.0.0.1), output formats and gates (exit 1)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

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
        (["smoke", "-p", "16", "-d", "8", "--ctx", "20"], "--ctx 20 is too small for pp16 @ d8 (needs 24)"),
        (["smoke", "-pg", "512"], "-pg: expected PP,TG"),
        (["smoke", "-pg", "512,x"], "-pg: expected PP,TG"),
        (["smoke", "-d", "-4"], "-d/--n-depth"),
        (["smoke", "-ub", "0"], "-ub/--ubatch-size: 0 is below the minimum 1"),
        (["smoke", "-fa", "sometimes"], "-fa/--flash-attn: expected on, off or auto"),
        (["smoke", "other"], "expected one MODEL, got 2"),
        (["smoke", "--strict"], "--strict: only with `llmctl bench compare`"),
        (["smoke", "--concurrency", "2"], "--concurrency: only with --url"),
        (["--url", "http://127.0.0.1:1", "-o", "sql"], "-o sql: only the engine benchmark"),
        (["--url", "http://127.0.0.1:1", "-d", "512"], "-d: engine options have no meaning with --url"),
        (["compare"], "compare: no result files given"),
        (["compare", "a.json", "b.json", "-t", "2"], "-t: compare reads result files"),
        (["compare", "a.json", "b.json", "-o", "sql"], "-o/--output: compare writes table, md, csv, json"),
        (["compare", "a.json", "b.json", "--by", "host"], "--by: expected test or run"),
        (["compare", "/nonexistent/a.json", "b.json"], "compare: cannot read /nonexistent/a.json"),
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
    r = llmctl("bench", "--url", sse_server.url, "--concurrency", "1,2", "--requests", "2", "-n", "4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "endpoint" and doc["kind"] == "bench"
    assert [x["test"] for x in doc["results"]] == ["c1", "c2"]
    for x in doc["results"]:
        assert x["output_tokens"] == 8 and x["avg_ts"] > 0
        assert set(x["ttft_ms"]) == {"mean", "p50", "p90", "p99"}
    assert "bench c2: request 2/2 done" in r.stderr  # progress on stderr
    assert doc["host"]["cpu_model"] and doc["host"]["hostname"]
    rows = llmctl("bench", "--url", sse_server.url, "--requests", "1", "-n", "2", "-o", "json", "-q")
    assert rows.returncode == 0 and [x["test"] for x in json.loads(rows.stdout)] == ["c1"]  # a bare array

    base = tmp_path / "base.json"
    base.write_text(r.stdout)
    ok = llmctl(
        "bench",
        "--url",
        sse_server.url,
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "-n",
        "4",
        "-o",
        "csv",
        "--baseline",
        str(base),
        "--max-regression",
        "100",
        "-q",
    )
    assert ok.returncode == 0, ok.stderr
    assert [row["test"] for row in csv.DictReader(io.StringIO(ok.stdout))] == ["c1", "c2"]

    for x in doc["results"]:
        x["avg_ts"] *= 1e9  # a baseline nobody can reach
    base.write_text(json.dumps(doc))
    bad = llmctl(
        "bench",
        "--url",
        sse_server.url,
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "-n",
        "4",
        "--baseline",
        str(base),
        "--max-regression",
        "10",
        "-q",
    )
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
    r = llmctl(
        "bench",
        "--url",
        sse_server.url,
        "--requests",
        "1",
        "-n",
        "2",
        "--json",
        env={"OPENAI_API_KEY": "very-secret-key"},
    )
    assert r.returncode == 0, r.stderr
    assert "very-secret-key" not in r.stdout + r.stderr


# -- llmctl bench compare: files of llama-bench's rows (tests/data: llama-bench's own output) -------------

DATA = Path(__file__).resolve().parent.parent / "data" / "llama_bench_0c1e570"


def _rows(factor: float = 1.0, **change) -> list[dict]:
    return [{**r, "avg_ts": r["avg_ts"] * factor, **change} for r in json.loads((DATA / "run1.json").read_text())]


def test_compare_two_files_prints_the_speedup(llmctl, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_rows()))
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in _rows(1.5, build_commit="abc1234")))
    r = llmctl("bench", "compare", str(base), str(new), "-o", "md")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Model", "Test", "t/s base", "t/s new", "Speedup"]
    assert len(lines) == 2 + 6 and all(line.rstrip(" |").endswith("1.50") for line in lines[2:])
    assert "pp8+tg2 @ d8" in r.stdout
    assert "note: runs differ in Build: base: 0c1e570, new: abc1234" in r.stderr
    assert "gate ok: pp16 on new:" in r.stderr

    # llama-bench's csv and sql text as the baseline: the same table
    for other in ("run2.csv", "run2.sql"):
        t = llmctl("bench", "compare", str(DATA / other), str(new), "-q", "--max-regression", "100")
        assert t.returncode == 0, t.stderr
        assert t.stdout.split()[:7] == ["Model", "Test", "t/s", "run2", "t/s", "new", "Speedup"]


def test_compare_gate_exits_1_and_json(llmctl, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_rows()))
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(_rows(0.8)))
    r = llmctl("bench", "compare", str(base), str(slow), "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)  # printed before the gate fails
    assert doc["kind"] == "bench-compare" and doc["baseline"] == "base"
    assert len([g for g in doc["gates"] if not g["passed"]]) == 6
    assert "gate FAILED: pp16 on slow: " in r.stderr and "(-20.0%, allowed -10%)" in r.stderr
    assert r.stderr.rstrip().endswith("Error: 6 benchmark gates not met (listed above)")
    ok = llmctl("bench", "compare", str(base), str(slow), "--max-regression", "25", "-q")
    assert ok.returncode == 0, ok.stderr
    # --baseline names the baseline file; the others are compared with it
    again = llmctl("bench", "compare", str(slow), "--baseline", str(base), "-o", "csv", "-q")
    assert again.returncode == 1 and again.stdout.startswith("run,baseline,model_type,test,avg_ts")


def test_compare_a_fleet_one_row_per_host(llmctl, tmp_path):
    paths = []
    for name, factor, threads in (("web1", 1.0, 2), ("web2", 2.0, 8), ("web3", 0.95, 4)):
        p = tmp_path / f"{name}.json"
        p.write_text(
            json.dumps(
                {
                    "schema_version": 1,
                    "kind": "bench",
                    "mode": "engine",
                    "host": {"hostname": name},
                    "results": _rows(factor, n_threads=threads),
                    "gates": [],
                }
            )
        )
        paths.append(str(p))
    r = llmctl("bench", "compare", *paths, "--min-tg", "0.1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["Run", "Host", "CPU", "Threads"]
    assert [line.split()[0] for line in lines[1:]] == ["web1", "web2", "web3"]
    assert "(2.00x)" in lines[2] and "(0.95x)" in lines[3]
    assert "note: runs differ in Threads: web1: 2, web2: 8, web3: 4" in r.stderr
    strict = llmctl("bench", "compare", *paths, "--strict", "-q")
    assert strict.returncode == 1 and "no row of web2, web3 matches a row of the baseline web1" in strict.stderr


def test_compare_bad_file_exits_2(llmctl, tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE IF NOT EXISTS llama_bench (avg_ts REAL);\nATTACH DATABASE 'x.db' AS x;\n")
    r = llmctl("bench", "compare", str(bad), str(DATA / "run1.json"), cwd=tmp_path)
    assert r.returncode == 2 and "is not llama-bench's SQL output" in r.stderr and r.stdout == ""
    assert not (tmp_path / "x.db").exists()
