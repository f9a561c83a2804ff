"""`llmctl bench --url` against a real `llmctl serve smoke` subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests._serve import Server, free_port, stop_server, wait_healthy

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture
def serve_smoke(smoke_model, tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    pytest.importorskip("uvicorn", reason="needs llmctl[serve]")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:  # the store and config of the test's LLMCTL_HOME (smoke_model)
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmctl", "serve", "smoke", "--port", str(port), "-t", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
    server = Server(proc, port, tmp_path, log_path)
    try:
        wait_healthy(server)
        yield server.url
    finally:
        stop_server(server)


def test_bench_measures_llmctl_serve(llmctl, serve_smoke):
    r = llmctl(
        "bench",
        "--url",
        serve_smoke,
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "-n",
        "8",
        "--prompt",
        "Count from one to twenty.",
        "--json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["test"] for x in doc["results"]] == ["c1", "c2"]
    for x in doc["results"]:
        assert (x["n_ok"], x["n_failed"]) == (2, 0), x["errors"]
        assert x["output_tokens"] > 0 and x["avg_ts"] > 0 and x["requests_per_s"] > 0
        assert x["prompt_tokens"] and x["prompt_tokens"] > 0  # serve reports usage in the stream
        assert 0 < x["ttft_ms"]["p50"] <= x["e2e_ms"]["p50"]
        assert x["model"]  # discovered from /v1/models
    gate = llmctl("bench", "--url", serve_smoke, "--requests", "1", "-n", "4", "--min-tg", "1e9", "-q", timeout=300)
    assert gate.returncode == 1 and "is below --min-tg" in gate.stderr
