"""llmctl.serve's parts that need no server: API keys (matching), the rate limiter, settings resolution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmctl.config import load_config
from llmctl.errors import IntegrityError, UsageError
from llmctl.keys import parse_api_keys
from llmctl.paths import resolve_paths
from llmctl.serve.security import RateLimiter, match_key, presented_key
from llmctl.serve.settings import is_loopback, resolve_settings

# -- API keys ----------------------------------------------------------------------------------------


def test_presented_key_bearer_or_x_api_key():
    assert presented_key({"authorization": "Bearer sk-a"}) == b"sk-a"
    assert presented_key({"authorization": "bearer   sk-a "}) == b"sk-a"
    assert presented_key({"x-api-key": "sk-b"}) == b"sk-b"
    assert presented_key({"authorization": "Basic Zm9v"}) is None
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({}) is None


def test_match_key():
    keys = parse_api_keys("sk-one\nsk-two\n")
    assert match_key(keys, b"sk-two") is keys[1]
    assert match_key(keys, b"sk-three") is None
    assert match_key(keys, b"sk-on") is None
    assert match_key(keys, None) is None


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("")


# -- the rate limiter ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_refill():
    clock = Clock()
    rl = RateLimiter(rpm=60, burst=3, clock=clock)  # one token per second
    assert [rl.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.allow("a")
    assert wait == pytest.approx(1.0)
    assert rl.allow("b") == 0.0  # buckets are per key
    clock.now += 0.5
    assert rl.allow("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert rl.allow("a") == 0.0


def test_rate_limit_zero_is_off():
    rl = RateLimiter(rpm=0, burst=1)
    assert not rl.enabled
    assert all(rl.allow("a") == 0.0 for _ in range(100))


def test_idle_buckets_are_pruned():
    clock = Clock()
    rl = RateLimiter(rpm=600, burst=2, clock=clock)
    rl.MAX_BUCKETS = 10
    for i in range(10):
        rl.allow(f"ip:{i}")
    clock.now += 60
    rl.allow("ip:new")
    assert len(rl._buckets) <= 2


# -- settings ------------------------------------------------------------------------------------------


def _settings(target=None, **kw):
    loaded = load_config()
    return resolve_settings(loaded, resolve_paths(), target, **kw)


@pytest.mark.model
def test_service_settings_and_flag_overrides(write_config, smoke_model, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-1\n")
    write_config(f"""version: 1
services:
  chat:
    model: smoke
    port: 8123
    n_ctx: 2048
    chat_format: chatml
    api_keys_file: {keys}
    limits:
      max_tokens: 64
""")
    s = _settings("chat")
    assert (s.service, s.model_name, s.port, s.n_ctx, s.chat_format) == ("chat", "smoke", 8123, 2048, "chatml")
    assert s.verified and s.model_path == smoke_model and s.limits.max_tokens == 64
    assert s.auth_enabled and s.api_keys_source == str(keys)
    assert (s.parallel, s.swa_full) == (4, True)  # the defaults: four slots, full sliding-window KV
    s = _settings("chat", port=9000, n_ctx=512, chat_format="gemma", parallel=2)
    assert (s.port, s.n_ctx, s.chat_format, s.parallel) == (9000, 512, "gemma", 2)
    s = _settings(None)  # the only service
    assert s.service == "chat"


@pytest.mark.model
def test_bare_model_gets_defaults_and_its_chat_format(smoke_model):
    s = _settings("smoke")
    assert s.service is None and s.host == "127.0.0.1" and s.port == 8000
    assert s.chat_format == "gemma" and not s.auth_enabled


@pytest.mark.model
def test_a_store_path_is_matched_to_its_lock_entry(smoke_model):
    s = _settings(str(smoke_model))
    assert s.verified and s.model_name == "smoke" and s.chat_format == "gemma"


@pytest.mark.model
def test_path_outside_the_store(tmp_path, smoke_model):
    stray = tmp_path / "x.gguf"
    stray.write_bytes(b"GGUF")
    with pytest.raises(UsageError, match="outside the verified model store"):
        _settings(str(stray))
    s = _settings(str(stray), allow_unverified=True)
    assert not s.verified and s.model_name == "x"


@pytest.mark.model
def test_model_flag_overrides_the_service(write_config, smoke_model, tmp_path):
    stray = tmp_path / "x.gguf"
    stray.write_bytes(b"GGUF")
    write_config("version: 1\nservices:\n  chat:\n    model: smoke\n    allow_unverified_path: true\n")
    s = _settings("chat", model=str(stray))
    assert s.model_path == stray.absolute() and not s.verified


def test_tampered_model_is_an_integrity_error(home):
    path = home / "models" / "tiny" / "tiny.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF tiny")
    (home / "models.lock").write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "tiny": {
                        "file": "tiny.gguf",
                        "path": "tiny/tiny.gguf",
                        "size": 9,
                        "sha256": "0" * 64,
                        "pulled_at": "2026-01-01T00:00:00Z",
                        "source": "import",
                    }
                },
            }
        )
    )
    with pytest.raises(IntegrityError):
        _settings("tiny")


@pytest.mark.model
@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"port": 0}, "--port"),
        ({"n_ctx": 10}, "--n-ctx"),
        ({"threads": 0}, "--threads"),
        ({"n_gpu_layers": -2}, "--n-gpu-layers"),
        ({"parallel": 0}, "--parallel"),
        ({"parallel": 65}, "--parallel"),
    ],
)
def test_bad_flags(smoke_model, kw, flag):
    with pytest.raises(UsageError, match=flag):
        _settings("smoke", **kw)


@pytest.mark.model
def test_unknown_target_with_model_flag(smoke_model):
    with pytest.raises(UsageError, match="not a service"):
        _settings("nope", model="smoke")


# -- metrics -------------------------------------------------------------------------------------------


def test_gpu_offload_is_exported_only_for_gpu_services():
    """A CPU service has no llmctl_gpu_offload series (an alert on `== 0` must not fire for it);
    a GPU service has 1 or 0. No metric name has a colon (promtool check metrics)."""
    from llmctl.serve.metrics import Metrics

    m = Metrics("smoke")
    text = m.render()[0].decode()
    assert "llmctl_gpu_offload" not in text
    assert not [line for line in text.splitlines() if not line.startswith("#") and ":" in line.split()[0]]
    m.set_gpu_offload(False)
    assert "\nllmctl_gpu_offload 0.0\n" in m.render()[0].decode()
    m.set_gpu_offload(True)
    assert "\nllmctl_gpu_offload 1.0\n" in m.render()[0].decode()


@pytest.mark.model
def test_gpu_offload_active_needs_layers_to_offload(smoke_model):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    from llmctl.serve.engine import gpu_offload_active

    settings = resolve_settings(load_config(), resolve_paths(), "smoke")
    assert gpu_offload_active(settings) is None
    gpu = dataclasses.replace(settings, n_gpu_layers=-1)
    assert gpu_offload_active(gpu) is bool(llama_cpp.llama_supports_gpu_offload())
