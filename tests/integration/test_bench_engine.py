"""`llmctl bench` on the real smoke model through llama-cpp-python (tiny sizes: two shared cores)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.model

FIELDS = [
    "build_commit", "cpu_info", "gpu_info", "backends", "model_type", "model_size", "model_n_params",
    "n_threads", "n_gpu_layers", "n_batch", "n_prompt", "n_gen", "test_time", "avg_ns", "stddev_ns",
    "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
]


@pytest.fixture(autouse=True)
def _needs_llama_cpp():
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")


def test_smoke_json_and_gates(llmctl, smoke_model, tmp_path):
    r = llmctl("bench", "smoke", "-p", "16", "-n", "8", "-r", "2", "-t", "2", "-o", "json", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "engine" and doc["model"] == "smoke"
    assert [x["test"] for x in doc["results"]] == ["pp16", "tg8"]
    for x in doc["results"]:
        assert set(FIELDS) <= set(x), set(FIELDS) - set(x)
        assert x["avg_ts"] > 0 and len(x["samples_ns"]) == 2 and len(x["samples_ts"]) == 2
        assert x["model_type"].startswith("gemma3") and x["model_n_params"] > 200_000_000
        assert x["n_threads"] == 2 and x["n_gpu_layers"] == 0 and x["n_batch"] == 2048
        assert x["model_filename"] == str(smoke_model)
    host = doc["host"]
    assert host["cpu_model"] and host["ram_bytes"] > 0 and host["llama_cpp_python_version"]
    assert host["simd"], host["system_info"]  # the features the build uses
    # progress on stderr: which test, which repetition
    assert "bench 1/2: pp16 threads=2: warm-up" in r.stderr
    assert "bench 2/2: tg8 threads=2: repetition 2/2" in r.stderr

    # an impossible baseline and an impossible minimum both fail, naming the figure and the gap
    for x in doc["results"]:
        x["avg_ts"] *= 1e6
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc))
    bad = llmctl("bench", "smoke", "-p", "16", "-n", "0", "-r", "1", "-t", "2", "--min-pp", "1e9",
                 "--baseline", str(base), "--max-regression", "50", "-o", "csv", "-q", timeout=300)
    assert bad.returncode == 1, bad.stderr
    assert "gate FAILED: pp16 (threads=2, ngl=0, batch=2048, fa=0)" in bad.stderr
    assert "is below --min-pp 1000000000.00 by" in bad.stderr
    assert "allowed -50%" in bad.stderr
    assert bad.stdout.startswith("build_commit,build_number,cpu_info")  # results still printed


def test_table_and_markdown(llmctl, smoke_model):
    r = llmctl("bench", "smoke", "-p", "8", "-n", "0", "-r", "1", "-t", "1,2", "-o", "md", "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].replace(" ", "") == "|model|size|params|backend|threads|test|t/s|"
    assert len([line for line in lines if "pp8" in line]) == 2  # -t 1,2 swept
    assert lines[-1].startswith("build: ")
    t = llmctl("bench", "smoke", "-p", "8", "-n", "0", "-r", "1", "-t", "1", timeout=300)
    assert t.returncode == 0, t.stderr
    assert t.stdout.split()[:7] == ["model", "size", "params", "backend", "threads", "test", "t/s"]
    assert "host:" in t.stderr and "build:" in t.stderr


def test_config_defaults_apply(llmctl, smoke_model, write_config):
    write_config("version: 1\nbench:\n  n_prompt: [8]\n  n_gen: [0]\n  repetitions: 1\n  threads: [1]\n")
    r = llmctl("bench", "-o", "jsonl", "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["test"], x["n_threads"], len(x["samples_ns"])) for x in rows] == [("pp8", 1, 1)]
