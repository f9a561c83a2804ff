"""llmctl.upstreams without a server: the circuit breaker (injected clock), backoff, config and
routing resolution, privacy rules, airgap from the environment."""

from __future__ import annotations

import pytest

from llmctl.config import load_config
from llmctl.errors import ConfigError
from llmctl.upstreams.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from llmctl.upstreams.config import routing_for
from llmctl.upstreams.router import Router, request_texts


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_n_failures_then_half_opens_after_cooldown():
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=30, clock=clock)
    assert b.state == CLOSED and b.allow()
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    clock.now += 29.9
    assert b.state == OPEN and not b.allow()
    assert b.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.state == HALF_OPEN
    assert b.allow()  # the one trial
    assert not b.allow()  # no second trial while it is in flight
    b.success()
    assert b.state == CLOSED and b.failures == 0 and b.allow()


def test_a_failed_trial_opens_again_for_a_full_cooldown():
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=10, clock=clock)
    b.failure()
    assert b.state == OPEN and b.opened == 1
    clock.now += 10
    assert b.allow()
    b.failure()
    assert b.state == OPEN and b.opened == 2
    clock.now += 9
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_a_success_resets_the_consecutive_count():
    b = CircuitBreaker(failures=2, cooldown_s=10, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state == CLOSED


def test_a_released_trial_lets_the_next_one_go():
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=1, clock=clock)
    b.failure()
    clock.now += 1
    assert b.allow() and not b.allow()
    b.release()
    assert b.allow()


UPSTREAMS = """
upstreams:
  lan:
    base_url: http://10.0.0.2:8000/v1/
    models: {smoke: big}
    cloud: false
  cloud:
    base_url: https://api.example.com/v1
    api_key_env: TEST_CLOUD_KEY
    default_model: gpt-x
    price_in_per_1k: 0.5
    price_out_per_1k: 1.5
"""


def test_strategies_per_service_and_cascade_order(write_config, monkeypatch):
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-cloud-secret")
    path = write_config(
        UPSTREAMS + "routing:\n  strategy: cloud\n  services: {chat: cascade, batch: none}\n  cascade: [cloud, lan]\n"
    )
    cfg = load_config(path).config
    assert cfg.upstreams["lan"].base_url == "http://10.0.0.2:8000/v1"
    assert [u.name for u in routing_for(cfg, "chat").upstreams] == ["cloud", "lan"]
    assert routing_for(cfg, "batch").upstreams == ()
    other = routing_for(cfg, "other")
    assert [u.name for u in other.upstreams] == ["cloud"] and other.strategy == "cloud"
    up = other.upstreams[0]
    assert up.api_key == "sk-cloud-secret" and "sk-cloud-secret" not in repr(other)
    assert up.remote_model("smoke") == "gpt-x" and up.route == "upstream:cloud"
    assert up.cost(1000, 2000) == pytest.approx(3.5)
    lan = routing_for(cfg, "chat").upstreams[1]
    assert lan.remote_model("nope", "smoke") == "big" and lan.remote_model("nope") is None


def test_missing_key_variable_names_the_key_path(write_config, monkeypatch):
    monkeypatch.delenv("TEST_CLOUD_KEY", raising=False)
    cfg = load_config(write_config(UPSTREAMS + "routing:\n  strategy: cascade\n")).config
    with pytest.raises(ConfigError, match=r"upstreams\.cloud\.api_key_env: .*TEST_CLOUD_KEY"):
        routing_for(cfg, None)


def test_key_file_first_line(write_config, tmp_path):
    key = tmp_path / "k"
    key.write_text("# comment\nsk-file\n")
    cfg = load_config(
        write_config(f"upstreams:\n  a:\n    base_url: http://h/v1\n    api_key_file: {key}\nrouting:\n  strategy: a\n")
    ).config
    assert routing_for(cfg, None).upstreams[0].api_key == "sk-file"


@pytest.mark.parametrize(
    "text, message",
    [
        ("routing:\n  strategy: nowhere\n", r"routing\.strategy: 'nowhere' is not none, cascade or an upstream"),
        ("routing:\n  services: {chat: nope}\n", r"routing\.services\.chat: 'nope'"),
        ("routing:\n  cascade: [x]\n", r"routing\.cascade: 'x' is not an upstream"),
        ("routing:\n  privacy_patterns: ['(']\n", r"routing\.privacy_patterns: .*not a regular expression"),
        ("upstreams:\n  a:\n    base_url: ftp://x\n", r"upstreams\.a\.base_url: must be an http"),
        ("upstreams:\n  a:\n    base_url: http://x\n    api_key_env: A\n    api_key_file: /b\n", "not both"),
        ("upstreams:\n  cascade:\n    base_url: http://x\n", "reserved"),
        ("upstreams:\n  a:\n    base_url: http://x\n    timout_s: 3\n", r"did you mean 'timeout_s'"),
    ],
)
def test_bad_routing_config(write_config, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(text))


def test_airgap_from_the_environment(write_config, monkeypatch):
    monkeypatch.setenv("TEST_CLOUD_KEY", "k")
    path = write_config(UPSTREAMS + "routing:\n  strategy: cascade\n")
    assert not routing_for(load_config(path).config, None).airgap
    monkeypatch.setenv("LLMCTL_AIRGAP", "1")
    loaded = load_config(path)
    assert loaded.config.airgap is True and loaded.source_of("airgap") == "env:LLMCTL_AIRGAP"
    routing = routing_for(loaded.config, None)
    assert routing.airgap and routing.upstreams == () and not routing.enabled


def test_privacy_header_and_patterns(write_config, monkeypatch):
    monkeypatch.setenv("TEST_CLOUD_KEY", "k")
    cfg = load_config(
        write_config(
            UPSTREAMS + "routing:\n  strategy: cascade\n"
            "  privacy_patterns: ['(?i)secret project', '\\b\\d{3}-\\d{2}-\\d{4}\\b']\n"
        )
    ).config
    router = Router(routing_for(cfg, None), served_model="smoke")
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "about the SECRET project"}]}]}
    assert router.private({}, chat)
    assert router.private({}, {"prompt": "ssn 123-45-6789"})
    assert not router.private({}, {"prompt": "hello"})
    assert router.private({"x-llmctl-private": "1"}, {"prompt": "hello"})
    assert not router.private({"x-llmctl-private": "0"}, {"prompt": "hello"})
    assert set(request_texts({"messages": [{"content": "a"}, {"content": None}], "prompt": ["b"]})) == {
        "messages",
        "content",
        "a",
        "prompt",
        "b",
    }


SECRET = "the Secret Project plan"


@pytest.mark.parametrize(
    "where, body",
    [
        ("message content", {"messages": [{"role": "user", "content": SECRET}]}),
        ("content as parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": SECRET}]}]}),
        ("a message's name", {"messages": [{"role": "user", "name": SECRET, "content": "hi"}]}),
        (
            "tool call arguments",
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": SECRET}}],
                    }
                ]
            },
        ),
        ("a tool result", {"messages": [{"role": "tool", "tool_call_id": "1", "content": SECRET}]}),
        (
            "tool definitions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f", "description": SECRET}}],
            },
        ),
        ("the prompt", {"prompt": SECRET}),
        ("the prompt as a list", {"prompt": ["x", SECRET]}),
        ("the suffix", {"prompt": "def f():", "suffix": SECRET}),
        ("a stop sequence", {"prompt": "x", "stop": [SECRET]}),
        ("a field the server does not know", {"prompt": "x", "metadata": {"note": SECRET}}),
        ("an object's key", {"prompt": "x", "metadata": {SECRET: 1}}),
    ],
)
def test_privacy_patterns_see_every_text_a_request_carries(write_config, monkeypatch, where, body):
    monkeypatch.setenv("TEST_CLOUD_KEY", "k")
    cfg = load_config(
        write_config(UPSTREAMS + "routing:\n  strategy: cascade\n  privacy_patterns: ['(?i)secret project']\n")
    ).config
    router = Router(routing_for(cfg, None), served_model="smoke")
    assert router.private({}, body), where
    assert not router.private({}, {"prompt": "nothing to hide"})


def test_token_id_prompts_count_as_private_when_patterns_are_set(write_config, monkeypatch):
    monkeypatch.setenv("TEST_CLOUD_KEY", "k")
    with_patterns = load_config(
        write_config(UPSTREAMS + "routing:\n  strategy: cascade\n  privacy_patterns: ['(?i)secret']\n")
    ).config
    assert Router(routing_for(with_patterns, None), served_model="smoke").private({}, {"prompt": [2, 100]})
    assert Router(routing_for(with_patterns, None), served_model="smoke").private({}, {"prompt": [[2, 100]]})
    without = load_config(write_config(UPSTREAMS + "routing:\n  strategy: cascade\n")).config
    assert not Router(routing_for(without, None), served_model="smoke").private({}, {"prompt": [2, 100]})


def test_backoff_is_exponential_with_full_jitter(write_config):
    cfg = load_config(write_config("routing:\n  backoff_initial_s: 0.5\n  backoff_max_s: 3\n")).config
    high = Router(routing_for(cfg, None), served_model="m", rng=lambda: 1.0)
    assert [high.backoff(n) for n in range(4)] == [0.5, 1.0, 2.0, 3.0]
    low = Router(routing_for(cfg, None), served_model="m", rng=lambda: 0.0)
    assert low.backoff(3) == 0.0


def test_router_metrics_count_cost_per_route_and_ledger_drops(write_config, monkeypatch):
    """What the monitoring alerts and the dashboard read: the cost of what each upstream served
    (from its prices; local is free) and the ledger's drops, as a counter read at each scrape."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.setenv("TEST_CLOUD_KEY", "k")
    cfg = load_config(write_config(UPSTREAMS + "routing:\n  strategy: cascade\n")).config
    drops = [0]
    rows: list[tuple] = []
    router = Router(routing_for(cfg, None), served_model="smoke", recorder=rows.append, dropped=lambda: drops[0])
    registry = CollectorRegistry(auto_describe=True)
    router.attach(registry)
    record = {"path": "/v1/chat/completions", "method": "POST", "status": 200}
    router.observe({**record, "route": "upstream:cloud", "prompt_tokens": 1000, "completion_tokens": 2000})
    router.observe({**record, "route": "local", "prompt_tokens": 1000, "completion_tokens": 2000})
    router.observe({**record, "route": "upstream:lan", "prompt_tokens": 10, "completion_tokens": 10})
    drops[0] = 7

    def samples() -> dict:
        text = generate_latest(registry).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    got = samples()
    assert got[("llmctl_route_cost_usd_total", (("route", "upstream:cloud"),))] == 0.5 + 3.0
    assert not any(
        name == "llmctl_route_cost_usd_total" and dict(labels)["route"] != "upstream:cloud" for name, labels in got
    )  # local and the free host of our own cost nothing
    assert got[("llmctl_usage_ledger_dropped_total", ())] == 7
    assert [row[-1] for row in rows] == [3.5, 0.0, 0.0]  # the ledger records the same cost
    drops[0] = 9
    assert samples()[("llmctl_usage_ledger_dropped_total", ())] == 9
