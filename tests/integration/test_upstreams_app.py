"""Upstream fallback through serve's real HTTP app (uvicorn on 127.0.0.1 in a thread, the real
`openai` client) and the real engine thread, against fake upstreams that are real HTTP servers.

The one stand-in: the engine's model. `BrokenModel` takes the place of llama_cpp.Llama so that the
local model can fail (or answer) on demand, in milliseconds: an engine error is one of the real
local failures serve falls back on. test_upstreams_serve.py does the same with the smoke model and
a full queue. The circuit breaker's clock is injected, so the cool-down passes without waiting.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests import fake_upstreams
from tests.fake_upstreams import COMPLETION_TOKENS, PROMPT_TOKENS, WORDS

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

CLIENT_KEY = "sk-client-key-123456"
CLOUD_KEY = "sk-cloud-upstream-key-987"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BrokenModel:
    """Stands in for the engine's llama.cpp backend (llmctl.serve.backend.Backend): every decode
    fails while `fail` is set; else each request is answered "local" and ends."""

    LOCAL, END = 1, 2
    metadata: dict = {}  # no chat template in the "GGUF": the engine falls back to llama-2's format
    bos = eos = -1
    n_vocab = 1000
    n_batch = 64

    def __init__(self) -> None:
        self.fail = True

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return list(range(3, len(text.split()) + 4))

    def token_text(self, token: int) -> str:
        return ""

    def piece(self, token: int) -> bytes:
        return b"local" if token == self.LOCAL else b""

    def is_eog(self, token: int) -> bool:
        return token == self.END

    def decode(self, tokens, positions, seqs, logits) -> None:
        if self.fail:
            raise RuntimeError("the model crashed")

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return True

    def seq_pos_min(self, seq: int) -> int:
        return 0

    def sampler(self, spec):
        answer = iter([self.LOCAL, self.END])

        class Sampler:
            def sample(self, index: int) -> int:
                return next(answer)

            def close(self) -> None:
                pass

        return Sampler()

    def close(self) -> None:
        pass


class App:
    def __init__(
        self,
        tmp: Path,
        upstreams_yaml: str,
        routing_yaml: str,
        *,
        ledger: bool = True,
        airgap: bool = False,
        clock=None,
    ) -> None:
        from llmctl.config import validate
        from llmctl.keys import parse_api_keys
        from llmctl.schema import Limits
        from llmctl.serve.app import create_app
        from llmctl.serve.batch import Engine
        from llmctl.serve.settings import ServeSettings
        from llmctl.upstreams.config import routing_for
        from llmctl.upstreams.router import Router
        from llmctl.usage.ledger import Ledger

        import yaml

        doc = yaml.safe_load(upstreams_yaml + routing_yaml) or {}
        doc["airgap"] = airgap
        cfg = validate(doc)
        self.model = BrokenModel()
        settings = ServeSettings(
            service="chat",
            model_name="smoke",
            model_path=tmp / "none.gguf",
            verified=True,
            host="127.0.0.1",
            port=0,
            n_ctx=512,
            n_batch=64,
            n_threads=1,
            n_gpu_layers=0,
            flash_attn=False,
            chat_format=None,
            embeddings=False,
            api_keys=parse_api_keys(CLIENT_KEY),
            api_keys_source=None,
            public_health=True,
            public_metrics=True,
            shutdown_timeout_s=2,
            limits=Limits(max_tokens=64, rate_limit_rpm=0),
        )
        self.engine = Engine(settings, loader=lambda s: self.model)
        self.ledger = Ledger(tmp / "usage.db") if ledger else None
        env = {"TEST_CLOUD_KEY": CLOUD_KEY}
        self.router = Router(
            routing_for(cfg, "chat", env),
            served_model="smoke",
            max_tokens=64,
            recorder=self.ledger.record if self.ledger else None,
            dropped=(lambda: self.ledger.dropped) if self.ledger else None,
            clock=clock or time.monotonic,
            rng=lambda: 0.0,
        )
        self.access: list[dict] = []
        app, self.ctx = create_app(settings, self.engine, access_log=self.access.append, router=self.router)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> App:
        self.engine.start()
        assert self.engine.loaded.wait(10)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.stop(2)
        if self.ledger is not None:
            self.ledger.close()

    def chat(self, stream: bool = False, **kw):
        return self.client.chat.completions.with_raw_response.create(
            model="smoke", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, stream=stream, **kw
        )

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics").text

    def rows(self, n: int) -> list[tuple]:
        """The ledger's rows once there are n: a request is recorded just after its response went out."""
        import sqlite3

        deadline = time.monotonic() + 20
        while True:
            assert self.ledger.flush(10)
            with sqlite3.connect(self.ledger.path) as conn:
                rows = conn.execute(
                    "SELECT route, model, key_id, prompt_tokens, completion_tokens, status, cost, "
                    "stream FROM requests ORDER BY id"
                ).fetchall()
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)


def upstreams_yaml(f: dict, *, ok_cloud: bool = True) -> str:
    return f"""
upstreams:
  broken:
    base_url: {f["fail"].url}
    default_model: m-broken
  hanging:
    base_url: {f["hang"].url}
    default_model: m-hanging
    timeout_s: 0.5
  cloud:
    base_url: {f["ok"].url}
    api_key_env: TEST_CLOUD_KEY
    models: {{smoke: gpt-fake}}
    price_in_per_1k: 0.5
    price_out_per_1k: 1.5
    cloud: {str(ok_cloud).lower()}
"""


ROUTING = """
routing:
  strategy: cascade
  retries: 1
  backoff_initial_s: 0.01
  circuit: {failures: 2, cooldown_s: 30}
"""


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_local_down_the_first_healthy_upstream_serves_and_says_so(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), ROUTING) as app:
        raw = app.chat()
        assert raw.headers["x-llmctl-route"] == "upstream:cloud"
        completion = raw.parse()
        assert completion.choices[0].message.content == "".join(WORDS)
        assert completion.model == "gpt-fake"
        # broken: 1 try + 1 retry; hanging: accepted, timed out, retried once; then cloud
        assert fakes["fail"].hits == 2 and fakes["hang"].hits == 2 and fakes["ok"].hits == 1
        sent = fakes["ok"].received[0]
        assert sent.headers["authorization"] == f"Bearer {CLOUD_KEY}"  # its key, never the client's
        assert CLIENT_KEY not in str(sent.headers) and sent.body["model"] == "gpt-fake"
        assert sent.body["max_tokens"] == 8
        rows = app.rows(1)
        assert rows == [
            (
                "upstream:cloud",
                "gpt-fake",
                rows[0][2],
                PROMPT_TOKENS,
                COMPLETION_TOKENS,
                200,
                pytest.approx(PROMPT_TOKENS / 1000 * 0.5 + COMPLETION_TOKENS / 1000 * 1.5),
                0,
            )
        ]
        assert rows[0][2].startswith("key-")  # the key id, not the key
        assert app.access[-1]["route"] == "upstream:cloud"
        text = app.metrics()
        assert metric(text, "llmctl_route_requests_total", 'route="upstream:cloud"') == 1
        assert metric(text, "llmctl_fallbacks_total", 'reason="internal_error"') == 1
        assert metric(text, "llmctl_upstream_attempts_total", 'outcome="timeout",upstream="hanging"') == 2


def test_local_up_is_served_locally(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), ROUTING) as app:
        app.model.fail = False
        raw = app.chat()
        assert raw.headers["x-llmctl-route"] == "local"
        assert raw.parse().choices[0].message.content == "local"
        assert sum(f.hits for f in fakes.values()) == 0
        assert app.rows(1)[0][:2] == ("local", "smoke")


def test_streaming_fallback_keeps_the_stream_and_records_its_usage(tmp_path, fakes):
    routing = "routing:\n  strategy: cascade\n  cascade: [broken, cloud]\n  retries: 0\n"
    with App(tmp_path, upstreams_yaml(fakes), routing) as app:
        raw = app.chat(stream=True)
        assert raw.headers["x-llmctl-route"] == "upstream:cloud"
        chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
        assert all(c.usage is None for c in chunks)  # the usage chunk we asked for is not passed on
        assert fakes["ok"].received[0].body["stream_options"] == {"include_usage": True}

        raw = app.chat(stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS
        rows = app.rows(2)
        assert [(r[0], r[3], r[4], r[7]) for r in rows] == [("upstream:cloud", PROMPT_TOKENS, COMPLETION_TOKENS, 1)] * 2


def test_circuit_opens_skips_and_half_opens_after_the_cooldown(tmp_path, fakes):
    clock = Clock()
    routing = (
        "routing:\n  strategy: cascade\n  cascade: [broken, cloud]\n  retries: 0\n"
        "  circuit: {failures: 2, cooldown_s: 30}\n"
    )
    with App(tmp_path, upstreams_yaml(fakes), routing, clock=clock) as app:
        state = lambda: metric(app.metrics(), "llmctl_upstream_circuit_state", 'upstream="broken"')  # noqa: E731
        for _ in range(2):
            assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"
        assert fakes["fail"].hits == 2 and state() == 2  # open
        assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"
        assert fakes["fail"].hits == 2  # skipped while open
        clock.now += 30
        assert state() == 1  # half-open: one trial
        assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"
        assert fakes["fail"].hits == 3 and state() == 2  # the trial failed: open again
        assert fakes["ok"].hits == 4


def test_airgap_answers_503_and_nothing_leaves(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), ROUTING, airgap=True) as app:
        with pytest.raises(openai.APIStatusError) as exc:
            app.chat()
        assert exc.value.status_code == 503
        assert exc.value.body["code"] == "local_unavailable_airgap" and "airgap" in exc.value.body["message"]
        with pytest.raises(openai.APIStatusError):
            app.chat(stream=True)
        assert sum(f.hits for f in fakes.values()) == 0
        rows = app.rows(2)
        assert [r[0] for r in rows] == ["local", "local"] and rows[0][5] == 503


def test_private_requests_never_reach_a_cloud(tmp_path, fakes):
    routing = "routing:\n  strategy: cloud\n  privacy_patterns: ['(?i)payroll']\n"
    with App(tmp_path, upstreams_yaml(fakes), routing) as app:
        for kw in (
            {"extra_headers": {"X-LLMCTL-Private": "1"}},
            {"messages": [{"role": "user", "content": "the Payroll numbers"}]},
        ):
            with pytest.raises(openai.APIStatusError) as exc:
                if "messages" in kw:
                    app.client.chat.completions.create(model="smoke", max_tokens=4, **kw)
                else:
                    app.chat(**kw)
            assert exc.value.status_code == 503 and "private" in exc.value.body["message"]
        assert fakes["ok"].hits == 0
        assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"  # not private: it may go


def test_private_requests_may_go_to_a_host_of_your_own(tmp_path, fakes):
    routing = "routing:\n  strategy: cloud\n"
    with App(tmp_path, upstreams_yaml(fakes, ok_cloud=False), routing) as app:
        raw = app.chat(extra_headers={"X-LLMCTL-Private": "yes"})
        assert raw.headers["x-llmctl-route"] == "upstream:cloud"
        assert "x-llmctl-private" not in fakes["ok"].received[0].headers  # client headers are not forwarded


def test_strategy_none_returns_the_local_error(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), "routing:\n  strategy: none\n") as app:
        with pytest.raises(openai.InternalServerError) as exc:
            app.chat()
        assert exc.value.status_code == 500 and exc.value.body["code"] == "internal_error"
        assert sum(f.hits for f in fakes.values()) == 0


def test_no_ledger_still_routes(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), "routing:\n  strategy: cloud\n", ledger=False) as app:
        assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"
        assert "llmctl_usage_ledger_dropped" not in app.metrics()


def test_a_forwarded_request_is_not_forwarded_again(tmp_path, fakes):
    """Two llmctl hosts falling back on each other must not loop: requests we send carry
    X-Llmctl-Forwarded, and a request that carries it gets the local answer or the local error."""
    with App(tmp_path, upstreams_yaml(fakes), "routing:\n  strategy: cloud\n") as app:
        app.chat()
        assert fakes["ok"].received[0].headers["x-llmctl-forwarded"] == "1"
        with pytest.raises(openai.InternalServerError):
            app.chat(extra_headers={"X-Llmctl-Forwarded": "1"})
        assert fakes["ok"].hits == 1


def test_refused_requests_are_recorded_without_a_route(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), "routing:\n  strategy: none\n") as app:
        r = httpx.post(
            app.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": "Bearer wrong"},
        )
        assert r.status_code == 401 and "x-llmctl-route" not in r.headers
        assert app.rows(1) == [("none", "smoke", None, 0, 0, 401, 0.0, 0)]
        assert metric(app.metrics(), "llmctl_route_requests_total") == 0


def test_a_client_that_leaves_a_relayed_stream_stops_the_upstream(tmp_path):
    slow = fake_upstreams.start("slow")
    try:
        yaml = f"upstreams:\n  slow:\n    base_url: {slow.url}\n    default_model: s\n"
        with App(tmp_path, yaml, "routing:\n  strategy: slow\n") as app:
            with httpx.stream(
                "POST",
                app.url + "/v1/chat/completions",
                timeout=30,
                headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                json={"messages": [{"role": "user", "content": "go"}], "stream": True},
            ) as r:
                assert r.headers["x-llmctl-route"] == "upstream:slow"
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        break  # hang up after the first event
            assert slow.aborted.wait(20), "the upstream kept streaming to nobody"
            assert slow.sent_chunks < 100
            assert app.rows(1)[0][0] == "upstream:slow"
    finally:
        slow.stop()


# -- issue 13: a bad request is the client's fault, never a reason to go to a (paid) upstream ---------------

HOSTILE = [
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
    b'{"messages": [{"content": "no role"}], "max_tokens": 2}',
    b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {}}',
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object", '
        b'"schema": {"enum": []}}}'
    ),
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"-5": 1}}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}',
]


def test_bad_requests_are_answered_locally_and_never_fall_back(tmp_path, fakes):
    with App(tmp_path, upstreams_yaml(fakes), "routing:\n  strategy: cloud\n") as app:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
        for body in HOSTILE:
            r = httpx.post(app.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
            assert r.status_code == 400, (body[:80], r.text)
            assert r.headers["x-llmctl-route"] == "local"
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = httpx.post(app.url + "/v1/completions", json={"prompt": [10**9], "max_tokens": 2}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[0]"
        assert sum(f.hits for f in fakes.values()) == 0
        # The same server still falls back for what is the server's fault (its model failing).
        assert app.chat().headers["x-llmctl-route"] == "upstream:cloud"
        assert fakes["ok"].hits == 1


SECRET = "the Payroll numbers"


@pytest.mark.parametrize(
    "where, body",
    [
        ("suffix", {"prompt": "def pay():", "suffix": SECRET, "max_tokens": 4}),
        (
            "tool call arguments",
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": SECRET}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "done"},
                ],
                "max_tokens": 4,
            },
        ),
        ("name", {"messages": [{"role": "user", "name": "Payroll", "content": "hi"}], "max_tokens": 4}),
        (
            "content parts",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": SECRET}]}], "max_tokens": 4},
        ),
        ("prompt list", {"prompt": [SECRET], "max_tokens": 4}),
        ("token ids", {"prompt": [5, 6, 7], "max_tokens": 4}),
    ],
)
def test_private_text_anywhere_in_a_request_keeps_it_off_the_cloud(tmp_path, fakes, where, body):
    routing = "routing:\n  strategy: cloud\n  privacy_patterns: ['(?i)payroll']\n"
    with App(tmp_path, upstreams_yaml(fakes), routing) as app:
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        r = httpx.post(app.url + path, json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
        assert r.status_code == 503 and "private" in r.json()["error"]["message"], (where, r.text)
        assert fakes["ok"].hits == 0
