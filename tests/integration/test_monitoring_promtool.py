"""The rendered rules and scrape config against the real `promtool` (Debian's prometheus package):
`check rules`, `check config`, and `test rules` with the unit tests in
tests/monitoring/llmctl.rules.test.yml, which must hold a firing and a quiet case for every alert.
Hostile config values go through render -> promtool and must come out as they went in.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llmctl.config import load_config
from llmctl.monitoring.render import RULES_FILE, SCRAPE_FILE, render
from tests._monitoring import HOSTILE, ISSUE_ALERTS, TEST_CONFIG, cli_deployment, rendered

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
UNIT_TESTS = REPO / "tests" / "monitoring" / "llmctl.rules.test.yml"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def write(result, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for f in result.files:
        (where / f.name).write_text(f.content, encoding="utf-8")


def with_key_files(config: Path, tmp_path: Path, write_config) -> Path:
    """The config with monitoring.credentials_file in tmp_path, and a key file there per service."""
    data = yaml.safe_load(config.read_text())
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    data.setdefault("monitoring", {})["credentials_file"] = str(keys / "{service}.key")
    for name in data["services"]:
        (keys / f"{name}.key").write_text("sk-test\n")
    return write_config(yaml.safe_dump(data))


@pytest.mark.parametrize("config", [EXAMPLE, TEST_CONFIG], ids=["example", "test-config"])
def test_check_rules_and_config_pass(config, tmp_path: Path, write_config):
    result = rendered(with_key_files(config, tmp_path, write_config))
    write(result, tmp_path / "out")
    proc = promtool("check", "rules", RULES_FILE, cwd=tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = promtool("check", "config", SCRAPE_FILE, cwd=tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_config_fails_without_the_key_file(tmp_path: Path, write_config):
    result = rendered(with_key_files(TEST_CONFIG, tmp_path, write_config))
    write(result, tmp_path / "out")
    assert promtool("check", "config", SCRAPE_FILE, cwd=tmp_path / "out").returncode == 0
    (tmp_path / "keys" / "chat.key").unlink()  # the one keyed service's: Prometheus must read it
    proc = promtool("check", "config", SCRAPE_FILE, cwd=tmp_path / "out")
    assert proc.returncode != 0 and "chat.key" in proc.stdout + proc.stderr


def test_unit_tests_fire_and_stay_quiet_for_every_alert(tmp_path: Path):
    result = rendered(TEST_CONFIG)
    assert set(result.alerts) == ISSUE_ALERTS
    write(result, tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / "unit.test.yml")
    proc = promtool("test", "rules", "unit.test.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    fired, quiet = set(), set()
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(result.alerts) <= fired, f"no test where these fire: {set(result.alerts) - fired}"
    assert set(result.alerts) <= quiet, f"no test where these stay quiet: {set(result.alerts) - quiet}"


def test_unit_tests_can_fail(tmp_path: Path):
    """The same tests against rules with one threshold moved: promtool must say so."""
    rules = rendered(TEST_CONFIG).get(RULES_FILE).content
    moved = rules.replace(">= 4\n", ">= 5\n")
    assert moved != rules
    (tmp_path / RULES_FILE).write_text(moved)
    shutil.copy(UNIT_TESTS, tmp_path / "unit.test.yml")
    proc = promtool("test", "rules", "unit.test.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "LlmctlQueueSaturated" in proc.stdout + proc.stderr


def _hostile_cases(n: int = 12, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    alphabet = "".join(sorted(set("".join(HOSTILE))))
    extra = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(n)]
    return [v for v in HOSTILE + extra if v.strip()]


@pytest.mark.parametrize("value", _hostile_cases())
def test_hostile_values_reach_prometheus_unchanged(value, tmp_path: Path, write_config):
    """A hostile job name, alert label value and config path: rendered, checked by promtool, and an
    alert fired by promtool carries them exactly (exp_labels and exp_annotations are written by
    yaml.safe_dump here, not by llmctl's escapers)."""
    from llmctl.monitoring.escape import promql_str

    job = value if "$" not in value and "[[" not in value else "llm job"  # Grafana would expand those
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["monitoring"].update(job=job, alert_labels={"team": value})
    path = write_config(yaml.safe_dump(data, allow_unicode=True))
    from llmctl.errors import ConfigError
    from llmctl.text import control_char

    if control_char(value) is not None:  # refused by config validation, before any escaper sees it
        with pytest.raises(ConfigError, match="monitoring.job|monitoring.alert_labels"):
            load_config(path)
        return
    loaded = load_config(path)
    config_path = "/etc/llm ctl/" + value.replace("\0", "")
    from llmctl.monitoring.render import runbook_llmctl

    result = render(loaded.config, cli_deployment(loaded, llmctl=runbook_llmctl(config_path)))
    write(result, tmp_path)
    proc = promtool("check", "rules", RULES_FILE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    series = "up{job=" + promql_str(job) + ', instance="127.0.0.1:8000", service="chat", unit="llmctl-chat.service"}'
    runbook = (
        f"{runbook_llmctl(config_path)} health chat (probes it, restarts it under the health policy); "
        "systemctl status llmctl-chat.service; journalctl -u llmctl-chat.service -n 100"
    )
    test = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": "0x10"}],
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "LlmctlServiceDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "team": value,
                                    "job": job,
                                    "instance": "127.0.0.1:8000",
                                    "service": "chat",
                                    "unit": "llmctl-chat.service",
                                },
                                "exp_annotations": {
                                    "summary": "llmctl service chat is down",
                                    "description": "Prometheus cannot scrape /metrics of chat on 127.0.0.1:8000: the server is "
                                    "stopped, crashed, still starting or unreachable (llmctl-chat.service).",
                                    "runbook": runbook,
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test, allow_unicode=True), encoding="utf-8")
    proc = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
