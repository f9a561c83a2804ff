"""The model pool's rules (llmctl.serve.pool): load on demand, LRU unloading, never a busy or a
pinned model, max_loaded, memory_budget, keep_alive_s, preload, 503 when nothing would make room.

The engines here are stand-ins (StubEngine): the pool sees only the Scheduler protocol plus
start/stop/loaded, and these tests are about its decisions, run many times with a fake clock. The
real engine with the smoke model under two names is tests/integration/test_serve_multimodel.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from llmctl.schema import Limits
from llmctl.serve.engine import QueueTimeout
from llmctl.serve.pool import (
    Conflict,
    LoadFailed,
    ModelNotFound,
    ModelPool,
    NoRoom,
    TooManyModels,
    estimate_bytes,
)
from llmctl.serve.settings import PoolSettings, ServedModel, ServeSettings

MiB = 1 << 20


def settings(names=("a", "b", "c"), **pool) -> ServeSettings:
    served = tuple(ServedModel(n, Path(f"/models/{n}.gguf"), True, None) for n in names)
    return ServeSettings(
        service=None,
        model_name=served[0].name,
        model_path=served[0].path,
        verified=True,
        host="127.0.0.1",
        port=8000,
        n_ctx=512,
        n_batch=512,
        n_threads=None,
        n_gpu_layers=0,
        flash_attn=False,
        chat_format=None,
        embeddings=False,
        api_keys=(),
        api_keys_source=None,
        public_health=True,
        public_metrics=False,
        shutdown_timeout_s=1.0,
        limits=Limits(),
        models=served if len(served) > 1 else (),
        pool=PoolSettings(**pool),
    )


class StubEngine:
    """What the pool uses of an engine; `fail` makes its load fail."""

    instances: list[StubEngine] = []

    def __init__(self, s: ServeSettings, fail: bool = False) -> None:
        self.settings = s
        self.model_id = s.model_name
        self.n_ctx = s.n_ctx
        self.n_vocab = 0
        self.state = "loading"
        self.on_done = None
        self.last_token_at = None
        self.loaded = threading.Event()
        self.error: BaseException | None = None
        self.load_seconds: float | None = None
        self.waiting = 0
        self.running = 0
        self.fail = fail
        self.stopped = False
        StubEngine.instances.append(self)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        if self.fail:
            self.state, self.error = "failed", ValueError("bad file")
        else:
            self.state, self.load_seconds = "ready", 0.01
        self.loaded.set()

    def stop(self, timeout: float) -> bool:
        self.state, self.stopped = "stopped", True
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    s: ServeSettings, sizes: dict[str, int] | None = None, fail: set[str] = frozenset(), clock: Clock | None = None
) -> tuple[ModelPool, list[tuple[str, str]]]:
    sizes = sizes or {}
    events: list[tuple[str, str]] = []
    pool = ModelPool(
        s,
        lambda ms: StubEngine(ms, fail=ms.model_name in fail),
        estimate=lambda ms: sizes.get(ms.model_name, 100 * MiB),
        clock=clock or time.monotonic,
        measure=False,
    )
    pool.on_event = lambda event, model, **kw: events.append((event, model))
    return pool, events


def states(pool: ModelPool) -> dict[str, str]:
    return {name: e.state for name, e in pool.entries.items()}


def run(coro):
    return asyncio.run(coro)


def test_loads_on_demand_and_alternates_with_max_loaded_1():
    async def main():
        pool, events = make_pool(settings(("a", "b"), max_loaded=1))
        assert states(pool) == {"a": "unloaded", "b": "unloaded"}
        for name in ["a", "b", "a", "b"]:
            async with pool.lease(name, 5) as engine:
                assert engine.model_id == name and engine.ready
                assert states(pool)[name] == "loaded"
                assert sum(s == "loaded" for s in states(pool).values()) == 1
        loads = [m for e, m in events if e == "model_loaded"]
        unloads = [m for e, m in events if e == "model_unloaded"]
        assert loads == ["a", "b", "a", "b"] and unloads == ["a", "b", "a"]
        assert pool.entries["a"].loads == 2 and pool.entries["a"].unloads == 2

    run(main())


def test_least_recently_used_goes_first():
    async def main():
        clock = Clock()
        pool, events = make_pool(settings(("a", "b", "c"), max_loaded=2), clock=clock)
        for name in ["a", "b", "a"]:
            clock.now += 1
            await pool.load(name, 5)
        clock.now += 1
        await pool.load("c", 5)  # b is the least recently used
        assert states(pool) == {"a": "loaded", "b": "unloaded", "c": "loaded"}

    run(main())


def test_a_busy_model_is_never_unloaded_the_request_waits():
    async def main():
        pool, _ = make_pool(settings(("a", "b"), max_loaded=1))
        await pool.load("a", 5)
        engine_a = pool.entries["a"].engine
        engine_a.running = 1  # a sequence is active
        with pytest.raises(QueueTimeout):
            await pool.acquire("b", 0.2)
        assert states(pool) == {"a": "loaded", "b": "unloaded"} and not engine_a.stopped
        assert pool.entries["b"].leases == 0
        waiter = asyncio.ensure_future(pool.acquire("b", 30))
        await asyncio.sleep(0.05)
        assert not waiter.done() and states(pool)["a"] == "loaded"
        engine_a.running = 0
        pool._notify()  # what a finished job does (Engine.on_done)
        entry = await asyncio.wait_for(waiter, 5)
        assert entry.name == "b" and engine_a.stopped and states(pool) == {"a": "unloaded", "b": "loaded"}
        pool.release(entry)

    run(main())


def test_a_leased_model_is_not_unloaded_before_its_job_is_submitted():
    async def main():
        pool, _ = make_pool(settings(("a", "b"), max_loaded=1))
        entry = await pool.acquire("a", 5)
        with pytest.raises(QueueTimeout):
            await pool.acquire("b", 0.1)
        pool.release(entry)
        await pool.load("b", 5)

    run(main())


def test_pinned_model_survives_and_takes_its_place():
    async def main():
        pool, events = make_pool(settings(("a", "b", "c"), max_loaded=2, pinned=("a",)))
        await pool.preload()
        assert states(pool)["a"] == "loaded"
        for name in ["b", "c", "b", "c"]:
            await pool.load(name, 5)
        assert states(pool)["a"] == "loaded" and ("model_unloaded", "a") not in events
        with pytest.raises(Conflict):
            await pool.unload("a")

    run(main())


def test_no_room_even_without_every_unpinned_model_is_503_at_once():
    async def main():
        pool, events = make_pool(settings(("a", "b"), max_loaded=1, pinned=("a",)))
        await pool.preload()
        with pytest.raises(TooManyModels) as err:
            await pool.acquire("b", 5)
        assert err.value.status == 503 and "pinned" in err.value.message
        assert states(pool) == {"a": "loaded", "b": "unloaded"}

        pool, events = make_pool(
            settings(("a", "b", "c"), memory_budget=300 * MiB), sizes={"a": 150 * MiB, "b": 100 * MiB, "c": 400 * MiB}
        )
        await pool.load("a", 5)
        await pool.load("b", 5)
        with pytest.raises(NoRoom) as err:
            await pool.acquire("c", 5)
        assert err.value.code == "insufficient_memory" and "memory_budget 300 MiB" in err.value.message
        assert states(pool) == {"a": "loaded", "b": "loaded", "c": "unloaded"}  # nothing unloaded for it

    run(main())


def test_memory_budget_unloads_as_few_as_needed():
    async def main():
        clock = Clock()
        pool, _ = make_pool(
            settings(("a", "b", "c"), memory_budget=300 * MiB),
            clock=clock,
            sizes={"a": 100 * MiB, "b": 100 * MiB, "c": 150 * MiB},
        )
        for name in ["a", "b"]:
            clock.now += 1
            await pool.load(name, 5)
        clock.now += 1
        await pool.load("c", 5)  # 350 > 300: a (the oldest) goes, b stays
        assert states(pool) == {"a": "unloaded", "b": "loaded", "c": "loaded"}

    run(main())


def test_unknown_model_is_404_but_one_model_takes_any_name():
    async def main():
        pool, _ = make_pool(settings(("a", "b")))
        with pytest.raises(ModelNotFound) as err:
            await pool.acquire("nope", 1)
        assert err.value.status == 404 and err.value.code == "model_not_found"
        assert pool.entry(None).name == "a"  # no name: the default model
        single, _ = make_pool(settings(("only",)))
        assert single.entry("gpt-4o").name == "only"

    run(main())


def test_keep_alive_unloads_idle_unpinned_models():
    async def main():
        clock = Clock()
        pool, _ = make_pool(settings(("a", "b"), keep_alive_s=30.0, pinned=("a",)), clock=clock)
        await pool.preload()
        await pool.load("b", 5)
        reaper = asyncio.ensure_future(pool.reap())
        await asyncio.sleep(0.05)
        assert states(pool) == {"a": "loaded", "b": "loaded"}
        clock.now += 31
        for _ in range(100):
            if states(pool)["b"] == "unloaded":
                break
            await asyncio.sleep(0.02)
        assert states(pool) == {"a": "loaded", "b": "unloaded"}
        reaper.cancel()

    run(main())


def test_a_failed_load_is_a_503_and_leaves_the_model_unloaded():
    async def main():
        pool, events = make_pool(settings(("a", "b")), fail={"b"})
        with pytest.raises(LoadFailed) as err:
            await pool.acquire("b", 5)
        assert "bad file" in err.value.message and err.value.status == 503
        assert states(pool)["b"] == "unloaded" and pool.entries["b"].error == "ValueError: bad file"
        assert pool.status()["models"][1]["error"] == "ValueError: bad file"

    run(main())


def test_unload_refuses_a_busy_model_and_status_tells_the_truth():
    async def main():
        clock = Clock()
        pool, _ = make_pool(settings(("a", "b")), clock=clock)
        assert await pool.unload("a") is False
        await pool.load("a", 5)
        pool.entries["a"].engine.waiting = 1
        with pytest.raises(Conflict):
            await pool.unload("a")
        pool.entries["a"].engine.waiting = 0
        clock.now += 5
        doc = pool.status()
        a, b = doc["models"]
        assert (a["id"], a["status"], a["default"], a["idle_s"], a["slots"], a["n_ctx"]) == (
            "a",
            "loaded",
            True,
            5.0,
            4,
            512,
        )
        assert (b["status"], b["idle_s"], b["rss_bytes"]) == ("unloaded", None, None)
        assert await pool.unload("a") is True
        assert pool.status()["models"][0]["status"] == "unloaded"

    run(main())


def test_concurrent_requests_for_one_unloaded_model_load_it_once():
    async def main():
        pool, events = make_pool(settings(("a", "b"), max_loaded=1))
        entries = await asyncio.gather(*(pool.acquire("b", 5) for _ in range(5)))
        assert [e for e, m in events if e == "model_loaded"] == ["model_loaded"]
        assert pool.entries["b"].leases == 5
        for e in entries:
            pool.release(e)

    run(main())


def test_estimate_counts_the_kv_cache_from_the_gguf_header(tmp_path):
    from tests.ggufmake import make_gguf

    path = make_gguf(
        tmp_path / "m.gguf",
        payload_bytes=4 * MiB,
        shape={
            "block_count": 18,
            "head_count": 4,
            "head_count_kv": 1,
            "embedding_length": 640,
            "key_length": 256,
            "value_length": 256,
        },
    )
    s = ServeSettings(**{**settings(("m",)).__dict__, "model_path": path, "n_ctx": 1024})
    size = path.stat().st_size
    kv = 18 * 1 * (256 + 256) * 2 * 1024 * 4  # four slots (parallel), each with n_ctx of its own
    assert estimate_bytes(s) == size + kv + max(64 * MiB, 16 * 512 * 640 * 4)
    # one rule with what serve logs at start (from llama.cpp's view of the same header)
    from llmctl.serve.backend import kv_bytes_per_token

    meta = {
        "general.architecture": "llama",
        "llama.block_count": "18",
        "llama.attention.head_count": "4",
        "llama.attention.head_count_kv": "1",
        "llama.embedding_length": "640",
        "llama.attention.key_length": "256",
        "llama.attention.value_length": "256",
    }
    assert kv_bytes_per_token(meta) * 1024 * 4 == kv


# -- the config keys and the settings ------------------------------------------------------------------


def test_service_models_keys(write_config):
    from llmctl.config import load_config
    from llmctl.errors import ConfigError

    write_config(
        "version: 1\nservices:\n  chat:\n    models: [a, b]\n    memory_budget: 6G\n    pinned: [b]\n"
        "    max_loaded: 2\n    keep_alive_s: 300\n"
    )
    spec = load_config().config.services["chat"]
    assert spec.model == "a" and spec.served_models == ["a", "b"] and spec.memory_budget == 6 << 30
    write_config("version: 1\nservices:\n  chat:\n    model: c\n    models: [a, b]\n")
    assert load_config().config.services["chat"].served_models == ["c", "a", "b"]
    for body, message in [
        ("models: [a, b]\n    pinned: [z]", r"services\.chat.*pinned: 'z' is not a model of this service"),
        ("models: [a, b]\n    preload: [z]", r"preload: 'z' is not a model"),
        ("models: [a, b]\n    pinned: [a, b]\n    max_loaded: 1", r"2 models are pinned but max_loaded is 1"),
        ("models: [a, a]", r"named twice"),
        ("models: [a]\n    memory_budget: lots", r"services\.chat\.memory_budget: .*size"),
        ("models: [a]\n    max_loaded: 0", r"services\.chat\.max_loaded"),
    ]:
        write_config(f"version: 1\nservices:\n  chat:\n    {body}\n")
        with pytest.raises(ConfigError, match=message):
            load_config()


def test_settings_with_several_model_paths(write_config, tmp_path):
    from llmctl.config import load_config
    from llmctl.errors import UsageError
    from llmctl.paths import resolve_paths
    from llmctl.serve.settings import resolve_settings
    from tests.ggufmake import make_gguf

    a, b = make_gguf(tmp_path / "a.gguf"), make_gguf(tmp_path / "b.gguf", seed=1)
    write_config(
        f"version: 1\nservices:\n  chat:\n    models: [{a}, {b}]\n    allow_unverified_path: true\n"
        f"    max_loaded: 1\n    keep_alive_s: 60\n"
    )
    s = resolve_settings(load_config(), resolve_paths(), "chat")
    assert [m.path for m in s.served] == [a, b] and s.model_path == a and s.model_name == s.served[0].name
    assert (s.pool.max_loaded, s.pool.keep_alive_s, s.preload) == (1, 60.0, (s.served[0].name,))
    one = s.for_model(s.served[1])
    assert (one.model_path, one.models, one.served[0].path) == (b, (), b)
    s2 = resolve_settings(load_config(), resolve_paths(), "chat", max_loaded=2)
    assert s2.pool.max_loaded == 2
    # --model A --model B replaces the service's models
    s3 = resolve_settings(load_config(), resolve_paths(), "chat", model=[str(b)])
    assert s3.served[0].path == b and s3.models == ()
    with pytest.raises(UsageError, match="--max-loaded"):
        resolve_settings(load_config(), resolve_paths(), "chat", max_loaded=0)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.gguf").hardlink_to(a)
    with pytest.raises(UsageError, match="two of the models to serve are named"):
        resolve_settings(load_config(), resolve_paths(), "chat", model=[str(a), str(tmp_path / "x" / "a.gguf")])


def test_gpu_memory_reads_nvidia_smi(tmp_path, monkeypatch):
    """nvidia-smi cannot run here (no GPU): a script in its place answers as it does
    (`--query-compute-apps=pid,used_memory --format=csv,noheader,nounits`)."""
    import os
    import stat

    from llmctl.serve import resources

    assert resources.process_rss() > 0
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho '{os.getpid()}, 1024'\necho '1, 77'\necho '{os.getpid()}, 512'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert resources.gpu_memory() == 1536 << 20
    assert resources.gpu_memory(pid=2) == 0
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert resources.gpu_memory() is None
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert resources.gpu_memory() is None


def test_slots_come_from_the_engine_or_the_settings_parallel():
    from types import SimpleNamespace

    from llmctl.serve.pool import slots_of

    s = settings(("a",))
    assert slots_of(s) == s.parallel == 4  # the settings' parallel: KV for each slot
    assert slots_of(SimpleNamespace(n_ctx=512)) == 1  # an engine that says nothing: one at a time
    assert slots_of(s, SimpleNamespace(parallel=8)) == 8  # the engine's own count first
