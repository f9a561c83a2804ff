"""The rendered units against the real `systemd-analyze`: verify with no warnings, and the exposure
scores of `security --offline=true` that the issue asks for.

Rendered with this venv's real `llmctl` (verify checks that ExecStart's binary exists).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.config import check_file, validate
from llmctl.units.render import RenderOptions, render
from llmctl.units.verify import security_score, verify_units

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
FLEET = REPO / "tests" / "snapshots" / "units" / "fleet.yaml"
LLMCTL = str(Path(sys.executable).parent / "llmctl")

CPU_MAX, GPU_MAX, HEALTH_MAX = 1.0, 1.3, 1.5


def _write(config, tmp_path: Path, user: bool = False) -> list[Path]:
    result = render(config, RenderOptions(llmctl=LLMCTL, config_path="/etc/llmctl/config.yaml", user=user))
    out = []
    for f in result.files:
        p = tmp_path / f.name
        p.write_text(f.content)
        out.append(p)
    return out


def _analyze_verify(files: list[Path]) -> subprocess.CompletedProcess:
    units = [str(p) for p in files if p.suffix in (".service", ".timer")]
    return subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        env={"SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("config_file", [EXAMPLE, FLEET], ids=["example", "fleet"])
def test_every_rendered_unit_passes_verify_without_warnings(config_file: Path, tmp_path: Path):
    assert Path(LLMCTL).is_file()
    files = _write(check_file(config_file), tmp_path)
    proc = _analyze_verify(files)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_user_units_pass_verify_without_warnings(tmp_path: Path):
    files = _write(check_file(EXAMPLE), tmp_path, user=True)
    proc = _analyze_verify(files)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", "")


def test_exposure_scores(tmp_path: Path):
    config = validate(
        {
            "services": {
                "chat": {"model": "smoke"},
                "gpu": {"model": "smoke", "port": 8001, "n_gpu_layers": -1},
            }
        }
    )
    files = {p.name: p for p in _write(config, tmp_path)}
    cpu, cpu_rating = security_score(files["llmctl-chat.service"])
    gpu, _ = security_score(files["llmctl-gpu.service"])
    health, _ = security_score(files["llmctl-health.service"])
    print(f"exposure: cpu server {cpu}, gpu server {gpu}, health {health}")
    assert cpu <= CPU_MAX and cpu_rating == "SAFE"
    assert gpu <= GPU_MAX
    assert health <= HEALTH_MAX


def test_example_config_scores(tmp_path: Path):
    files = _write(check_file(EXAMPLE), tmp_path)
    result = verify_units(files, max_exposure=CPU_MAX)
    assert result.ok, result
    scores = {u.unit: u.exposure for u in result.units}
    assert scores["llmctl-chat.service"] <= CPU_MAX
    assert scores["llmctl-health.service"] <= HEALTH_MAX
    assert scores["llmctl-health.timer"] is None


def test_verify_reports_warnings_of_a_broken_unit(tmp_path: Path):
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/nonexistent/binary\nProtectSystem=sideways\n")
    result = verify_units([bad])
    assert not result.ok
    assert result.units[0].warnings


def test_quoted_paths_pass_verify(tmp_path: Path):
    config = validate(
        {"models": {"odd": {"path": "/srv/my models/100% odd.gguf"}}, "services": {"chat": {"model": "odd"}}}
    )
    result = render(config, RenderOptions(llmctl=LLMCTL, config_path="/etc/llm ctl/config $x.yaml"))
    chat = result.get("llmctl-chat.service").content
    assert '"/etc/llm ctl/config $$x.yaml"' in chat and '"/var/lib/llmctl/models/odd/100%% odd.gguf"' in chat
    files = []
    for f in result.files:
        (tmp_path / f.name).write_text(f.content)
        files.append(tmp_path / f.name)
    proc = _analyze_verify(files)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", "")
