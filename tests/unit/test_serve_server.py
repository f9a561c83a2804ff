"""The connection bounds of llmctl.serve.server, without a model: the caps within an open-file limit,
the once-a-second log limiter, and asyncio's accept errors at a real open-file limit (a subprocess
with a real listening socket and RLIMIT_NOFILE used up)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest

from llmctl.schema import Limits
from llmctl.serve.server import FloodFilter, OncePerSecond, connection_caps

from tests.conftest import REPO


class Settings:
    def __init__(self, **limits) -> None:
        self.limits = Limits(**limits)


@pytest.mark.parametrize(
    "max_connections, open_files, caps",
    [
        (256, Limits().open_files, (256, 320)),  # what LimitNOFILE= gives: every connection, and 64 to answer 503
        (8, Limits(max_connections=8).open_files, (8, 72)),
        (256, 96, (39, 48)),  # a tight ulimit: both fit in it, with room for the rest of the process
        (256, 1024, (256, 320)),
        (1, 4, (1, 2)),
    ],
)
def test_connection_caps_fit_the_open_file_limit(max_connections, open_files, caps):
    served, hard = connection_caps(Settings(max_connections=max_connections), open_files)
    assert (served, hard) == caps
    assert served <= hard < open_files


def test_the_unit_limit_is_derived_from_max_connections():
    assert Limits(max_connections=1000).open_files == 1000 + 64 + 128


def test_once_per_second_counts_what_it_held_back():
    now = [0.0]
    limiter = OncePerSecond(clock=lambda: now[0])
    assert limiter.allow() == 0
    assert [limiter.allow() for _ in range(5)] == [None] * 5
    now[0] = 1.0
    assert limiter.allow() == 5 and limiter.allow() is None


def test_uvicorns_per_request_warnings_are_limited():
    f = FloodFilter()
    records = [
        logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, "Exceeded concurrency limit.", None, None)
        for _ in range(100)
    ]
    assert sum(f.filter(r) for r in records) == 1
    other = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, "something else", None, None)
    assert f.filter(other) and f.filter(other)


ACCEPT_SERVER = """
import asyncio, logging, resource, sys
from llmctl.serve.server import accept_error_handler

logging.basicConfig(stream=sys.stderr, format="%(name)s %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

async def main():
    loop = asyncio.get_running_loop()
    if sys.argv[1] == "limited":
        loop.set_exception_handler(accept_error_handler(logging.getLogger("llmctl.serve")))
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=128)
    hold = []
    try:
        while True:  # use up every file descriptor: each accept() now fails with EMFILE
            hold.append(open("/dev/null"))
    except OSError:
        pass
    print(server.sockets[0].getsockname()[1], flush=True)
    sys.stdin.readline()  # the test's clients are connected
    await asyncio.sleep(2)  # the window whose log lines the test counts
    print("done", flush=True)

asyncio.run(main())
"""


def accept_errors_logged(mode: str, tmp_path) -> tuple[int, str]:
    log = tmp_path / f"{mode}.log"  # a file, not a pipe: thousands of tracebacks would fill a pipe
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", ACCEPT_SERVER, mode],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        proc.wait(60)
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, log.read_text()


@pytest.mark.slow
def test_accept_errors_at_the_open_file_limit_are_one_line_a_second(tmp_path):
    code, err = accept_errors_logged("default", tmp_path)  # asyncio alone: a traceback for every retry
    assert code == 0
    assert err.count("socket.accept() out of system resource") > 100
    code, err = accept_errors_logged("limited", tmp_path)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "cannot accept connections" in ln]
    assert 1 <= len(lines) <= 4, err[-2000:]  # a 2-second window: a line a second, each with a count
    assert "Too many open files" in lines[0] and "Traceback" not in err


def test_the_server_units_limit_nofile_follows_max_connections(tmp_path):
    from llmctl.config import check_file
    from llmctl.paths import Paths
    from llmctl.units.render import RenderOptions, render

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "services:\n  big:\n    model: smoke\n    limits:\n      max_connections: 1000\n"
        "  small:\n    model: smoke\n    port: 8001\n"
    )
    root = tmp_path / "home"
    options = RenderOptions(
        llmctl="/opt/llmctl/bin/llmctl",
        config_path="/etc/llmctl/config.yaml",
        paths=Paths("home", root, root, root / "state", root / "cache"),
    )
    result = render(check_file(cfg), options)
    for unit, limit in (("llmctl-big.service", 1000 + 64 + 128), ("llmctl-small.service", 256 + 64 + 128)):
        lines = result.get(unit).content.splitlines()
        assert [ln for ln in lines if ln.startswith("LimitNOFILE=")] == [f"LimitNOFILE={limit}"]
