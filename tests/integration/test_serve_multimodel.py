"""Several models in one real `llmctl serve` (the smoke model under two and three names), and
`llmctl ps` reading it: loads alternate under --max-loaded 1, /models/unload and /models/load work
and need the key, `ps --json` tells the truth at each step (also with health's credential), a
pinned model survives the memory budget's unloading, an unknown model is 404."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests._serve import assert_openai_error, free_port, metric, start_server, stop_server, wait_healthy
from tests._store import link_smoke_store

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEY = "sk-test-multi-0123456789"


def add_name(home: Path, name: str, lock: dict) -> None:
    """The smoke model once more in the store under `name` (a hard link, and its verify stamp)."""
    entry = dict(lock["models"]["smoke"])
    src = home / "models" / entry["path"]
    dst = home / "models" / name / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    for s, d in ((src, dst), (src.with_name(f".{src.name}.verified"), dst.with_name(f".{dst.name}.verified"))):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    lock["models"][name] = {**entry, "path": f"{name}/{src.name}"}
    (home / "models.lock").write_text(json.dumps(lock, indent=2))


def setup_home(home: Path, smoke_store: Path, names: list[str]) -> None:
    lock = link_smoke_store(smoke_store, home)
    for name in names:
        add_name(home, name, lock)
    (home / "keys").write_text(KEY + "\n")


def ps(server, *args: str, env: dict | None = None) -> dict:
    """`llmctl ps --json` as the server's own config sees it; {model id: its row}."""
    from tests.conftest import run_llmctl

    environ = {"LLMCTL_HOME": str(server.home), "LLMCTL_CONFIG": str(server.home / "config.yaml"), **(env or {})}
    out = run_llmctl("ps", "--json", *args, env=environ)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["kind"] == "ps" and len(doc["servers"]) == 1 and doc["servers"][0]["ok"], doc
    return {m["id"]: m for m in doc["servers"][0]["models"]}


def statuses(rows: dict) -> dict:
    return {name: row["status"] for name, row in rows.items()}


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def complete(server, model: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    r = client.completions.create(model=model, prompt="Hello", max_tokens=2, temperature=0)
    return r.model


def test_two_models_with_max_loaded_1(smoke_store, tmp_path):
    home = tmp_path / "multi"
    setup_home(home, smoke_store, ["smoke-b"])
    config = (
        f"version: 1\nservices:\n  multi:\n    models: [smoke, smoke-b]\n    port: {free_port()}\n"
        f"    n_ctx: 256\n    api_keys_file: {home / 'keys'}\n"
    )
    server = start_server(home, config, "multi", "--max-loaded", "1")
    try:
        wait_healthy(server)
        rows = ps(server)
        assert statuses(rows) == {"smoke": "loaded", "smoke-b": "unloaded"}  # the default is preloaded
        smoke = rows["smoke"]
        assert smoke["default"] and smoke["n_ctx"] == 256 and smoke["slots"] >= 1 and smoke["busy"] == 0
        assert smoke["rss_bytes"] > 100 << 20 and smoke["estimate_bytes"] > smoke["rss_bytes"] // 2
        assert rows["smoke-b"]["rss_bytes"] is None and rows["smoke-b"]["idle_s"] is None

        listed = httpx.get(server.url + "/v1/models", headers=auth()).json()["data"]
        assert [(m["id"], m["status"]) for m in listed] == [("smoke", "loaded"), ("smoke-b", "unloaded")]

        # Requests to each alternate the loads: one model at a time.
        for turn, model in enumerate(["smoke-b", "smoke", "smoke-b"]):
            assert complete(server, model) == model
            rows = ps(server)
            other = "smoke" if model == "smoke-b" else "smoke-b"
            assert statuses(rows) == {model: "loaded", other: "unloaded"}, turn
        assert (rows["smoke"]["loads"], rows["smoke-b"]["loads"]) == (2, 2)
        assert (rows["smoke"]["unloads"], rows["smoke-b"]["unloads"]) == (2, 1)
        assert rows["smoke-b"]["requests_1m"] == 2 and rows["smoke-b"]["tokens_1m"] >= 1
        assert rows["smoke-b"]["idle_s"] is not None and rows["smoke-b"]["rss_bytes"] > 100 << 20

        # /models/unload and /models/load: the key is needed.
        r = httpx.post(server.url + "/models/unload", json={"model": "smoke-b"})
        assert_openai_error(r, 401, "invalid_api_key")
        r = httpx.post(server.url + "/models/unload", json={"model": "smoke-b"}, headers=auth())
        assert r.status_code == 200 and r.json()["status"] == "unloaded" and r.json()["was_loaded"], r.text
        assert statuses(ps(server)) == {"smoke": "unloaded", "smoke-b": "unloaded"}
        r = httpx.post(server.url + "/models/load", json={"model": "smoke"}, headers=auth(), timeout=120)
        assert r.status_code == 200 and r.json()["status"] == "loaded", r.text
        assert statuses(ps(server)) == {"smoke": "loaded", "smoke-b": "unloaded"}
        assert_openai_error(httpx.post(server.url + "/models/load", json={"name": "smoke"}, headers=auth()), 400)

        # An unknown model: 404 in OpenAI's shape, for a generation and for load/unload.
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert err.value.body["code"] == "model_not_found"
        for path in ("/models/load", "/models/unload"):
            assert_openai_error(
                httpx.post(server.url + path, json={"model": "nope"}, headers=auth()), 404, "model_not_found"
            )

        # Per-model metrics, with a `model` label.
        text = httpx.get(server.url + "/metrics", headers=auth()).text
        assert metric(text, "llmctl_model_loads_total", 'model="smoke"') == 3
        assert metric(text, "llmctl_model_loaded", 'model="smoke"') == 1
        assert metric(text, "llmctl_model_loaded", 'model="smoke-b"') == 0
        assert metric(text, "llmctl_model_requests_total", 'model="smoke-b"') == 2

        # ps as the sandboxed health unit runs it: the key from its credential, the config's key file
        # out of reach.
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "api-keys-multi").write_text(KEY + "\n")
        health_config = tmp_path / "health-config.yaml"
        health_config.write_text(config.replace(str(home / "keys"), "/nonexistent/keys"))
        rows = ps(server, env={"LLMCTL_CONFIG": str(health_config), "CREDENTIALS_DIRECTORY": str(creds)})
        assert statuses(rows) == {"smoke": "loaded", "smoke-b": "unloaded"}
        assert stop_server(server) == 0
    finally:
        stop_server(server)


def test_pinned_model_survives_the_memory_budget(smoke_store, tmp_path):
    from llmctl.serve.pool import estimate_bytes

    home = tmp_path / "pinned"
    setup_home(home, smoke_store, ["smoke-b", "smoke-c"])
    lock = json.loads((home / "models.lock").read_text())
    model_path = home / "models" / lock["models"]["smoke"]["path"]
    one = estimate_bytes(SimpleNamespace(model_path=model_path, n_ctx=256, n_batch=512))  # type: ignore[arg-type]
    config = (
        f"version: 1\nservices:\n  pinned:\n    models: [smoke, smoke-b, smoke-c]\n    port: {free_port()}\n"
        f"    n_ctx: 256\n    api_keys_file: {home / 'keys'}\n    pinned: [smoke]\n"
        f"    memory_budget: {int(one * 2.5)}\n"
    )
    server = start_server(home, config, "pinned")
    try:
        wait_healthy(server)
        assert statuses(ps(server)) == {"smoke": "loaded", "smoke-b": "unloaded", "smoke-c": "unloaded"}
        for model in ["smoke-b", "smoke-c", "smoke-b"]:
            assert complete(server, model) == model
            rows = ps(server)
            assert rows["smoke"]["status"] == "loaded" and rows["smoke"]["pinned"]
            assert sum(row["status"] == "loaded" for row in rows.values()) == 2
        assert rows["smoke"]["loads"] == 1 and rows["smoke"]["unloads"] == 0
        assert statuses(rows) == {"smoke": "loaded", "smoke-b": "loaded", "smoke-c": "unloaded"}
        assert_openai_error(
            httpx.post(server.url + "/models/unload", json={"model": "smoke"}, headers=auth()), 409, "model_pinned"
        )
        assert complete(server, "smoke") == "smoke"
        assert stop_server(server) == 0
    finally:
        stop_server(server)
