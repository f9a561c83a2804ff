"""`llmctl systemd ...` wiring: output shapes, exit codes, install/uninstall under --root and --user.

systemd is not PID 1 on the test machines, so nothing can be started: `install --root` runs the real
`systemctl --root=` and `systemd-sysusers --root=` (both work offline); without --root the systemctl
runs are recorded by a stand-in script passed with --systemctl (the one fake here, and why).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
FLEET = REPO / "tests" / "snapshots" / "units" / "fleet.yaml"
FIXED = ["--llmctl", "/opt/llmctl/bin/llmctl", "--config-path", "/etc/llmctl/config.yaml"]
needs_systemctl = pytest.mark.skipif(
    shutil.which("systemctl") is None or shutil.which("systemd-sysusers") is None,
    reason="needs systemctl and systemd-sysusers",
)


def test_render_to_stdout_matches_the_snapshots(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "systemd", "render", *FIXED)
    assert proc.returncode == 0, proc.stderr
    parts = proc.stdout.split("==> ")
    names = [p.split(" <==\n", 1)[0] for p in parts[1:]]
    assert names == [
        "llmctl-chat.service",
        "llmctl-health.service",
        "llmctl-health.timer",
        "50-llmctl-health.rules",
        "llmctl.conf",
    ]
    snap = REPO / "tests" / "snapshots" / "units" / "example"
    for part in parts[1:]:
        name, body = part.split(" <==\n", 1)
        assert body.rstrip("\n") == (snap / name).read_text().rstrip("\n")


def test_render_output_dir_and_json(llmctl, tmp_path: Path):
    out = tmp_path / "units"
    proc = llmctl("--config", str(FLEET), "systemd", "render", "gpu", "--output-dir", str(out), *FIXED)
    assert proc.returncode == 0, proc.stderr
    written = proc.stdout.split()
    assert str(out / "llmctl-gpu.service") in written
    assert (out / "llmctl-gpu.service").read_text() == (
        REPO / "tests" / "snapshots" / "units" / "fleet" / "llmctl-gpu.service"
    ).read_text()
    assert not (out / "llmctl-chat.service").exists()
    proc = llmctl("--config", str(FLEET), "systemd", "render", "--json", *FIXED)
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "systemd.render" and doc["schema_version"] == 1
    kinds = {f["name"]: (f["kind"], f["install_path"]) for f in doc["files"]}
    assert kinds["llmctl-chat.service"] == ("service", "etc/systemd/system/llmctl-chat.service")
    assert kinds["50-llmctl-health.rules"] == ("polkit", "etc/polkit-1/rules.d/50-llmctl-health.rules")


def test_render_default_paths_are_this_installation_and_the_config_in_use(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "systemd", "render", "chat")
    assert proc.returncode == 0, proc.stderr
    exec_start = next(line for line in proc.stdout.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[0] == str(Path(sys.executable).parent / "llmctl")
    assert argv[1:4] == ["--system", "--config", str(EXAMPLE)]


def test_render_unknown_service_exits_2(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "systemd", "render", "nope", *FIXED)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: no service 'nope' in the config")
    assert proc.stdout == ""


@needs_systemctl
def test_install_under_root_enables_offline_and_uninstall_cleans_up(llmctl, tmp_path: Path):
    root = tmp_path / "root"
    proc = llmctl("--config", str(FLEET), "systemd", "install", "--root", str(root), "--enable", "--json", *FIXED)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["commands"] == [
        ["systemd-sysusers", f"--root={root}"],
        [
            "systemctl",
            f"--root={root}",
            "enable",
            "llmctl-chat.service",
            "llmctl-gpu.service",
            "llm-public.service",
            "llmctl-health.timer",
        ],
    ]  # no daemon-reload, no --now: nothing runs in another root
    unit_dir = root / "etc/systemd/system"
    assert (unit_dir / "llmctl-gpu.service").read_text() == (
        REPO / "tests/snapshots/units/fleet/llmctl-gpu.service"
    ).read_text()
    assert stat.S_IMODE((unit_dir / "llmctl-gpu.service").stat().st_mode) == 0o644
    assert (unit_dir / "multi-user.target.wants/llmctl-chat.service").is_symlink()
    assert (unit_dir / "timers.target.wants/llmctl-health.timer").is_symlink()
    assert (root / "etc/polkit-1/rules.d/50-llmctl-health.rules").is_file()
    assert "llmctl-health:" in (root / "etc/passwd").read_text()
    assert not list(unit_dir.glob(".*.tmp"))

    again = json.loads(
        llmctl("--config", str(FLEET), "systemd", "install", "--root", str(root), "--json", *FIXED).stdout
    )
    assert again["written"] == [] and len(again["unchanged"]) == 7

    # A service dropped from the config: its unit is disabled and removed on the next install.
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text("services:\n  chat:\n    model: smoke\n")
    doc = json.loads(
        llmctl("--config", str(smaller), "systemd", "install", "--root", str(root), "--json", *FIXED).stdout
    )
    assert sorted(Path(p).name for p in doc["removed"]) == ["llm-public.service", "llmctl-gpu.service"]
    assert doc["commands"][0] == ["systemctl", f"--root={root}", "disable", "llm-public.service", "llmctl-gpu.service"]
    assert not (unit_dir / "multi-user.target.wants/llmctl-gpu.service").exists()

    mine = unit_dir / "not-llmctl.service"
    mine.write_text("[Service]\nExecStart=/bin/true\n")
    proc = llmctl("systemd", "uninstall", "--root", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["commands"] == [["systemctl", f"--root={root}", "disable", "llmctl-chat.service", "llmctl-health.timer"]]
    assert not (unit_dir / "llmctl-chat.service").exists()
    assert not (unit_dir / "timers.target.wants/llmctl-health.timer").exists()
    assert not (root / "etc/polkit-1/rules.d/50-llmctl-health.rules").exists()
    assert not (root / "etc/sysusers.d/llmctl.conf").exists()
    assert mine.exists()  # only files llmctl rendered are removed


def _recording_systemctl(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for systemctl (systemd is not PID 1 here): appends its argv to a log."""
    log = tmp_path / "systemctl.log"
    script = tmp_path / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(0o755)
    return script, log


def test_user_install_runs_daemon_reload_and_enable_now(llmctl, tmp_path: Path):
    script, log = _recording_systemctl(tmp_path)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = llmctl(
        "--config",
        str(EXAMPLE),
        "systemd",
        "install",
        "--user",
        "--enable",
        "--now",
        "--systemctl",
        str(script),
        *FIXED,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now llmctl-chat.service llmctl-health.timer",
    ]
    unit_dir = tmp_path / "xdg/systemd/user"
    assert sorted(p.name for p in unit_dir.iterdir()) == [
        "llmctl-chat.service",
        "llmctl-health.service",
        "llmctl-health.timer",
    ]
    assert "Ran: " in proc.stderr
    state = Path(os.environ["LLMCTL_HOME"]) / "state"  # ReadWritePaths= of both units: install made it
    assert state.is_dir() and f"ReadWritePaths=-{state}" in (unit_dir / "llmctl-chat.service").read_text()

    log.unlink()
    proc = llmctl("systemd", "uninstall", "--user", "--systemctl", str(script), env=env)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "--user disable --now llmctl-chat.service llmctl-health.timer",
        "--user stop llmctl-health.service",
        "--user daemon-reload",
    ]
    assert list(unit_dir.iterdir()) == []


def test_no_systemctl_only_lists_the_commands(llmctl, tmp_path: Path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = llmctl(
        "--config", str(EXAMPLE), "systemd", "install", "--user", "--enable", "--no-systemctl", *FIXED, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "Would run: systemctl --user daemon-reload" in proc.stderr


def test_install_dry_run_writes_removes_and_runs_nothing(llmctl, tmp_path: Path):
    script, log = _recording_systemctl(tmp_path)
    root = tmp_path / "root"
    args = [
        "--config",
        str(FLEET),
        "systemd",
        "install",
        "--root",
        str(root),
        "--enable",
        "--json",
        "--systemctl",
        str(script),
        *FIXED,
    ]
    proc = llmctl(*args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] is True and doc["commands_run"] is False
    assert len(doc["written"]) == 7 and doc["unchanged"] == [] and doc["removed"] == []
    assert doc["commands"][-1][:3] == [str(script), f"--root={root}", "enable"]
    assert not root.exists() and not log.exists()  # nothing written, nothing created, nothing run

    assert llmctl(*args).returncode == 0  # the real install
    log.unlink()
    unit_dir = root / "etc/systemd/system"
    gpu = unit_dir / "llmctl-gpu.service"
    gpu.write_text(gpu.read_text() + "# edited by hand\n")
    stale = unit_dir / "llmctl-old.service"
    stale.write_text((unit_dir / "llmctl-chat.service").read_text())
    before = {p: p.read_bytes() for p in unit_dir.iterdir() if p.is_file()}
    proc = llmctl(*args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["written"] == [str(gpu)] and doc["removed"] == [str(stale)] and len(doc["unchanged"]) == 6
    assert {p: p.read_bytes() for p in unit_dir.iterdir() if p.is_file()} == before
    assert not log.exists()

    proc = llmctl(*args[: -len(FIXED) - 3], "--dry-run", *FIXED)  # the table for people
    assert proc.returncode == 0, proc.stderr
    assert f"would be written  {gpu}" in proc.stdout and f"would be removed  {stale}" in proc.stdout


def test_failing_systemctl_exits_1_with_one_line(llmctl, tmp_path: Path):
    script = tmp_path / "systemctl"
    script.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    script.chmod(0o755)
    proc = llmctl(
        "--config",
        str(EXAMPLE),
        "systemd",
        "install",
        "--user",
        "--systemctl",
        str(script),
        *FIXED,
        env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[0].endswith("failed (exit 1): Failed to connect to bus")


def test_now_with_root_is_a_usage_error(llmctl, tmp_path: Path):
    proc = llmctl("--config", str(EXAMPLE), "systemd", "install", "--root", str(tmp_path), "--enable", "--now", *FIXED)
    assert proc.returncode == 2
    assert "--now cannot be used with --root" in proc.stderr
    assert not (tmp_path / "etc").exists()  # nothing half-written


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


@needs_analyze
def test_verify_rendered_config_passes_and_gate_fails_above_max(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "systemd", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert float(rows["llmctl-chat.service"][1]) <= 1.0
    proc = llmctl("--config", str(EXAMPLE), "systemd", "verify", "--max-exposure", "0.5")
    assert proc.returncode == 1
    assert "exposure above 0.5" in proc.stderr


@needs_analyze
def test_verify_files_json(llmctl, tmp_path: Path):
    out = tmp_path / "u"
    assert llmctl("--config", str(FLEET), "systemd", "render", "--output-dir", str(out)).returncode == 0
    files = sorted(str(p) for p in out.iterdir())
    proc = llmctl("systemd", "verify", *files, "--max-exposure", "1.0", "--json")
    assert proc.returncode == 1  # the GPU and the public server are above 1.0
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "systemd.verify" and doc["ok"] is False
    units = {u["unit"]: u for u in doc["units"]}
    assert "50-llmctl-health.rules" not in units
    assert units["llmctl-chat.service"]["ok"] and units["llmctl-chat.service"]["exposure"] <= 1.0
    assert not units["llmctl-gpu.service"]["ok"] and 1.0 < units["llmctl-gpu.service"]["exposure"] <= 1.3
    assert not units["llm-public.service"]["ok"]
    assert all(u["warnings"] == [] for u in doc["units"])
    assert units["llmctl-health.timer"]["exposure"] is None


@needs_analyze
def test_verify_missing_file_exits_2(llmctl, tmp_path: Path):
    proc = llmctl("systemd", "verify", str(tmp_path / "missing.service"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: unit file not found")


def test_help_does_not_import_jinja2():
    import subprocess

    code = (
        "import sys; from llmctl.cli.app import app\n"
        "try:\n    app(['systemd', 'install', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'jinja2' not in sys.modules and 'pydantic' not in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}
    )
    assert proc.returncode == 0, proc.stderr
