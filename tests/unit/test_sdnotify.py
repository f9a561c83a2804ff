from __future__ import annotations

import os
import socket

from llmctl.sdnotify import notify, watchdog_interval_s


def test_notify_sends_datagram(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        assert notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": path})
        srv.settimeout(5)
        assert srv.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_without_socket_is_a_no_op():
    assert notify("READY=1", environ={}) is False


def test_watchdog_interval():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
