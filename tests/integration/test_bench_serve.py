"""`llmctl bench --url` against a real `llmctl serve smoke` subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_smoke(smoke_model, tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    pytest.importorskip("uvicorn", reason="needs llmctl[serve]")
    import httpx

    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llmctl", "serve", "smoke", "--port", str(port), "-t", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llmctl serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"llmctl serve not healthy within 120 s:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_bench_measures_llmctl_serve(llmctl, serve_smoke):
    r = llmctl("bench", "--url", serve_smoke, "--concurrency", "1,2", "--requests", "2", "-n", "8",
               "--prompt", "Count from one to twenty.", "-o", "json", timeout=300)
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
