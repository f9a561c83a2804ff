"""Upstream fallback end to end: a real `python -m llmctl serve smoke` subprocess whose config lists
fake upstreams (real HTTP servers on 127.0.0.1: one fails with 500, one accepts and hangs, one
answers and streams SSE with usage), the real `openai` client, and `llmctl usage` on its ledger.

"Local model down" is a real condition, not a switch: `queue_length: 0`, and a long streaming
completion (EOS suppressed with logit_bias) occupies the model, so the next request gets the
engine's QueueFull, the failure serve falls back on.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fake_upstreams import COMPLETION_TOKENS, PROMPT_TOKENS, WORDS
from tests._store import link_smoke_store
from tests._serve import free_port, metric, poll, start_server, stop_server, wait_healthy

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEY = "sk-client-abcdef-123"
CLOUD_KEY = "sk-cloud-upstream-secret-42"
NO_EOS = {"1": -100, "106": -100}  # the smoke model's <eos> and <end_of_turn>
PRICE_IN, PRICE_OUT = 5.0, 15.0  # per 1K: 11 in + 7 out = $0.16 a request


def config(fakes: dict, port: int, keys: Path) -> str:
    return f"""version: 1
services:
  smoke:
    model: smoke
    port: {port}
    n_ctx: 1024
    parallel: 1  # one slot and no queue: one long stream makes the local engine full
    api_keys_file: {keys}
    shutdown_timeout_s: 3
    limits:
      max_tokens: 900
      queue_length: 0
      queue_timeout_s: 30
      rate_limit_rpm: 0
upstreams:
  broken:
    base_url: {fakes["fail"].url}
    default_model: m-broken
  hanging:
    base_url: {fakes["hang"].url}
    default_model: m-hanging
    timeout_s: 1
  cloud:
    base_url: {fakes["ok"].url}
    api_key_env: TEST_CLOUD_KEY
    models: {{smoke: gpt-fake}}
    price_in_per_1k: {PRICE_IN}
    price_out_per_1k: {PRICE_OUT}
routing:
  strategy: cascade
  retries: 0
  circuit: {{failures: 2, cooldown_s: 2}}
  reference_price_in_per_1k: 10.0
  reference_price_out_per_1k: 30.0
"""


@contextmanager
def busy(url: str):
    """Occupy the model with a long stream; yields once its first chunk arrived; closes it after."""
    first = threading.Event()
    stop = threading.Event()
    state: dict = {}

    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                url + "/v1/completions",
                timeout=120,
                headers={"Authorization": f"Bearer {KEY}"},
                json={
                    "prompt": "Count to a thousand: 1, 2, 3,",
                    "max_tokens": 900,
                    "stream": True,
                    "logit_bias": NO_EOS,
                },
            ) as r:
                state["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        first.set()
                    if stop.is_set() or line == "data: [DONE]":
                        break
                state["ended"] = True
        except Exception as exc:  # noqa: BLE001 - reported through the assertion below
            state["error"] = repr(exc)
        finally:
            first.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert first.wait(120) and "error" not in state, state
    try:
        yield state
    finally:
        stop.set()
        t.join(60)


def routed_upstream(raw, state: dict) -> str:
    route = raw.headers["x-llmctl-route"]
    assert route != "local" or not state.get("ended"), "the occupying stream ended early: the model was free"
    return route


def usage_json(llmctl, home: Path, *args: str) -> dict:
    env = {"LLMCTL_HOME": str(home), "LLMCTL_CONFIG": str(home / "config.yaml")}
    r = llmctl("usage", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_fallback_circuit_and_usage(smoke_store, tmp_path, fakes, llmctl):
    home = tmp_path / "home"
    home.mkdir(parents=True)
    link_smoke_store(smoke_store, home)
    keys = home / "api-keys"
    keys.write_text(KEY + "\n")
    server = start_server(home, config(fakes, free_port(), keys), "smoke", env={"TEST_CLOUD_KEY": CLOUD_KEY})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    chat = client.chat.completions.with_raw_response.create
    msgs = [{"role": "user", "content": "Say hi"}]
    try:
        wait_healthy(server)
        raw = chat(model="smoke", messages=msgs, max_tokens=4)
        assert raw.headers["x-llmctl-route"] == "local"
        assert sum(f.hits for f in fakes.values()) == 0

        with busy(server.url) as state:
            # 1. the local model is busy (queue full): broken fails, hanging times out, cloud answers
            raw = chat(model="smoke", messages=msgs, max_tokens=4)
            assert routed_upstream(raw, state) == "upstream:cloud"
            assert raw.parse().choices[0].message.content == "".join(WORDS)
            assert (fakes["fail"].hits, fakes["hang"].hits, fakes["ok"].hits) == (1, 1, 1)
            # 2. streamed: the second failure of each opens their circuits; the stream comes from cloud
            raw = chat(model="smoke", messages=msgs, max_tokens=4, stream=True)
            assert routed_upstream(raw, state) == "upstream:cloud"
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            assert text == "".join(WORDS)
            assert (fakes["fail"].hits, fakes["hang"].hits, fakes["ok"].hits) == (2, 2, 2)
            m = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
            assert metric(m, "llmctl_upstream_circuit_state", 'upstream="broken"') == 2
            assert metric(m, "llmctl_upstream_circuit_state", 'upstream="hanging"') == 2
            # 3. open circuits are skipped
            raw = chat(model="smoke", messages=msgs, max_tokens=4)
            assert routed_upstream(raw, state) == "upstream:cloud"
            assert (fakes["fail"].hits, fakes["hang"].hits, fakes["ok"].hits) == (2, 2, 3)

            # 4. after the cool-down (2 s) each gets one trial again
            def half_open() -> bool:
                m = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
                return all(
                    metric(m, "llmctl_upstream_circuit_state", f'upstream="{n}"') == 1 for n in ("broken", "hanging")
                )

            poll(half_open, 30, "both circuits half-open")
            raw = chat(model="smoke", messages=msgs, max_tokens=4)
            assert routed_upstream(raw, state) == "upstream:cloud"
            assert (fakes["fail"].hits, fakes["hang"].hits, fakes["ok"].hits) == (3, 3, 4)
            assert not state.get("ended"), "the model was free during the test"

        m = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert metric(m, "llmctl_route_requests_total", 'route="upstream:cloud"') == 4
        assert metric(m, "llmctl_fallbacks_total", 'reason="queue_full"') == 4
        sent = fakes["ok"].received[0]
        assert sent.headers["authorization"] == f"Bearer {CLOUD_KEY}" and sent.body["model"] == "gpt-fake"

        # The ledger: 2 local (the first request, the occupying stream) + 4 via cloud.
        doc = poll(
            lambda: (d := usage_json(llmctl, home, "--by", "provider"))["total"]["requests"] == 6 and d,
            30,
            "6 ledger rows",
        )
        rows = {r["group"]: r for r in doc["rows"]}
        cloud = rows["upstream:cloud"]
        assert cloud["requests"] == 4 and cloud["succeeded"] == 4
        assert (cloud["prompt_tokens"], cloud["completion_tokens"]) == (4 * PROMPT_TOKENS, 4 * COMPLETION_TOKENS)
        expected = 4 * (PROMPT_TOKENS / 1000 * PRICE_IN + COMPLETION_TOKENS / 1000 * PRICE_OUT)
        assert round(cloud["cost_usd"], 2) == round(expected, 2) == 0.64
        assert rows["local"]["requests"] == 2 and rows["local"]["cost_usd"] == 0
        local_tokens = rows["local"]["prompt_tokens"], rows["local"]["completion_tokens"]
        assert local_tokens[0] > 0 and local_tokens[1] > 0
        total = doc["total"]
        reference = (4 * PROMPT_TOKENS + local_tokens[0]) / 1000 * 10.0 + (
            4 * COMPLETION_TOKENS + local_tokens[1]
        ) / 1000 * 30.0
        assert round(total["savings_usd"], 2) == round(reference - expected, 2)
        keys_doc = usage_json(llmctl, home, "--by", "key")
        assert len(keys_doc["rows"]) == 1 and keys_doc["rows"][0]["group"].startswith("key-")  # one client key's id
        assert keys_doc["rows"][0]["requests"] == 6
        models = {r["group"] for r in usage_json(llmctl, home, "--by", "model")["rows"]}
        assert models == {"smoke", "gpt-fake"}
    finally:
        code = stop_server(server)
    assert code == 0
    log = server.log_path.read_text()
    assert CLOUD_KEY not in log and KEY not in log
    assert '"route":"upstream:cloud"' in log


def test_airgap_503_and_the_cloud_receives_nothing(smoke_store, tmp_path, fakes):
    home = tmp_path / "home"
    home.mkdir(parents=True)
    link_smoke_store(smoke_store, home)
    keys = home / "api-keys"
    keys.write_text(KEY + "\n")
    server = start_server(
        home, config(fakes, free_port(), keys), "smoke", env={"TEST_CLOUD_KEY": CLOUD_KEY, "LLMCTL_AIRGAP": "1"}
    )
    try:
        wait_healthy(server)
        with busy(server.url) as state:
            r = httpx.post(
                server.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                timeout=60,
            )
            assert not state.get("ended")
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "local_unavailable_airgap" and "airgap" in err["message"]
            assert "queue_full" in err["message"] and r.headers.get("retry-after")
        assert sum(f.hits for f in fakes.values()) == 0
    finally:
        assert stop_server(server) == 0
    assert "airgap: no request leaves this host" in server.log_path.read_text()
