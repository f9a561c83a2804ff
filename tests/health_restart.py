"""A restart command for health's end-to-end tests, standing in for `systemctl restart UNIT`
(systemd is not PID 1 on these machines, so a real unit cannot be restarted here).

    python tests/health_restart.py --pidfile F --log L [--count C] [--fail] -- SERVER ARGV...

Kills the process named in the pidfile (SIGKILL works on a SIGSTOPped process too) and waits until
it is gone, then starts SERVER ARGV in its own session (output appended to the log) and writes its
pid to the pidfile. It does not wait for the server to be ready: health polls for recovery.
--count appends a line to a file for every invocation; --fail exits 1 without starting anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def kill(pid: int, deadline_s: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + deadline_s
    while alive(pid):
        if time.monotonic() > end:
            sys.exit(f"process {pid} survived SIGKILL")
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pidfile", type=Path)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--count", type=Path)
    ap.add_argument("--fail", action="store_true")
    ap.add_argument("argv", nargs="*")
    args = ap.parse_args()
    if args.count:
        with args.count.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
    if args.fail:
        sys.exit("cannot start the server: its model is gone")
    if args.pidfile and args.pidfile.exists():
        text = args.pidfile.read_text().strip()
        if text:
            kill(int(text))
    with open(args.log, "ab") as log:
        proc = subprocess.Popen(
            args.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    args.pidfile.write_text(f"{proc.pid}\n")


if __name__ == "__main__":
    main()
