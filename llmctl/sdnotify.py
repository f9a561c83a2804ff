"""A minimal sd_notify(3) client (stdlib only): READY=1, STOPPING=1, WATCHDOG=1, STATUS=...

Does nothing when $NOTIFY_SOCKET is unset (not started by systemd with Type=notify).
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str, environ: dict[str, str] | None = None) -> bool:
    """Send the fields ("READY=1", ...) to systemd. Returns False when there is no socket."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address[0] == "@":  # abstract namespace socket
        address = "\0" + address[1:]
    # Never block the caller (an event loop): when systemd's socket queue is full, drop the
    # datagram; the next WATCHDOG=1 follows soon enough.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.send("\n".join(fields).encode(), socket.MSG_DONTWAIT)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of WatchdogSec (systemd's advice), or None when no watchdog is armed for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
