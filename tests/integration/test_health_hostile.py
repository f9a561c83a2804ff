"""`llmctl health` against hostile servers and a hostile state file (issue 13, items 10, 11 and 13).

Real HTTP servers on 127.0.0.1 (threads in this process) and the real CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmctl.health import policy as pol
from llmctl.health.probes import MAX_BODY_BYTES, ProbeSettings, Target, check_once, make_client
from llmctl.health.report import nagios_line, perfdata
from llmctl.health.run import ServiceResult, Status, run_health
from tests.health_standin import free_port

FAST = ProbeSettings(timeout_s=3.0, retries=0, retry_delay_s=0, slow_ms=2000)


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "endless"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.set()
        if self.server.mode == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * (256 << 10)
            frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
            try:
                while not self.server.stopping.is_set():
                    self.wfile.write(frame)
            except OSError:
                self.server.client_gone.set()
            return
        if self.server.mode == "gzip":
            body = gzip.compress(b"[" + b"0," * 5_000_000 + b"0]")
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
        else:  # an error whose text holds control characters and a forged perfdata section
            body = json.dumps({"error": {"message": "boom\x1b[2J\x07\r\nOK - fine | 'chat_latency'=1ms;2;3"}}).encode()
            self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Hostile:
    def __init__(self, mode: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
        self.server.daemon_threads = True
        self.server.mode = mode
        self.server.seen = threading.Event()
        self.server.stopping = threading.Event()
        self.server.client_gone = threading.Event()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _target(port: int) -> Target:
    return Target(
        name="chat",
        host="127.0.0.1",
        port=port,
        base_url=f"http://127.0.0.1:{port}",
        model="smoke",
        unit="llmctl-chat.service",
    )


async def _check(port: int):
    async with make_client(FAST.timeout_s) as client:
        return await check_once(client, _target(port), FAST)


def test_an_endless_body_fails_the_probe_after_the_cap():
    """Item 11: before, the probe buffered the body until its timeout (1.8 GB RSS at --timeout 3)."""
    with Hostile("endless") as h:
        res = asyncio.run(_check(h.port))
        assert h.server.client_gone.wait(10), "the probe kept reading"
    assert not res.ok and res.failed.probe == "health"
    assert res.failed.error == f"/health: response body larger than {MAX_BODY_BYTES} bytes"


def test_a_compressed_body_is_refused_not_inflated():
    with Hostile("gzip") as h:
        res = asyncio.run(_check(h.port))
    assert not res.ok and "compressed response (gzip)" in res.failed.error


def test_an_error_text_cannot_forge_the_nagios_line_or_reach_the_terminal(llmctl):
    """Item 13: control characters and a '|' from the server's error text went out raw."""
    with Hostile("error") as h:
        proc = llmctl("health", "--url", h.url, "--retries", "0", "--timeout", "3")
    assert proc.returncode == 2
    (line,) = proc.stdout.splitlines()
    assert line.count("|") == 1 and line.endswith("| 'url_latency'=U;2000;3000")
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert line.startswith("CRITICAL - url health: HTTP 500: boom\\x1b[2J\\x07 OK - fine / 'chat_latency'")


def test_perfdata_labels_are_escaped():
    res = ServiceResult("a'b=c|d\x1b", "u", Status.OK, "x", latency_ms=5)
    assert perfdata(res, FAST) == "'a''b_c/d\\x1b_latency'=5ms;2000;3000"
    assert nagios_line(res, FAST).count("|") == 1


BAD_ANYWHERE = ["1e999", "Infinity", "-Infinity", "NaN", "-5", "true", '"3"', "[1]", "{}"]
BAD_STATE = (
    [("consecutive_failures", v) for v in [*BAD_ANYWHERE, "1.5", "2000001"]]
    + [("restarts", f"[{v}]") for v in [*BAD_ANYWHERE, "1e11"]]
    + [("restarts", "{}"), ("last_restart", "1e11")]
    + [("last_ok", v) for v in BAD_ANYWHERE]
)


@pytest.mark.parametrize("field, raw", BAD_STATE)
def test_state_values_out_of_range_reset_the_state_and_repair_the_file(tmp_path, field, raw):
    """Item 10: before, `1e999` or `Infinity` crashed every run (exit 1, which the unit counts as success)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = state_dir / pol.STATE_FILE
    path.write_text(f'{{"version": 1, "services": {{"chat": {{"{field}": {raw}}}}}}}')
    events = []
    report = run_health(
        [_target(free_port())],
        state_dir=state_dir,
        settings=FAST,
        policy=pol.PolicySettings(restart=False),
        restarter=None,
        log=lambda e, level="info", **f: events.append(e),
    )
    assert report.status is Status.CRITICAL  # the port is closed: the run itself went on
    assert "state_reset" in events
    assert pol.load_state(path).get("chat").consecutive_failures == 1  # rewritten, readable again


@pytest.mark.parametrize(
    "field, raw", [("consecutive_failures", "3"), ("restarts", "[1.5, 2e9]"), ("last_ok", "1700000000.25")]
)
def test_state_values_in_range_are_kept(tmp_path, field, raw):
    path = tmp_path / pol.STATE_FILE
    path.write_text(f'{{"version": 1, "services": {{"chat": {{"{field}": {raw}}}}}}}')
    assert pol.load_state(path).get("chat") != pol.ServiceState()


def test_deeply_nested_state_is_reset(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / pol.STATE_FILE).write_text("[" * 100_000 + "]" * 100_000)
    events = []
    run_health(
        [_target(free_port())],
        state_dir=state_dir,
        settings=FAST,
        policy=pol.PolicySettings(),
        restarter=None,
        log=lambda e, level="info", **f: events.append(e),
    )  # restart: no restarter
    assert "state_reset" in events
    assert pol.load_state(state_dir / pol.STATE_FILE).get("chat").consecutive_failures == 1


def test_a_corrupt_state_file_with_only_an_adhoc_url_is_still_repaired(tmp_path, llmctl, home):
    """An ad-hoc --url keeps no state, so before the file stayed corrupt forever."""
    (home / "state").mkdir(exist_ok=True)
    path = home / "state" / pol.STATE_FILE
    path.write_text('{"version": 1, "services": {"x": {"consecutive_failures": 1e999}}}')
    proc = llmctl("health", "--url", f"http://127.0.0.1:{free_port()}", "--retries", "0", "--timeout", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert '"event":"state_reset"' in proc.stderr
    assert pol.load_state(path) == pol.HealthState()
