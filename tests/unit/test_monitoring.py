"""llmctl.monitoring without Prometheus: the escapers against the real parsers (PyYAML, json, the
promql-parser package), and what render() puts in the files for a given config.

promtool and a real Prometheus check the same files in tests/integration/test_monitoring_*.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from llmctl.config import load_config
from llmctl.errors import UsageError
from llmctl.monitoring import escape
from llmctl.monitoring.render import DASHBOARD_FILE, RULES_FILE, SCRAPE_FILE
from tests._monitoring import (
    HOSTILE,
    ISSUE_ALERTS,
    REPO,
    TEST_CONFIG,
    grafana_exprs,
    hostile_strings,
    rendered,
    substituted,
)

EXAMPLE = REPO / "config.example.yaml"
SNAPSHOTS = REPO / "tests" / "snapshots" / "monitoring" / "example"


# -- escapers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", hostile_strings())
def test_yaml_value_reads_back_as_the_same_string(value):
    node = escape.yaml_value(value)
    assert "\n" not in node
    assert yaml.safe_load(f"k: {node}\nafter: 1\n") == {"k": value, "after": 1}
    # in a multi-line expression, a block scalar nested the way the rules' expressions are
    expr = "sum by (job) (\n  up{job=" + escape.promql_str(value) + "}\n) > 0"
    doc = "rules:\n  - expr: " + escape.yaml_value(expr + "\n", block=6) + "    for: 5m\n"
    assert yaml.safe_load(doc) == {"rules": [{"expr": expr, "for": "5m"}]}


def test_yaml_block_only_when_it_reads_back():
    assert escape.yaml_value("a\n  b\n", block=4) == "|-\n    a\n      b\n"
    assert escape.yaml_value("a\n\u2028b", block=4) == '"a\\n\\Lb"'  # a YAML line break in it: quoted instead
    assert escape.yaml_value("one line", block=4) == '"one line"'
    assert escape.yaml_value(5.0) == "5.0" and escape.yaml_value(True) == "true"
    with pytest.raises(TypeError):
        escape.yaml_value({"a": 1})


@pytest.mark.parametrize("value", hostile_strings())
def test_promql_string_is_read_back_by_a_promql_parser(value):
    promql = pytest.importorskip("promql_parser", reason="needs llmctl[test]")
    quoted = escape.promql_str(value)
    assert all(escape._yaml_printable(c) for c in quoted)  # safe raw inside a YAML block too
    expr = promql.parse(f"up{{job={quoted}}}")
    (matcher,) = [m for m in expr.matchers.matchers if m.name == "job"]
    assert matcher.value == value


def test_promql_alternatives_match_exactly_the_names():
    import re

    pattern = json.loads(escape.promql_alternatives(["upstream:a.b", "upstream:c-d"]))
    assert re.fullmatch(pattern, "upstream:a.b") and re.fullmatch(pattern, "upstream:c-d")
    assert not re.fullmatch(pattern, "upstream:aXb") and not re.fullmatch(pattern, "upstream:a.bc")


def test_go_template_text_leaves_no_action_from_the_config():
    for value in hostile_strings():
        out = escape.gotmpl_text(value)
        assert out.replace('{{ "{" }}', "") == value.replace("{", "")


def test_bad_text_and_numbers_are_usage_errors():
    with pytest.raises(UsageError, match="lone surrogate"):
        escape.promql_str("\ud800")
    with pytest.raises(UsageError):
        escape.promql_number(float("nan"))
    assert escape.promql_number(0.1) == "0.1" and escape.promql_number(600) == "600"


# -- render ----------------------------------------------------------------------------------------------


def test_every_alert_the_issue_asks_for_with_annotations_and_a_runbook():
    result = rendered(TEST_CONFIG)
    assert set(result.alerts) == ISSUE_ALERTS and len(result.alerts) == len(ISSUE_ALERTS)
    doc = yaml.safe_load(result.get(RULES_FILE).content)
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    for rule in alerts:
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert "llmctl " in rule["annotations"]["runbook"], rule["alert"]  # names the llmctl command to run
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["labels"]["team"] == "ml-ops"
        assert rule["for"] == "5m"
    records = [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]
    assert "llamacpp:tokens_predicted_total" in records and "service:llmctl_requests:rate5m" in records


def test_thresholds_come_from_the_config(write_config):
    path = write_config(
        TEST_CONFIG.read_text().replace(
            "monitoring:\n",
            "monitoring:\n  ttft_p95_s: 2.5\n  min_generation_tps: 12\n  max_cloud_fallback_percent: 25\n"
            "  alert_for: 90s\n  health_stale_after: 1h\n  rate_window: 2m\n  job: 'llm \"prod\"'\n",
        )
    )
    rules = rendered(path).get(RULES_FILE).content
    doc = yaml.safe_load(rules)
    exprs = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert exprs["LlmctlSlowFirstToken"].endswith("> 2.5")
    assert exprs["LlmctlGenerationSlow"].endswith("< 12.0")
    assert exprs["LlmctlCloudFallbackHigh"].rstrip().endswith("> 0.25")
    assert "> 3600" in exprs["LlmctlHealthCheckStale"]
    assert 'up{job="llm \\"prod\\""} == 0' == exprs["LlmctlServiceDown"]
    assert "[2m]" in rules and "[5m]" not in rules and "service:llmctl_requests:rate2m" in rules
    assert {r.get("for") for g in doc["groups"] for r in g["rules"] if "alert" in r} == {"90s"}


def test_queue_alert_uses_each_services_queue_length():
    expr = next(
        r["expr"]
        for g in yaml.safe_load(rendered(TEST_CONFIG).get(RULES_FILE).content)["groups"]
        for r in g["rules"]
        if r.get("alert") == "LlmctlQueueSaturated"
    )
    assert 'llmctl_requests_deferred{job="llmctl", service="chat"} >= 16' in expr
    assert 'llmctl_requests_deferred{job="llmctl", service="gpu"} >= 4' in expr


def test_no_health_textfile_no_health_job_or_alerts(write_config):
    text = TEST_CONFIG.read_text().replace(
        "  health_textfile: /var/lib/node_exporter/textfile_collector/llmctl.prom\n", "  health_textfile: null\n"
    )
    result = rendered(write_config(text))
    assert not {"LlmctlHealthCritical", "LlmctlRestartBudgetExhausted", "LlmctlHealthCheckStale"} & set(result.alerts)
    assert "llmctl_health_" not in result.get(RULES_FILE).content
    jobs = [j["job_name"] for j in yaml.safe_load(result.get(SCRAPE_FILE).content)["scrape_configs"]]
    assert jobs == ["llmctl/chat", "llmctl/gpu"]
    assert any("health_textfile" in n for n in result.notes)
    panels = {p["title"] for p in json.loads(result.get(DASHBOARD_FILE).content)["panels"]}
    assert "Health status" not in panels


def test_cloud_fallback_alert_only_for_cloud_upstreams_and_never_in_airgap(write_config):
    assert "LlmctlCloudFallbackHigh" in rendered(TEST_CONFIG).alerts
    only_lan = TEST_CONFIG.read_text().replace(
        '  openai: {base_url: "https://api.openai.com/v1", default_model: gpt-4o-mini}\n', ""
    )
    assert "LlmctlCloudFallbackHigh" not in rendered(write_config(only_lan)).alerts
    airgap = TEST_CONFIG.read_text() + "airgap: true\n"
    assert "LlmctlCloudFallbackHigh" not in rendered(write_config(airgap)).alerts
    rules = rendered(TEST_CONFIG).get(RULES_FILE).content
    assert 'route=~"upstream:openai"' in rules and "upstream:lan" not in rules  # a host of our own is no cloud


def test_scrape_targets_labels_and_credentials(write_config):
    text = """
services:
  keyed: {model: smoke, port: 8000, api_keys_file: /etc/llmctl/keys}
  public: {model: smoke, port: 8001, api_keys_file: /etc/llmctl/keys, public_metrics: true}
  open: {model: smoke, host: 0.0.0.0, port: 8002, unit: llm-open}
  six: {model: smoke, host: "::", port: 8003}
  named: {model: smoke, host: gpu-1.lan, port: 8004}
monitoring: {scrape_interval: 15s, credentials_file: "/etc/prometheus/keys/{service}.key"}
"""
    doc = yaml.safe_load(rendered(write_config(text)).get(SCRAPE_FILE).content)
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert list(jobs) == ["llmctl/keyed", "llmctl/public", "llmctl/open", "llmctl/six", "llmctl/named"]
    assert jobs["llmctl/keyed"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/keys/keyed.key",
    }
    assert all("authorization" not in jobs[j] for j in ("llmctl/public", "llmctl/open"))  # public or no keys
    targets = {n: j["static_configs"][0]["targets"] for n, j in jobs.items()}
    assert targets["llmctl/open"] == ["127.0.0.1:8002"] and targets["llmctl/six"] == ["[::1]:8003"]
    assert targets["llmctl/named"] == ["gpu-1.lan:8004"]
    assert jobs["llmctl/open"]["static_configs"][0]["labels"] == {"service": "open", "unit": "llm-open.service"}
    assert all(j["relabel_configs"] == [{"target_label": "job", "replacement": "llmctl"}] for j in jobs.values())
    assert all(j["scrape_interval"] == "15s" for j in jobs.values())
    text = text.replace("monitoring: {", "monitoring: {target_host: llm-1.example.com, ")
    doc = yaml.safe_load(rendered(write_config(text)).get(SCRAPE_FILE).content)
    assert {j["static_configs"][0]["targets"][0] for j in doc["scrape_configs"]} == {
        f"llm-1.example.com:{p}" for p in range(8000, 8005)
    }


def test_no_services_is_a_usage_error(write_config):
    with pytest.raises(UsageError, match="no service is configured"):
        rendered(write_config("version: 1\n"))


def test_same_config_same_bytes():
    a, b = rendered(TEST_CONFIG), rendered(TEST_CONFIG)
    assert [f.content for f in a.files] == [f.content for f in b.files]


def test_example_config_matches_the_snapshots():
    """config.example.yaml rendered: review changes to these files like code (UPDATE_SNAPSHOTS=1 rewrites)."""
    import os

    result = rendered(EXAMPLE)
    for f in result.files:
        snap = SNAPSHOTS / f.name
        if os.environ.get("UPDATE_SNAPSHOTS"):
            snap.parent.mkdir(parents=True, exist_ok=True)
            snap.write_text(f.content)
        assert f.content == snap.read_text(), f.name
    assert sorted(p.name for p in SNAPSHOTS.iterdir()) == sorted(f.name for f in result.files)


# -- the dashboard ---------------------------------------------------------------------------------------


def test_dashboard_shape_variables_and_panels():
    board = json.loads(rendered(TEST_CONFIG).get(DASHBOARD_FILE).content)
    assert board["schemaVersion"] == 42 and board["uid"] == "llmctl" and board["title"] == "llmctl"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["type"] == "query" and variables["service"]["multi"]
    assert variables["service"]["query"]["query"] == 'label_values(up{job="llmctl"}, service)'
    titles = [p["title"] for p in board["panels"]]
    for wanted in (
        "Health status",
        "Health check latency",
        "Restarts",
        "Requests by status",
        "Time to first token",
        "Request duration",
        "Tokens/s",
        "Queue wait",
        "Slots busy",
        "Routes and fallbacks",
        "Circuit state",
        "Cost in the time range",
    ):
        assert wanted in titles
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for p in board["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert 'service=~"$service"' in t["expr"], t["expr"]
            assert 'job="llmctl"' in t["expr"] or 'job="llmctl-health"' in t["expr"], t["expr"]


def test_dashboard_queries_parse():
    promql = pytest.importorskip("promql_parser", reason="needs llmctl[test]")
    board = json.loads(rendered(TEST_CONFIG).get(DASHBOARD_FILE).content)
    for expr in grafana_exprs(board):
        promql.parse(substituted(expr))


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_dashboard_title_and_job(write_config, title):
    data = yaml.safe_load(TEST_CONFIG.read_text())
    job = title if title.strip() and "$" not in title and "[[" not in title else "j"
    data["monitoring"].update(dashboard_title=title or "t", job=job)
    from llmctl.errors import ConfigError
    from llmctl.text import control_char

    if control_char(title) is not None:  # config validation refuses it before any escaper sees it
        with pytest.raises(ConfigError, match="monitoring.dashboard_title"):
            rendered(write_config(yaml.safe_dump(data)))
        return
    board = json.loads(rendered(write_config(yaml.safe_dump(data))).get(DASHBOARD_FILE).content)
    assert board["title"] == (title or "t")
    promql = pytest.importorskip("promql_parser", reason="needs llmctl[test]")
    for expr in grafana_exprs(board):
        jobs = []
        promql.walk(
            promql.parse(substituted(expr)),
            lambda n: (
                jobs.extend(m.value for m in n.matchers.matchers if m.name == "job")  # noqa: B023 - called now
                if isinstance(n, promql.VectorSelector)
                else None
            ),
        )
        assert set(jobs) <= {job, "llmctl-health"} and jobs, expr


def test_a_job_grafana_would_expand_is_refused(write_config):
    from llmctl.errors import ConfigError

    for job in ("llm$service", "${datasource}", "[[service]]"):
        with pytest.raises(ConfigError, match=r"monitoring.job: .*Grafana"):
            load_config(write_config(yaml.safe_dump({"monitoring": {"job": job}})))
