"""The HTTP app in process, on the real Engine and the smoke model: the states a subprocess test cannot
pin down deterministically (the model still loading)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.model


def test_health_is_503_while_loading_then_200(smoke_model):
    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.app import create_app
    from llmctl.serve.batch import Engine, load_backend
    from llmctl.serve.settings import resolve_settings

    settings = resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=256)
    release = threading.Event()

    def held_loader(s):  # the real loader, held back until the test has looked at "loading"
        assert release.wait(120)
        return load_backend(s)

    engine = Engine(settings, loader=held_loader)
    records: list[dict] = []
    app, ctx = create_app(settings, engine, access_log=records.append)
    engine.start()

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            assert r.headers["Retry-After"] == "1"
            r = await c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            assert (await c.get("/ready")).status_code == 503
            assert (await c.get("/v1/models")).json()["data"][0]["id"] == "smoke"  # listed while loading
            release.set()
            await asyncio.to_thread(engine.loaded.wait, 120)
            assert engine.state == "ready"
            assert (await c.get("/health")).json() == {"status": "ok", "model": "smoke"}
            r = await c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
            ctx.shutting_down = True
            assert (await c.get("/health")).json()["error"]["code"] == "shutting_down"

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        assert engine.stop(30)
    assert [r["status"] for r in records if r["path"] == "/health"] == [503, 200, 503]


def test_cancel_during_prompt_processing_leaves_the_model_consistent(smoke_model):
    """A job cancelled while its prompt is processed stops between batches; the next request with
    the same prompt (which reuses the cached prefix) gives the same answer as before."""
    import dataclasses

    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.batch import Engine
    from llmctl.serve.engine import EngineError, GenerationRequest
    from llmctl.serve.settings import resolve_settings

    settings = dataclasses.replace(resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=512), n_batch=16)
    engine = Engine(settings)
    engine.start()
    assert engine.loaded.wait(120) and engine.state == "ready"
    prompt = "The quick brown fox jumps over the lazy dog. " * 6
    params = {"prompt": prompt, "max_tokens": 6, "temperature": 0.0}

    async def run(cancel_at_start: bool):
        p = dict(params)
        if cancel_at_start:  # another long prompt: nothing of it is cached, all of it to process
            p["prompt"] = "Pack my box with five dozen liquor jugs. " * 6
        job = await engine.submit(GenerationRequest("completion", p))
        await job.wait_started(60)
        if cancel_at_start:
            job.cancel()
        out = None
        try:
            async for item in job:
                out = item
        except EngineError as exc:
            out = exc
        return job, out

    async def scenario():
        _, first = await run(False)
        job, cancelled = await run(True)
        _, again = await run(False)
        return first, job, cancelled, again

    try:
        first, job, cancelled, again = asyncio.run(scenario())
    finally:
        assert engine.stop(30)
    assert job.cancelled and job.stats.completion_tokens < 6
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert again["usage"] == first["usage"]


def test_without_keys_the_rate_limit_is_per_client_ip(smoke_model):
    import dataclasses

    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.app import create_app
    from llmctl.serve.batch import Engine
    from llmctl.serve.settings import resolve_settings

    base = resolve_settings(load_config(), resolve_paths(), "smoke")
    assert not base.auth_enabled
    settings = dataclasses.replace(
        base, limits=base.limits.model_copy(update={"rate_limit_burst": 3, "rate_limit_rpm": 1.0})
    )
    app, _ = create_app(settings, Engine(settings), access_log=lambda r: None)  # /v1/models needs no model

    async def scenario() -> tuple[list[int], int, int]:
        one = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 1000)), base_url="http://s")
        two = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.2", 1000)), base_url="http://s")
        async with one, two:
            codes = [(await one.get("/v1/models")).status_code for _ in range(4)]
            other = (await two.get("/v1/models")).status_code
            health = (await one.get("/health")).status_code  # not rate limited (503: nothing loaded)
        return codes, other, health

    codes, other, health = asyncio.run(scenario())
    assert codes == [200, 200, 200, 429]
    assert other == 200
    assert health == 503


def test_the_engine_reports_each_tokens_logprobs(smoke_model):
    """params["logprobs"] = k (what issue 14's protocol will pass): each generated token's logprob and
    the k most likely, computed from that step's logits; streamed with the chunk that carries the
    token's text, all at once when not streamed."""
    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.batch import Engine
    from llmctl.serve.engine import GenerationRequest
    from llmctl.serve.settings import resolve_settings

    engine = Engine(resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=256))
    engine.start()
    assert engine.loaded.wait(120) and engine.state == "ready"
    params = {"prompt": "1, 2, 3, 4,", "max_tokens": 5, "temperature": 0.0, "logprobs": 3}

    async def run(stream: bool) -> list[dict]:
        job = await engine.submit(GenerationRequest("completion", dict(params), stream=stream))
        await job.wait_started(60)
        return [item async for item in job]

    try:
        whole = asyncio.run(run(False))[-1]
        chunks = asyncio.run(run(True))
    finally:
        assert engine.stop(30)
    entries = whole["choices"][0]["logprobs"]["content"]
    assert len(entries) == whole["usage"]["completion_tokens"] == 5
    assert "".join(e["token"] for e in entries) == whole["choices"][0]["text"]
    for e in entries:
        assert e["logprob"] <= 0 and bytes(e["bytes"]).decode() == e["token"]
        top = [t["logprob"] for t in e["top_logprobs"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the most likely one was drawn
    streamed = [e for c in chunks for e in ((c["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]


def test_bias_and_penalties_applied_in_python_draw_what_llama_cpps_samplers_draw(smoke_model):
    """sampling.ChainSampler applies logit_bias and the penalties to the step's logits itself (llama.cpp's
    penalty sampler looks the whole vocabulary up); the same chain with llama.cpp's own samplers draws
    the same tokens, step after step, with the same seed."""
    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.backend import Backend
    from llmctl.serve.sampling import ChainSampler, SamplingSpec
    from llmctl.serve.settings import resolve_settings

    settings = dataclasses.replace(resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=256), parallel=1)
    backend = Backend(settings)
    try:
        for params in (
            {
                "repeat_penalty": 1.3,
                "frequency_penalty": 0.5,
                "presence_penalty": 0.3,
                "logit_bias": {236764: 5.0, 1: -100.0},
                "temperature": 0.9,
                "seed": 11,
            },
            {"repeat_penalty": 1.5, "temperature": 0.0},
        ):
            spec = SamplingSpec.of(params, "chat")
            ours, theirs = ChainSampler(backend, spec), ChainSampler(backend, spec, native_penalties=True)
            tokens = backend.tokenize("Repeat after me: la la la la la", add_bos=True)
            backend.clear()
            backend.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [False] * (len(tokens) - 1) + [True])
            index, drawn = len(tokens) - 1, []
            for step in range(40):
                reference = theirs.sample(index)  # reads the logits; ours then changes them in place
                assert ours.sample(index) == reference, (params, step, drawn)
                drawn.append(reference)
                backend.decode([reference], [len(tokens) + step], [0], [True])
                index = 0
            assert len(set(drawn)) > 3  # the penalties were at work: not one token over and over
            ours.close()
            theirs.close()
    finally:
        backend.close()


def test_requests_arriving_together_decode_their_shared_prefix_once(smoke_model):
    """Three requests with the same long prefix at once: one slot decodes it, the others copy its KV
    (the engine's donor path) and decode only their own ending; each answer is what it is alone."""
    from llmctl.config import load_config
    from llmctl.paths import resolve_paths
    from llmctl.serve.batch import Engine
    from llmctl.serve.engine import GenerationRequest
    from llmctl.serve.settings import resolve_settings

    settings = resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=1024)
    prefix = "Here is a list of facts about numbers and days of the week that you should read carefully. " * 12
    endings = ["1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "A, B, C, D, E,"]

    def run(prompts: list[str]) -> tuple[list[str], list[int]]:
        engine = Engine(settings)
        cached: list[int] = []
        engine.on_cached = cached.append
        engine.start()
        assert engine.loaded.wait(120) and engine.state == "ready"

        async def one(prompt: str) -> str:
            job = await engine.submit(
                GenerationRequest("completion", {"prompt": prompt, "max_tokens": 4, "temperature": 0.0})
            )
            await job.wait_started(60)
            return [item async for item in job][-1]["choices"][0]["text"]

        async def together() -> list[str]:
            return list(await asyncio.gather(*[one(p) for p in prompts]))

        try:
            return asyncio.run(together()), cached
        finally:
            assert engine.stop(30)

    prompts = [prefix + e for e in endings]
    alone = [run([p])[0][0] for p in prompts]
    answers, cached = run(prompts)
    assert answers == alone
    prefix_tokens = len(prefix.split())  # at least one token a word
    assert len(cached) == 2 and all(n >= prefix_tokens for n in cached), cached


def test_threads_default_to_the_physical_cores_not_llama_cpps_fixed_four(smoke_model):
    """With `n_threads: null` the context gets the physical cores this process may use (llama.cpp's own
    tools' default). llama.cpp's context default is a fixed 4: on a 2-core host that halved decode speed
    (bench_grammar: 41 against llama-server's 90 tok/s)."""
    import llama_cpp.llama_cpp as C

    from llmctl.config import load_config
    from llmctl.cpu import default_threads
    from llmctl.paths import resolve_paths
    from llmctl.serve.backend import Backend
    from llmctl.serve.settings import resolve_settings

    settings = dataclasses.replace(
        resolve_settings(load_config(), resolve_paths(), "smoke", n_ctx=256), parallel=1, n_threads=None
    )
    backend = Backend(settings)
    try:
        assert C.llama_n_threads(backend.ctx) == C.llama_n_threads_batch(backend.ctx) == default_threads()
    finally:
        backend.close()
    backend = Backend(dataclasses.replace(settings, n_threads=1))
    try:
        assert C.llama_n_threads(backend.ctx) == 1
    finally:
        backend.close()
