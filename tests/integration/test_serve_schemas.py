"""Schemas that crash llama.cpp, found by running each through llama-cpp-python's own
`response_format` path in a subprocess (a SIGSEGV or SIGABRT cannot take pytest down), and a real
`llmctl serve` refusing every one of them or serving it safely, then still serving.

Why they crash (llama-cpp-python 0.3.x, the llama.cpp it vendors):
- an empty enum/anyOf/type list is an empty rule, a GBNF parse error; llama-cpp-python adds the
  NULL grammar sampler that follows without a check: SIGSEGV at the first token;
- so is a regex escape its converter copies into GBNF raw (`\\d`, `\\w`, `\\.`);
- a literal that needs a NUL character (a `const`, an `enum` value or a property name "\\u0000", a
  pattern with `\\x00`; the converter writes JSON's `\\u0000` escape into GBNF, where it means the
  character itself) can be produced by no token: every candidate is rejected, one is sampled anyway,
  and llama.cpp aborts with "Unexpected empty grammar stack" (SIGABRT).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._serve import assert_openai_error, start_smoke, stop_server
from tests.conftest import REPO

pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

SIGSEGV, SIGABRT = -signal.SIGSEGV, -signal.SIGABRT
CRASHERS = [
    ({"enum": []}, SIGSEGV),
    ({"anyOf": []}, SIGSEGV),
    ({"type": []}, SIGSEGV),
    ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, SIGSEGV),
    ({"type": "string", "pattern": "^\\d+$"}, SIGSEGV),
    ({"type": "string", "pattern": "^\\w$"}, SIGSEGV),
    ({"type": "string", "pattern": "^\\.$"}, SIGSEGV),
    ({"const": "\u0000"}, SIGABRT),
    ({"enum": ["\u0000"]}, SIGABRT),
    ({"type": "object", "properties": {"\u0000": {"type": "string"}}, "required": ["\u0000"]}, SIGABRT),
    ({"type": "string", "pattern": "^a\\x00b$"}, SIGABRT),
]
IDS = [json.dumps(s)[:50] for s, _ in CRASHERS]

OLD_PATH = """
import json, sys
from llmctl.serve.engine import _model_params_hook
from llama_cpp import Llama
undo = _model_params_hook()
llm = Llama(model_path=sys.argv[1], n_ctx=256, chat_format="gemma", verbose=False)
undo()
llm.create_chat_completion(messages=[{"role": "user", "content": "Give me JSON."}], max_tokens=24,
                           temperature=0.8, seed=1,
                           response_format={"type": "json_object", "schema": json.loads(sys.argv[2])})
"""


def model_path(smoke_store: Path) -> Path:
    return smoke_store / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf"


@pytest.mark.parametrize("schema, signal_", CRASHERS, ids=IDS)
def test_the_schema_crashes_llama_cpp_on_the_old_path(smoke_store, schema, signal_):
    """The finding, kept honest: each of these kills a process that hands llama-cpp-python the
    response_format directly (as serve did). If an upgrade fixes one, this fails: update the list."""
    proc = subprocess.run(
        [sys.executable, "-c", OLD_PATH, str(model_path(smoke_store)), json.dumps(schema)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == signal_, (proc.returncode, proc.stderr[-1500:])


@pytest.fixture(scope="module")
def served(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_smoke(
        tmp_path_factory.mktemp("schemas"), smoke_store, n_ctx=1024, limits="max_tokens: 160\nrate_limit_rpm: 0"
    )
    try:
        yield server
    finally:
        assert stop_server(server) == 0, "\n".join(server.log_lines()[-20:])


def chat(served, response_format: dict, max_tokens: int = 96) -> httpx.Response:
    return httpx.post(
        served.url + "/v1/chat/completions",
        timeout=300,
        json={
            "messages": [{"role": "user", "content": "Give me JSON."}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": 3,
            "response_format": response_format,
        },
    )


def assert_alive(served) -> None:
    assert served.proc.poll() is None, "\n".join(served.log_lines()[-20:])
    r = httpx.post(served.url + "/v1/completions", json={"prompt": "One, two,", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("schema, _signal", CRASHERS, ids=IDS)
def test_serve_refuses_or_survives_every_crashing_schema(served, schema, _signal):
    r = chat(served, {"type": "json_object", "schema": schema}, max_tokens=24)
    if r.status_code == 400:
        err = assert_openai_error(r, 400, "invalid_schema")
        assert err["param"].startswith("response_format.schema")
        r = chat(served, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        err = assert_openai_error(r, 400, "invalid_schema")
        assert err["param"].startswith("response_format.json_schema.schema")
    else:
        # Served: what the model wrote is the JSON the pattern describes (cut short, a prefix of it).
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["message"]["content"]
        if choice["finish_reason"] == "stop":
            assert re.search(schema["pattern"].replace("\\x00", "\x00"), json.loads(text)), text
        else:
            assert text.startswith('"') and '"' not in text[1:].rstrip(), text
    assert_alive(served)


@pytest.mark.parametrize(
    "schema, param",
    [
        ({"type": "array", "items": {"type": "integer"}, "minItems": 100_000_000}, "minItems"),
        ({"type": "string", "minLength": 200_000}, "minLength"),
        ({"type": "object", "properties": {f"p{i}": {"enum": ["v" * 500] * 3} for i in range(100)}}, "schema"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "a"),
    ],
)
def test_schemas_that_would_hog_the_model_are_refused_at_once(served, schema, param):
    r = chat(served, {"type": "json_object", "schema": schema})
    err = assert_openai_error(r, 400, "invalid_schema")
    assert err["param"].endswith(param), err
    assert_alive(served)


def test_what_the_grammar_allows_is_what_the_schema_says(served):
    schema = {
        "type": "object",
        "required": ["name", "age", "tags", "mood"],
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
            "mood": {"const": 'a\\b"c\U0001f600'},
        },
    }
    r = chat(served, {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    value = json.loads(choice["message"]["content"])
    assert set(value) == {"name", "age", "tags", "mood"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["age"], int)
    assert 1 <= len(value["tags"]) <= 2 and set(value["tags"]) <= {"a", "b"}
    assert value["mood"] == 'a\\b"c\U0001f600'
    r = chat(served, {"type": "json_object", "schema": {"type": "string", "pattern": "^[0-9]{3}-[a-z]{2}$"}})
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", json.loads(r.json()["choices"][0]["message"]["content"]))
    # Any object: it may run past max_tokens (then it is cut); when it ends, it is an object.
    choice = chat(served, {"type": "json_object"}).json()["choices"][0]
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
