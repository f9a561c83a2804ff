"""End to end: a real server process, `llmctl health` in a subprocess, a real restart command.

1. the server answers: health exits 0;
2. the server is frozen with SIGSTOP: health detects the hang within its timeout, runs the restart
   command (tests/health_restart.py: kills the frozen server, starts a new one), probes again and
   exits 1 (WARNING: recovered);
3. the server is gone and the restart fails: exit 2 (CRITICAL);
4. the restart budget is spent: no restart, exit 2, and the line says why.

Two servers run the same script:
- `serve`: the real `python -m llmctl serve smoke` (needs llama-cpp-python and the smoke model);
- `standin`: tests/health_standin.py in its own process, a plain HTTP server that answers like
  serve. It STANDS IN for serve where llama-cpp-python is not installed; the `serve` case is the
  real end-to-end test.

The restart command stands in for `systemctl restart UNIT` (systemd is not PID 1 here).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.health_standin import free_port

REPO = Path(__file__).resolve().parents[2]
RESTART = REPO / "tests" / "health_restart.py"


def _serve_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "needs llama-cpp-python (llmctl[serve]) for the real `llmctl serve`"
    if importlib.util.find_spec("llmctl.serve") is None:
        return "`llmctl serve` is not in this tree yet"
    return None


def wait_ready(port: int, deadline_s: float, log: Path, pidfile: Path) -> None:
    end = time.monotonic() + deadline_s
    pid = int(pidfile.read_text())
    while time.monotonic() < end and alive(pid):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"server on port {port} not ready (exited or {deadline_s}s passed):\n{log.read_text()[-3000:]}"
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else "X"
    return state not in ("Z", "X")


def kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + 20
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    assert not alive(pid)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture(params=["standin", pytest.param("serve", marks=[pytest.mark.model, pytest.mark.slow])])
def server_kind(request):
    if request.param == "serve":
        missing = _serve_missing()
        if missing:
            pytest.skip(missing)
        request.getfixturevalue("smoke_model")  # the smoke GGUF in this test's store
    return request.param


def test_end_to_end_hang_restart_recover_fail_budget(server_kind, tmp_path, write_config, llmctl):
    port = free_port()
    if server_kind == "serve":
        server = [sys.executable, "-m", "llmctl", "serve", "smoke", "--port", str(port)]
        # Generous: on a loaded 2-core CI machine a healthy one-token completion took 3 s.
        timeout, ready_s = 15, 180
    else:
        server = [sys.executable, str(REPO / "tests" / "health_standin.py"), "--port", str(port)]
        timeout, ready_s = 2, 20
    pidfile, log, count = tmp_path / "server.pid", tmp_path / "server.log", tmp_path / "restarts"
    restart = [
        sys.executable,
        str(RESTART),
        "--pidfile",
        str(pidfile),
        "--log",
        str(log),
        "--count",
        str(count),
        "--",
        *server,
    ]
    failing = [sys.executable, str(RESTART), "--count", str(count), "--fail"]
    write_config(
        "version: 1\n"
        f"services:\n  chat: {{model: smoke, port: {port}}}\n"
        # slow_ms far above the timeout: only a hang (the timeout) decides the verdict here, never
        # how busy the machine happens to be.
        f"health: {{timeout_s: {timeout}, slow_ms: 600000, retries: 1, retry_delay_s: 0.5, recovery_timeout_s: {ready_s},"
        f" backoff_initial_s: 0, restart_budget: 2, budget_window_s: 3600,"
        f" restart_command: {json.dumps(restart)}}}\n"
    )
    # Start the server the way the restart command will (no count: this is not a restart).
    launch = [sys.executable, str(RESTART), "--pidfile", str(pidfile), "--log", str(log), "--", *server]
    assert run_cmd(launch).returncode == 0
    try:
        wait_ready(port, ready_s, log, pidfile)

        # 1. healthy
        ok = llmctl("health", timeout=ready_s)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith("OK - chat ") and "'chat_latency'=" in ok.stdout

        # 2. frozen: hang detected within the timeout, restarted, recovered -> WARNING
        frozen = int(pidfile.read_text())
        os.kill(frozen, signal.SIGSTOP)
        hung = llmctl("health", timeout=ready_s + 60)
        assert hung.returncode == 1, hung.stdout + hung.stderr
        assert hung.stdout.startswith("WARNING - chat recovered after restart")
        assert f"timed out after {timeout}s" in hung.stdout
        evs = events(hung.stderr)
        names = [e["event"] for e in evs]
        assert names[:2] == ["probe_failed", "probe_failed"] and "timed out" in evs[0]["error"]
        assert names[-3:] == ["restart_issued", "restart_done", "recovered"]
        assert len(count.read_text().splitlines()) == 1
        assert int(pidfile.read_text()) != frozen and not alive(frozen)

        # 3. gone, and the restart fails -> CRITICAL
        kill_and_wait(int(pidfile.read_text()))
        down = llmctl("health", timeout=120, env={"LLMCTL_HEALTH__RESTART_COMMAND": json.dumps(failing)})
        assert down.returncode == 2, down.stdout + down.stderr
        assert down.stdout.startswith("CRITICAL - chat tcp: connection refused (2 attempts); restart failed:")
        assert "its model is gone" in down.stdout
        assert "restart_failed" in [e["event"] for e in events(down.stderr)]
        assert len(count.read_text().splitlines()) == 2

        # 4. budget spent (2 restarts in the window): no restart, CRITICAL, and why
        spent = llmctl("health", timeout=120)
        assert spent.returncode == 2, spent.stdout + spent.stderr
        assert "no restart: restart budget spent: 2 restarts in the last 3600s (budget 2)" in spent.stdout
        assert len(count.read_text().splitlines()) == 2  # the restart command did not run
        skipped = [e for e in events(spent.stderr) if e["event"] == "restart_skipped"]
        assert skipped and skipped[0]["reason"] == "budget"
        assert "restart_issued" not in [e["event"] for e in events(spent.stderr)]
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            kill_and_wait(int(pidfile.read_text()))


def run_cmd(argv: list[str]):
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, timeout=60)
