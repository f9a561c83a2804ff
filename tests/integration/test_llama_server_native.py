"""llama.cpp's own llama-server, built from the llama.cpp that the installed llama-cpp-python vendors and
linked against its libraries (benchmarks/llamacpp_build.py `build_llama_server()`; cached in
~/.cache/llmctl-bench, the first build takes about 10 minutes on two cores): the anchor of
benchmarks/bench_serve.py.

It must answer as that benchmark uses it: /health, and streamed chat completions through the real
`openai` client on the smoke model with the flags the benchmark passes. And the benchmark itself runs,
one tiny round (it measures nothing here: it shows that both servers start and every figure is printed).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests._serve import free_port, poll

pytestmark = [pytest.mark.model, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _load_builder():
    spec = importlib.util.spec_from_file_location("llamacpp_build", REPO / "benchmarks" / "llamacpp_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_server() -> tuple[Path, list[str]]:
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler to build llama-server")
    builder = _load_builder()
    return builder.build_llama_server(), builder.llama_server_repack_args()


def _healthy(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"llama-server exited {proc.returncode}"
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_llama_server_answers_health_and_chat(llama_server, smoke_model, tmp_path):
    import openai

    binary, repack = llama_server
    port = free_port()
    log = tmp_path / "llama-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "-m",
                str(smoke_model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-np",
                "2",
                "-t",
                "1",
                "-c",
                "1024",
                "-fa",
                "off",
                "--chat-template",
                "gemma",
                "--no-jinja",
                *repack,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        poll(lambda: _healthy(f"http://127.0.0.1:{port}/health", proc), deadline_s=120, what="llama-server /health")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="smoke", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content
        assert 0 < reply.usage.completion_tokens <= 8
        first_prompt_tokens = reply.usage.prompt_tokens

        pieces, usage = [], None
        for chunk in client.chat.completions.create(
            model="smoke",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) == reply.choices[0].message.content  # temperature 0: the same answer
        assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
        assert usage.prompt_tokens == first_prompt_tokens
        if "--no-repack" in repack:  # llama.cpp logs the size of each weight buffer it allocates
            assert "CPU_REPACK" not in log.read_text(errors="replace")
    finally:
        proc.terminate()
        proc.wait(30)


def test_bench_serve_runs_one_tiny_round(llama_server):
    pytest.importorskip("uvicorn", reason="needs llmctl[serve]")
    binary, _ = llama_server
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_serve.py"),
            "--rounds",
            "1",
            "--max-tokens",
            "4",
            "--only",
            "c1,c4,prefix",
            "--llama-server",
            str(binary),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    ratios = [line for line in r.stdout.splitlines() if line.startswith("RATIO ")]
    labels = [re.sub(r" llmctl serve / llama-server.*", "", line.removeprefix("RATIO ")) for line in ratios]
    assert labels == [
        "1 stream, tok/s",
        "4 streams, aggregate tok/s",
        "4 streams, TTFT p50",
        "4 streams, shared ~900-word prefix, TTFT p50",
    ], r.stdout
    for line in ratios:
        assert re.search(r": \d+\.\d{3}  \(target (>=|<=) \d", line), line
    assert "steal time" in r.stdout
    assert "--parallel 4" in r.stdout or "today's engine runs one request at a time" in r.stdout
    assert "NOTE" not in r.stdout  # both servers counted the same prompt tokens
