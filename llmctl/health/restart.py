"""The restart action: a command from `health.restart_command` (default `systemctl restart {unit}`).

`{unit}` and `{service}` are replaced in every argument (plain text substitution: other braces stay
as they are). The command runs without a shell, with stdin closed, its output in a temp file (not
a pipe: a restart that leaves a server running in the background must not keep us waiting for EOF),
and a time limit.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Sequence

from llmctl.health.probes import Target
from llmctl.health.run import RestartOutcome, Restarter

DEFAULT_COMMAND = ("systemctl", "restart", "{unit}")


def render(template: Sequence[str], target: Target) -> list[str]:
    unit = target.unit or ""
    return [part.replace("{unit}", unit).replace("{service}", target.name) for part in template]


def command_restarter(template: Sequence[str] | None, timeout_s: float) -> Restarter:
    template = tuple(template) if template else DEFAULT_COMMAND

    def restart(target: Target) -> RestartOutcome:
        argv = render(template, target)
        shown = shlex.join(argv)
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=True
                )
            except OSError as exc:
                return RestartOutcome(False, f"{argv[0]}: {exc.strerror or exc}", shown)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return RestartOutcome(False, f"{argv[0]} timed out after {timeout_s:g}s", shown)
            out.seek(0)
            tail = _last_line(out.read()[-4096:])
        if rc != 0:
            return RestartOutcome(False, f"{argv[0]} exited {rc}" + (f": {tail}" if tail else ""), shown)
        return RestartOutcome(True, f"{argv[0]} exited 0", shown)

    return restart


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""
