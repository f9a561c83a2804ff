"""`llmctl serve` start-up errors, sd_notify, a full queue and SIGTERM, each on its own short-lived server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from tests._serve import assert_openai_error, free_port, metric, poll, start_server, wait_healthy
from tests._store import link_smoke_store as link_store

NO_EOS = {"1": -100, "106": -100}  # the smoke model's <eos> and <end_of_turn>: keep the stream going

httpx = pytest.importorskip("httpx")


def write_lock_entry(home: Path, name: str, data: bytes, sha256: str) -> Path:
    path = home / "models" / name / f"{name}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    lock = {
        "version": 1,
        "models": {
            name: {
                "file": path.name,
                "path": f"{name}/{path.name}",
                "size": len(data),
                "sha256": sha256,
                "pulled_at": "2026-01-01T00:00:00Z",
                "source": "import",
            }
        },
    }
    (home / "models.lock").write_text(json.dumps(lock))
    return path


# -- start-up errors: the documented exit code, one line, before any model is loaded ----------------------


def test_checksum_mismatch_exits_3(home, llmctl):
    write_lock_entry(home, "tiny", b"GGUF not really a model", "0" * 64)
    proc = llmctl("serve", "tiny", "--port", str(free_port()))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("Error: ") and "sha256" in proc.stderr


def test_path_outside_the_store_needs_allow_unverified(tmp_path, llmctl):
    stray = tmp_path / "stray.gguf"
    stray.write_bytes(b"GGUF junk")
    proc = llmctl("serve", str(stray), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert "outside the verified model store" in proc.stderr and "--allow-unverified" in proc.stderr


def test_unloadable_model_exits_1(tmp_path, llmctl):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    stray = tmp_path / "stray.gguf"
    stray.write_bytes(b"GGUF junk")
    proc = llmctl("serve", str(stray), "--allow-unverified", "--port", str(free_port()), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Error: could not load" in proc.stderr


@pytest.mark.parametrize(
    "config, message",
    [
        ("services:\n  chat:\n    model: smoke\n    port: 0\n", "services.chat.port"),
        ("services:\n  chat:\n    model: smoke\n    api_keys_file: /nonexistent/keys\n", "API keys file not found"),
    ],
)
@pytest.mark.model
def test_config_errors_exit_2(write_config, llmctl, smoke_model, config, message):
    write_config("version: 1\n" + config)
    proc = llmctl("serve", "chat")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_no_target_and_no_single_service_exits_2(llmctl):
    proc = llmctl("serve")
    assert proc.returncode == 2
    assert "name a service or a model" in proc.stderr


@pytest.mark.model
def test_empty_keys_file_exits_2(tmp_path, llmctl, smoke_model):
    keys = tmp_path / "keys"
    keys.write_text("# nothing here\n\n")
    proc = llmctl("serve", "smoke", "--api-keys-file", str(keys))
    assert proc.returncode == 2
    assert "holds no API keys" in proc.stderr


# -- a full queue, sd_notify and SIGTERM ----------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_full_queue_503_then_sigterm_drains_and_exits_0(smoke_store: Path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    short = Path(tempfile.mkdtemp(prefix="llmctl-serve-", dir="/tmp"))  # AF_UNIX paths are short
    try:
        notify_path = short / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        home = short / "home"
        home.mkdir()
        link_store(smoke_store, home)
        keys = home / "keys"
        keys.write_text("sk-lifecycle\n")
        config = f"""version: 1
services:
  lone:
    model: smoke
    port: {free_port()}
    n_ctx: 1024
    parallel: 1  # one slot: the stream below keeps it busy, so the next request waits in the queue
    api_keys_file: {keys}
    shutdown_timeout_s: 3
    limits:
      queue_length: 1
      queue_timeout_s: 2
      max_tokens: 1000
"""
        server = start_server(home, config, "lone", env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "500000"})
        try:
            wait_healthy(server)
            notes: list[str] = []  # what the server told "systemd", drained as systemd does

            def drain() -> None:
                while True:
                    try:
                        notes.extend(notify.recv(4096).decode().splitlines())
                    except OSError:
                        return

            threading.Thread(target=drain, daemon=True).start()
            poll(lambda: "READY=1" in notes, what="READY=1")
            poll(lambda: "WATCHDOG=1" in notes, what="WATCHDOG=1")  # every WATCHDOG_USEC/2 while healthy
            # An idle server is ready: /ready runs a one-token probe through the queue.
            ready = httpx.get(server.url + "/ready", timeout=60)
            assert ready.status_code == 200 and ready.json()["probed"] is True

            headers = {"Authorization": "Bearer sk-lifecycle"}
            started = threading.Event()
            outcome: dict = {}

            def stream() -> None:
                try:
                    with (
                        httpx.Client(timeout=120) as h,
                        h.stream(
                            "POST",
                            server.url + "/v1/completions",
                            headers=headers,
                            json={
                                "prompt": "Tell a long story:",
                                "max_tokens": 1000,
                                "stream": True,
                                "logit_bias": NO_EOS,
                            },
                        ) as r,
                    ):
                        outcome["status"] = r.status_code
                        lines = []
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                lines.append(line)
                                started.set()
                        outcome["lines"] = lines
                except httpx.HTTPError as exc:  # cut at the shutdown timeout: also an acceptable end
                    outcome["error"] = exc
                finally:
                    started.set()

            t = threading.Thread(target=stream)
            t.start()
            assert started.wait(120), "\n".join(server.log_lines()[-15:])
            assert outcome.get("status", 200) == 200

            # The model is busy with the stream; one request may wait (queue_length 1) for 2 s.
            waiting: dict = {}

            def queued() -> None:
                waiting["r"] = httpx.post(
                    server.url + "/v1/completions", headers=headers, timeout=60, json={"prompt": "hi", "max_tokens": 1}
                )

            q = threading.Thread(target=queued)
            q.start()
            poll(
                lambda: (
                    metric(httpx.get(server.url + "/metrics", headers=headers).text, "llmctl_requests_deferred") == 1
                ),
                what="a request to wait in the queue",
            )
            # The queue is full: 503 with Retry-After, in OpenAI's shape.
            r = httpx.post(server.url + "/v1/completions", headers=headers, json={"prompt": "hi", "max_tokens": 1})
            assert_openai_error(r, 503, "queue_full")
            assert int(r.headers["Retry-After"]) >= 1
            # The waiting one gives up after queue_timeout_s: 503, and its place is free again.
            q.join(60)
            assert_openai_error(waiting["r"], 503, "queue_timeout")
            assert int(waiting["r"].headers["Retry-After"]) >= 1
            r = httpx.post(
                server.url + "/v1/completions", headers=headers, json={"prompt": "hi", "max_tokens": 1}, timeout=60
            )
            assert r.status_code == 200 or r.json()["error"]["code"] == "queue_timeout", r.text

            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(3 + 30)  # the shutdown timeout plus a wide margin for a loaded machine
            assert code == 0, "\n".join(server.log_lines()[-20:])
            t.join(30)
            assert not t.is_alive()
            # The stream ended cleanly: finished ([DONE]) or cut at the shutdown timeout with an error event.
            lines = outcome.get("lines")
            assert lines, outcome
            assert lines[-1] == "data: [DONE]" or json.loads(lines[-1][6:])["error"]["code"] == "shutting_down"
            poll(lambda: "STOPPING=1" in notes, what="STOPPING=1")
            with pytest.raises(httpx.TransportError):
                httpx.get(server.url + "/health", timeout=2)
            records = [json.loads(ln) for ln in server.log_lines() if ln.startswith("{")]
            assert any("SIGTERM" in r.get("message", "") for r in records)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
            with contextlib.suppress(OSError):
                notify.shutdown(socket.SHUT_RDWR)
            notify.close()
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.model
@pytest.mark.slow
def test_systemd_credential_keys_take_precedence(smoke_store: Path, tmp_path: Path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    home = tmp_path / "home"
    home.mkdir()
    link_store(smoke_store, home)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-keys").write_text("sk-from-credential\n")
    flag_keys = tmp_path / "flag-keys"
    flag_keys.write_text("sk-from-flag\n")
    server = start_server(
        home,
        "version: 1\n",
        "smoke",
        "--api-keys-file",
        str(flag_keys),
        "--n-ctx",
        "256",
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    try:
        wait_healthy(server)
        assert httpx.get(server.url + "/v1/models", headers={"X-Api-Key": "sk-from-credential"}).status_code == 200
        assert_openai_error(httpx.get(server.url + "/v1/models", headers={"X-Api-Key": "sk-from-flag"}), 401)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    assert os.path.exists(server.log_path)


@pytest.mark.model
@pytest.mark.slow
def test_embeddings_when_enabled(smoke_store: Path, tmp_path: Path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    import openai

    home = tmp_path / "home"
    home.mkdir()
    link_store(smoke_store, home)
    port = free_port()
    server = start_server(
        home,
        f"version: 1\nservices:\n  emb:\n    model: smoke\n    port: {port}\n    n_ctx: 256\n    embeddings: true\n",
        "emb",
    )
    try:
        wait_healthy(server)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        r = client.embeddings.create(model="smoke", input=["hello world", "a cat"])
        assert [d.index for d in r.data] == [0, 1]
        assert len(r.data[0].embedding) == len(r.data[1].embedding) > 16
        assert all(isinstance(x, float) for x in r.data[0].embedding)
        assert r.usage.prompt_tokens > 0
        # Generation still works on an embeddings-enabled service.
        c = client.completions.create(model="smoke", prompt="Hello", max_tokens=2)
        assert c.usage.completion_tokens >= 1
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0


@pytest.mark.model
def test_port_in_use_exits_1_without_loading_the_model(llmctl, smoke_model):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = llmctl("serve", "smoke", "--port", str(busy.getsockname()[1]), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Error: could not listen on 127.0.0.1:" in proc.stderr
    assert "address already in use" in proc.stderr
    assert "llmctl.serve.llama" not in proc.stderr  # the model was never loaded
