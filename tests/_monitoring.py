"""Shared by the monitoring tests: the test config, hostile strings, rendering with the CLI's wiring,
the dashboard's queries."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from llmctl.config import load_config
from llmctl.monitoring.render import render

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "tests" / "monitoring" / "config.yaml"

HOSTILE = [
    'a"b\\c',
    "new\nline\ttab\r",
    '{{ $labels.job }} {{ printf "%s" 1 }}',
    "x }} {{ y",
    "{",
    "}}",
    "ü ∑ 😀 \u2028 \u2029 \x85 \x7f \x01 \ufeff",
    "#comment: yes",
    "- item",
    "&anchor *alias !!python/object",
    "'single'",
    "null",
    "~",
    "yes",
    "${datasource} $service",
    "[[ x ]] [% y %] [# z #]",
    "\\u0041 \\n",
    " leading and trailing ",
    "",
    "---\n...\n",
    "%YAML 1.2",
    "a: {b: [c]}",
]


def hostile_strings(n: int = 40, seed: int = 17) -> list[str]:
    """The fixed nasty ones, and random mixes of their characters."""
    rng = random.Random(seed)
    alphabet = "".join(sorted(set("".join(HOSTILE)))) + "abc xyz"
    return HOSTILE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def cli_deployment(loaded, llmctl: str = "llmctl"):
    from llmctl.cli.monitoring import deployment

    return dataclasses.replace(deployment(loaded), llmctl=llmctl)


def rendered(path: Path, **replace):
    loaded = load_config(path)
    return render(loaded.config, cli_deployment(loaded, **replace))


ISSUE_ALERTS = {
    "LlmctlServiceDown",
    "LlmctlHealthCritical",  # service down or health CRITICAL
    "LlmctlRestartBudgetExhausted",
    "LlmctlHealthCheckStale",
    "LlmctlQueueSaturated",
    "LlmctlSlowFirstToken",
    "LlmctlGenerationSlow",
    "LlmctlUpstreamCircuitOpen",
    "LlmctlCloudFallbackHigh",
    "LlmctlUsageLedgerDropping",
    "LlmctlGpuOffloadLost",
}


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$service": ".*", "${datasource}": "x"}


def grafana_exprs(board: dict) -> list[str]:
    """Every PromQL query of a dashboard: its panels' and its query variables'."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def substituted(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for a PromQL parser."""
    if expr.startswith("label_values("):
        expr = expr[len("label_values(") :].rsplit(",", 1)[0]
    for k, v in GRAFANA_VARIABLES.items():
        expr = expr.replace(k, v)
    return expr
