"""Helpers for the tests that run a real `llmctl serve` subprocess on 127.0.0.1 (serve, its
lifecycle, upstream fallback, bench --url)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    home: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def start_server(home: Path, config: str, *args: str, env: dict | None = None, open_files: int | None = None) -> Server:
    """`open_files`: the server's RLIMIT_NOFILE (soft and hard), as a unit's LimitNOFILE= would set it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(config)
    log_path = home / "server.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
    environ.update({"LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(home / "config.yaml"), "NO_COLOR": "1"})
    environ.update(env or {})
    port = int(re.search(r"port: (\d+)", config).group(1)) if "port:" in config else free_port()
    argv = [sys.executable, "-m", "llmctl", "serve", *args]
    if "port:" not in config:
        argv += ["--port", str(port)]

    def limit_open_files() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=environ,
            preexec_fn=limit_open_files if open_files is not None else None,
        )
    return Server(proc, port, home, log_path)


def start_smoke(
    home: Path, smoke_store: Path, *, n_ctx: int = 512, limits: str = "", service: str = "", **kw
) -> Server:
    """A healthy `llmctl serve` of the smoke model (linked from `smoke_store`) on a free port.
    `limits` and `service`: YAML lines under services.smoke.limits and services.smoke."""
    from tests._store import link_smoke_store

    link_smoke_store(smoke_store, home)
    config = (
        f"version: 1\nservices:\n  smoke:\n    model: smoke\n    port: {free_port()}\n    n_ctx: {n_ctx}\n"
        + "".join(f"    {line}\n" for line in service.splitlines())
        + "    limits:\n"
        + "".join(f"      {line}\n" for line in limits.splitlines())
    )
    server = start_server(home, config, "smoke", **kw)
    try:
        wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_healthy(server: Server, deadline_s: float = 120.0, headers: dict | None = None) -> None:
    """Poll /health until 200 (503 while loading is expected on the way)."""
    deadline = time.monotonic() + deadline_s
    seen = set()
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited {server.proc.returncode}:\n" + "\n".join(server.log_lines()[-20:]))
        try:
            r = httpx.get(server.url + "/health", headers=headers, timeout=2)
            seen.add(r.status_code)
            if r.status_code == 200:
                return
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling interval, not synchronisation
    raise AssertionError(f"server not healthy within {deadline_s}s (saw {seen})")


def stop_server(server: Server, timeout: float = 30.0) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


def metric(text: str, name: str, labels: str | None = None) -> float:
    """One sample's value from Prometheus text (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if labels is None and key == name:
            return float(value)
        if labels is not None and key.startswith(name + "{") and all(part in key for part in labels.split(",")):
            return float(value)
    return 0.0


def poll(condition, deadline_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert "code" in err
    if code is not None:
        assert err["code"] == code
    return err
