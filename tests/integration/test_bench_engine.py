"""`llmctl bench` on the real smoke model through llama-cpp-python (tiny sizes: two shared cores)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest

from llmctl.bench import llamabench as LB
from tests.vendor_compare import run_compare

pytestmark = pytest.mark.model

FIELDS = [
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


@pytest.fixture(autouse=True)
def _needs_llama_cpp():
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")


def test_smoke_json_full_and_gates(llmctl, smoke_model, tmp_path):
    r = llmctl("bench", "smoke", "-p", "16", "-n", "8", "-r", "2", "-t", "2", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "engine" and doc["model"] == "smoke" and doc["llama_bench_schema"] == LB.SCHEMA_VERSION
    assert [x["test"] for x in doc["results"]] == ["pp16", "tg8"]
    for x in doc["results"]:
        assert set(FIELDS) <= set(x), set(FIELDS) - set(x)
        assert x["avg_ts"] > 0 and len(x["samples_ns"]) == 2 and len(x["samples_ts"]) == 2
        assert x["model_type"].startswith("gemma3") and x["model_n_params"] > 200_000_000
        assert x["n_threads"] == 2 and x["n_gpu_layers"] == 0 and x["n_batch"] == 2048
        assert x["model_filename"] == str(smoke_model)
        assert x["build_commit"] != "unknown" and not x["build_commit"].endswith("-dirty")
    host = doc["host"]
    assert host["cpu_model"] and host["ram_bytes"] > 0 and host["llama_cpp_python_version"]
    assert host["simd"], host["system_info"]  # the features the build uses
    assert host["ggml_commit"].startswith(doc["results"][0]["build_commit"])
    # progress on stderr: which test, which repetition
    assert "bench 1/2: pp16 threads=2: warm-up" in r.stderr
    assert "bench 2/2: tg8 threads=2: repetition 2/2" in r.stderr

    # an impossible baseline and an impossible minimum both fail, naming the figure and the gap
    for x in doc["results"]:
        x["avg_ts"] *= 1e6
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc))
    bad = llmctl(
        "bench",
        "smoke",
        "-p",
        "16",
        "-n",
        "0",
        "-r",
        "1",
        "-t",
        "2",
        "--min-pp",
        "1e9",
        "--baseline",
        str(base),
        "--max-regression",
        "50",
        "-o",
        "csv",
        "-q",
        timeout=300,
    )
    assert bad.returncode == 1, bad.stderr
    assert "gate FAILED: pp16 (threads=2, ngl=0, batch=2048, fa=0)" in bad.stderr
    assert "is below --min-pp 1000000000.00 by" in bad.stderr
    assert "allowed -50%" in bad.stderr
    assert bad.stdout.startswith("build_commit,build_number,cpu_info")  # results still printed


def test_depth_pg_and_ubatch(llmctl, smoke_model):
    """-pg, -d and -ub with llama-bench's test names, order and context sizes; the depth is filled once
    and restored for the next repetitions."""
    r = llmctl(
        "bench",
        "smoke",
        "-p",
        "8",
        "-n",
        "2",
        "-pg",
        "4,2",
        "-d",
        "0,6",
        "-ub",
        "4",
        "-r",
        "2",
        "-t",
        "2",
        "-o",
        "json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [LB.test_name(x["n_prompt"], x["n_gen"], x["n_depth"]) for x in rows] == [
        "pp8",
        "tg2",
        "pp4+tg2",
        "pp8 @ d6",
        "tg2 @ d6",
        "pp4+tg2 @ d6",
    ]
    assert {x["n_ubatch"] for x in rows} == {4}
    assert all(len(x["samples_ns"]) == 2 and x["avg_ts"] > 0 for x in rows)
    assert "bench 4/6: pp8 @ d6 threads=2: filling depth 6, repetition 1/2" in r.stderr
    assert "bench 4/6: pp8 @ d6 threads=2: depth 6 restored, repetition 2/2" in r.stderr
    assert "bench 5/6: tg2 @ d6 threads=2: depth 6 restored, repetition 1/2" in r.stderr  # kept across tests
    md = llmctl(
        "bench",
        "smoke",
        "-p",
        "8",
        "-n",
        "0",
        "-d",
        "4",
        "-ub",
        "4",
        "-r",
        "1",
        "-t",
        "1",
        "-o",
        "md",
        "-q",
        timeout=300,
    )
    assert md.returncode == 0, md.stderr
    head = [c.strip() for c in md.stdout.splitlines()[0].strip("|").split("|")]
    assert "n_ubatch" in head and head[-2:] == ["test", "t/s"]
    assert "pp8 @ d4" in md.stdout


def test_table_and_markdown(llmctl, smoke_model):
    r = llmctl("bench", "smoke", "-p", "8", "-n", "0", "-r", "1", "-t", "1,2", "-o", "md", "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    # llama-bench's columns; fa (off is not its default, auto) and rpk (off on AMX CPUs) as it shows them
    assert head[:5] == ["model", "size", "params", "backend", "threads"] and head[-2:] == ["test", "t/s"]
    assert set(head[5:-2]) <= {"fa", "rpk"}
    assert len([line for line in lines if "pp8" in line]) == 2  # -t 1,2 swept
    assert lines[-1].startswith("build: ")
    t = llmctl("bench", "smoke", "-p", "8", "-n", "0", "-r", "1", "-t", "1", timeout=300)
    assert t.returncode == 0, t.stderr
    assert t.stdout.split()[:5] == ["model", "size", "params", "backend", "threads"]
    assert "host:" in t.stderr and "build:" in t.stderr


def test_config_defaults_apply(llmctl, smoke_model, write_config):
    write_config(
        "version: 1\nbench:\n  n_prompt: [8]\n  n_gen: [0]\n  pg: [[4, 1]]\n  n_depth: [0]\n"
        "  ubatch_size: [8]\n  repetitions: 1\n  threads: [1]\n  flash_attn: auto\n"
    )
    r = llmctl("bench", "-o", "jsonl", "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [
        (x["n_prompt"], x["n_gen"], x["n_threads"], x["n_ubatch"], x["flash_attn"], len(x["samples_ns"])) for x in rows
    ] == [(8, 0, 1, 8, -1, 1), (4, 1, 1, 8, -1, 1)]


def test_llama_cpps_compare_script_reads_every_format(llmctl, smoke_model, tmp_path):
    """llama.cpp's own compare-llama-bench.py reads llmctl's json, jsonl, csv and sql (piped into sqlite3,
    as its docs say) and prints the pp and tg rows."""
    files = {}
    for fmt in ("json", "jsonl", "csv", "sql"):
        r = llmctl("bench", "smoke", "-p", "8", "-n", "2", "-r", "1", "-t", "2", "-o", fmt, "-q", timeout=300)
        assert r.returncode == 0, r.stderr
        files[fmt] = tmp_path / f"llmctl.{fmt}"
        files[fmt].write_text(r.stdout)
    db = tmp_path / "llama-bench.sqlite"
    if shutil.which("sqlite3"):
        subprocess.run(["sqlite3", str(db)], input=files["sql"].read_text(), text=True, check=True)
    else:  # the same statements through Python's sqlite3
        with sqlite3.connect(db) as conn:
            conn.executescript(files["sql"].read_text())
        conn.close()
    commit = json.loads(files["json"].read_text())[0]["build_commit"]
    for name, path in [("json", files["json"]), ("jsonl", files["jsonl"]), ("csv", files["csv"]), ("sqlite", db)]:
        out = run_compare([path], commit, commit, tmp_path)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        lines = out.stdout.splitlines()
        assert "| Model" in lines[0] and "Speedup" in lines[0], (name, out.stdout)
        tests = [line.split("|")[-5].strip() for line in lines[2:]]
        assert sorted(tests) == ["pp8", "tg2"], (name, out.stdout)
    # and llmctl's own compare reads them all the same
    c = llmctl("bench", "compare", str(files["json"]), str(db), "--max-regression", "100", "-o", "csv", "-q")
    assert c.returncode == 0, c.stderr
    assert len(c.stdout.splitlines()) == 1 + 2 * 2
