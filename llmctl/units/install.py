"""Install and uninstall rendered units: atomic writes, then systemctl (which the caller can replace).

`root` writes under a directory instead of / (image builds, tests): there systemctl and
systemd-sysusers run only in their offline `--root=` form, never daemon-reload or --now.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import OperationFailed, UsageError
from llmctl.fsutil import atomic_write_text, fsync_dir
from llmctl.units.render import MARKER, POLKIT_DIR, SYSTEM_UNIT_DIR, SYSUSERS_DIR, RenderResult

Runner = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class InstallResult:
    written: tuple[str, ...]  # files written (changed or new)
    unchanged: tuple[str, ...]  # files already holding the same bytes
    removed: tuple[str, ...]  # llmctl's files no longer rendered (install) or all of them (uninstall)
    commands: tuple[tuple[str, ...], ...]  # what was run, in order (or would be, with a null runner)


def run_command(argv: Sequence[str]) -> None:
    """The default runner: run, and turn a failure into one line naming the command."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise OperationFailed(f"{argv[0]} not found", hint="is systemd installed? or pass --no-systemctl") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"`{' '.join(argv)}` did not finish in 120 s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OperationFailed(
            f"`{' '.join(argv)}` failed (exit {proc.returncode})" + (f": {detail[-1]}" if detail else "")
        )


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base and os.path.isabs(base) else Path.home() / ".config") / "systemd" / "user"


def _target(relpath: str, root: Path | None, user: bool) -> Path:
    if user:
        base = user_unit_dir()
        return (root / base.relative_to("/") if root else base) / relpath
    return (root or Path("/")) / relpath


def _is_ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return MARKER in fh.read(400)
    except OSError:
        return False


def find_installed(root: Path | None, user: bool) -> list[Path]:
    """Every file llmctl rendered that is installed (found by the header it writes)."""
    if user:
        dirs = [_target("", root, True)]
    else:
        base = root or Path("/")
        dirs = [base / SYSTEM_UNIT_DIR, base / POLKIT_DIR, base / SYSUSERS_DIR]
    found = []
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        found += [p for p in entries if p.is_file() and not p.is_symlink() and _is_ours(p)]
    return found


def _enableable(path: Path) -> bool:
    try:
        return "\n[Install]\n" in path.read_text(encoding="utf-8")
    except OSError:
        return False


def _systemctl(systemctl: str, root: Path | None, user: bool) -> list[str]:
    argv = [systemctl]
    if user:
        argv.append("--user")
    if root is not None:
        argv.append(f"--root={root}")
    return argv


def install(
    rendered: RenderResult,
    *,
    root: Path | None = None,
    user: bool = False,
    enable: bool = False,
    now: bool = False,
    run: Runner | None = run_command,
    systemctl: str = "systemctl",
    sysusers: str = "systemd-sysusers",
    dry_run: bool = False,
) -> InstallResult:
    """Write every rendered file atomically, remove llmctl's stale ones, then reload and enable.

    run=None runs nothing (the commands are still listed in the result). dry_run: also write,
    remove and create nothing; the result lists what would be written and removed.
    """
    if dry_run:
        run = None
    if now and root is not None:
        raise UsageError("--now cannot be used with --root (nothing can be started in another root)")
    if now and not enable:
        raise UsageError("--now needs --enable")
    written: list[str] = []
    unchanged: list[str] = []
    targets = {}
    for f in rendered.files:
        targets[_target(f.relpath, root, user)] = f
    # Stale: our files from an earlier install that this config no longer renders.
    stale = [p for p in find_installed(root, user) if p not in targets]
    commands: list[tuple[str, ...]] = []
    sctl = _systemctl(systemctl, root, user)
    stale_units = [p.name for p in stale if p.suffix in (".service", ".timer") and _enableable(p)]
    if stale_units:
        disable = [*sctl, "disable", *(["--now"] if root is None else []), *stale_units]
        commands.append(tuple(disable))
        _run_all(commands, run)  # before their files go
    pre = len(commands)
    for path, f in targets.items():
        try:
            same = path.read_text(encoding="utf-8") == f.content
        except (OSError, UnicodeDecodeError):
            same = False
        if same:
            unchanged.append(str(path))
            continue
        if dry_run:
            written.append(str(path))
            continue
        try:
            atomic_write_text(path, f.content, 0o644)
        except OSError as exc:
            raise OperationFailed(
                f"cannot write {path}: {exc.strerror or exc}", hint="run as root, or use --root DIR or --user"
            ) from None
        written.append(str(path))
    removed = [str(p) for p in stale if p.exists()] if dry_run else _remove(stale)
    for d in [] if dry_run else rendered.directories:  # ReadWritePaths= of a missing directory would be ignored
        target = root / Path(d).relative_to("/") if root is not None else Path(d)
        try:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create {target}: {exc.strerror or exc}") from None
    if any(f.kind == "sysusers" for f in rendered.files):
        commands.append((sysusers, *([f"--root={root}"] if root is not None else [])))
    if root is None:
        commands.append(tuple([*sctl, "daemon-reload"]))
    if enable:
        units = [f.name for f in rendered.files if f.kind in ("service", "timer") and "\n[Install]\n" in f.content]
        commands.append(tuple([*sctl, "enable", *(["--now"] if now else []), *units]))
    _run_all(commands[pre:], run)
    return InstallResult(tuple(written), tuple(unchanged), tuple(removed), tuple(commands))


def uninstall(
    *,
    root: Path | None = None,
    user: bool = False,
    run: Runner | None = run_command,
    systemctl: str = "systemctl",
) -> InstallResult:
    """Disable (and stop, unless --root) llmctl's units, remove every file llmctl installed, reload.

    The health user created by sysusers.d stays (systemd never deletes users; `userdel` does).
    """
    ours = find_installed(root, user)
    sctl = _systemctl(systemctl, root, user)
    commands: list[tuple[str, ...]] = []
    units = [p.name for p in ours if p.suffix in (".service", ".timer") and _enableable(p)]
    if units:
        commands.append(tuple([*sctl, "disable", *(["--now"] if root is None else []), *units]))
    if root is None and any(p.name == "llmctl-health.service" for p in ours):
        commands.append(tuple([*sctl, "stop", "llmctl-health.service"]))
    _run_all(commands, run)
    removed = _remove(ours)
    post: list[tuple[str, ...]] = []
    if root is None and removed:
        post.append(tuple([*sctl, "daemon-reload"]))
    _run_all(post, run)
    return InstallResult((), (), tuple(removed), tuple(commands + post))


def _remove(paths: list[Path]) -> list[str]:
    removed = []
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OperationFailed(f"cannot remove {p}: {exc.strerror or exc}") from None
        fsync_dir(p.parent)
        removed.append(str(p))
    return removed


def _run_all(commands: list[tuple[str, ...]], run: Runner | None) -> None:
    if run is None:
        return
    for argv in commands:
        run(argv)
