"""Check unit files with the real `systemd-analyze`: `verify` (no warnings) and
`security --offline=true` (the exposure score, 0.0 best .. 10.0 worst)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import NotFound, OperationFailed

DEFAULT_MAX_EXPOSURE = 1.5
_OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\S+)")
_ENV = {"SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class UnitReport:
    unit: str
    path: str
    exposure: float | None  # None for units security does not score (timers)
    rating: str | None  # SAFE, OK, MEDIUM, EXPOSED, UNSAFE
    warnings: tuple[str, ...]  # systemd-analyze verify lines about this unit

    def passes(self, max_exposure: float) -> bool:
        return not self.warnings and (self.exposure is None or self.exposure <= max_exposure)


@dataclass(frozen=True)
class VerifyResult:
    units: tuple[UnitReport, ...]
    max_exposure: float
    verify_output: str  # everything systemd-analyze verify printed

    @property
    def ok(self) -> bool:
        return all(u.passes(self.max_exposure) for u in self.units)


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        raise OperationFailed("systemd-analyze not found", hint="install systemd (Debian: apt-get install systemd)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **_ENV})
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"`{' '.join(argv)}` did not finish in 120 s") from None


def security_score(path: Path, analyze: str | None = None) -> tuple[float, str]:
    """The overall exposure and rating of one .service file, offline."""
    proc = _run([analyze or _analyze(), "security", "--offline=true", "--no-pager", str(path)])
    match = _OVERALL.search(proc.stdout + proc.stderr)
    if not match:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise OperationFailed(f"systemd-analyze security gave no score for {path}" + (f": {last[-1]}" if last else ""))
    return float(match.group(2)), match.group(3)


def verify_units(files: Sequence[Path], max_exposure: float = DEFAULT_MAX_EXPOSURE) -> VerifyResult:
    """Run `systemd-analyze verify` on all the unit files at once and `security --offline=true` on
    each service. Non-unit files (polkit rules, sysusers.d) are skipped."""
    analyze = _analyze()
    units = [Path(f).absolute() for f in files if Path(f).suffix in (".service", ".timer", ".socket", ".path")]
    for u in units:
        if not u.is_file():
            raise NotFound(f"unit file not found: {u}")
    if not units:
        raise NotFound("no unit files to verify")
    proc = _run([analyze, "verify", "--no-pager", *map(str, units)])
    output = (proc.stdout + proc.stderr).strip()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    reports = []
    for u in units:
        mine = tuple(ln for ln in lines if u.name in ln or str(u) in ln)
        if proc.returncode != 0 and not mine and lines:
            mine = tuple(lines)  # a failure we cannot attribute: count it against every unit
        if proc.returncode != 0 and not mine:
            mine = (f"systemd-analyze verify exited {proc.returncode}",)
        exposure = rating = None
        if u.suffix == ".service":
            exposure, rating = security_score(u, analyze)
        reports.append(UnitReport(u.name, str(u), exposure, rating, mine))
    return VerifyResult(tuple(reports), max_exposure, output)
