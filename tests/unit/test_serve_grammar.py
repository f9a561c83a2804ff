"""response_format -> GBNF (llmctl.serve.grammar): what is refused, what the grammar says, and that
llama.cpp's own parser takes every grammar the module writes (Hypothesis, random hostile schemas).

What crashes llama.cpp, and that a real server refuses or survives it all, is in
tests/integration/test_serve_schemas.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp", reason="the converter is llama-cpp-python's")

from llmctl.serve.grammar import (  # noqa: E402
    Bounds,
    SchemaError,
    grammar_for_response_format,
    schema_to_gbnf,
)

from tests.conftest import REPO  # noqa: E402


def rules(gbnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines())


# -- refused, with the key named ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema, param, words",
    [
        ({"enum": []}, "schema.enum", "at least one value"),
        ({"anyOf": []}, "schema.anyOf", "at least one schema"),
        ({"oneOf": []}, "schema.oneOf", "at least one schema"),
        ({"allOf": []}, "schema.allOf", "non-empty"),
        ({"type": []}, "schema.type", "at least one type"),
        ({"type": ["string", "string"]}, "schema.type", "at most once"),
        ({"type": "foo"}, "schema.type", "unknown type"),
        ({"type": "foo", "enum": [None]}, "schema.type", "unknown type"),  # found by the property test below
        ({"type": "object", "properties": {"a": {"enum": []}}}, "schema.properties.a.enum", "at least one value"),
        ({"const": "\u0000"}, "schema.const", "U+0000"),
        ({"const": {"k": ["ok", "a\u001fb"]}}, "schema.const.k[1]", "U+001F"),
        ({"enum": ["fine", "\u0085"]}, "schema.enum[1]", "U+0085"),
        ({"type": "object", "properties": {"\u0000": {}}}, "schema.properties", "U+0000"),
        ({"const": "x" * 1025}, "schema.const", "limit is 1024"),
        ({"enum": list(range(257))}, "schema.enum", "limit is 256"),
        ({"$ref": "#/$defs/missing"}, "schema.$ref", "does not resolve"),
        ({"$ref": "https://example.com/s.json"}, "schema.$ref", "only local"),
        ({"$ref": "other.json#/a"}, "schema.$ref", "only local"),
        ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "schema.$defs.a", "recursive"),
        (
            {"$ref": "#/$defs/a", "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}},
            "schema.$defs.a.items",
            "recursive",
        ),
        ({"$ref": "#"}, "schema", "recursive"),
        (
            {"$defs": {"a": {"enum": []}}, "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}},
            "schema.$defs.a.enum",
            "at least one value",
        ),
        ({"$ref": "#/$defs/a", "maxLength": 3, "$defs": {"a": {"type": "string"}}}, "schema", "$ref beside"),
        ({"anyOf": [{"type": "string"}], "maxLength": 3}, "schema", "anyOf beside maxLength"),
        ({"allOf": [{"type": "string"}]}, "schema.allOf[0]", "objects only"),
        ({"type": "array", "minItems": 100_000_000}, "schema.minItems", "limit is 256"),
        ({"type": "array", "maxItems": -1}, "schema.maxItems", "non-negative integer"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "schema", "less than minItems"),
        ({"type": "array", "items": False, "minItems": 1}, "schema", "items is false"),
        ({"type": "array", "prefixItems": [{}], "items": {}}, "schema", "prefixItems beside items"),
        ({"type": "string", "minLength": 200_000}, "schema.minLength", "limit is 1024"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "schema", "less than minLength"),
        ({"type": "string", "minLength": True}, "schema.minLength", "non-negative integer"),
        ({"type": "string", "pattern": "^a", "maxLength": 3}, "schema", "pattern beside"),
        ({"type": "string", "pattern": "["}, "schema.pattern", "not a regular expression"),
        ({"type": "string", "pattern": "^a(?=b)$"}, "schema.pattern", "lookahead"),
        ({"type": "string", "pattern": r"^(a)\1$"}, "schema.pattern", "backreferences"),
        ({"type": "string", "pattern": r"a\b"}, "schema.pattern", "start and the end"),
        ({"type": "string", "pattern": "a^b"}, "schema.pattern", "start and the end"),
        ({"type": "string", "pattern": "(?i)abc"}, "schema.pattern", "inline flags"),
        ({"type": "string", "pattern": "a*+"}, "schema.pattern", "possessive"),
        ({"type": "string", "pattern": "a{1,100}"}, "schema.pattern", "over the limit"),
        ({"type": "string", "pattern": "(a?)*"}, "schema.pattern", "empty string"),
        ({"type": "string", "pattern": "(a|)+"}, "schema.pattern", "empty string"),
        ({"type": "string", "pattern": "^[\\ud800-\\udfff]$"}, "schema.pattern", "no character"),
        ({"type": "string", "pattern": "x" * 513}, "schema.pattern", "limit is 512"),
        ({"type": "object", "properties": {f"p{i}": {} for i in range(129)}}, "schema.properties", "limit is 128"),
        ({"type": "object", "required": ["a"], "additionalProperties": False}, "schema.required", "not a property"),
        ({"type": "object", "required": "a"}, "schema.required", "list of property names"),
        ({"type": "object", "additionalProperties": 5}, "schema.additionalProperties", "true, false or a schema"),
        ({}, "schema", None),  # any value: accepted
        ({"not": {"type": "string"}, "minimum": 3}, "schema", None),  # not enforced, accepted (docstring)
        (False, "schema", "never be satisfied"),
        ([], "schema", "must be a JSON schema"),
    ],
)
def test_schemas_the_grammar_engine_cannot_take_are_refused(schema, param, words):
    if words is None:
        assert schema_to_gbnf(schema)
        return
    with pytest.raises(SchemaError) as info:
        schema_to_gbnf(schema, "schema")
    assert info.value.param == param, info.value.message
    assert words in info.value.message


def test_depth_and_size_are_bounded():
    deep: dict = {"type": "string"}
    for _ in range(30):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaError, match="deeper than 24"):
        schema_to_gbnf(deep)
    # $refs used many times count each time: a ref tree of 4**6 leaves is refused, not expanded.
    defs = {"l0": {"type": "integer"}}
    for i in range(1, 7):
        defs[f"l{i}"] = {"type": "array", "prefixItems": [{"$ref": f"#/$defs/l{i - 1}"}] * 4}
    with pytest.raises(SchemaError, match="more than 1000 subschemas"):
        schema_to_gbnf({"$defs": defs, "$ref": "#/$defs/l6"})
    wide = {"type": "object", "properties": {f"p{i}": {"enum": [f"v{j}" * 40 for j in range(40)]} for i in range(20)}}
    with pytest.raises(SchemaError, match="grammar for this schema would be"):
        schema_to_gbnf(wide)
    assert schema_to_gbnf(wide, bounds=Bounds(max_grammar_bytes=10**6))


@pytest.mark.parametrize(
    "response_format, param",
    [
        ({}, "response_format"),
        (None, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"schema": {"enum": []}}}, "response_format.json_schema.schema.enum"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_bad_response_formats_are_refused(response_format, param):
    with pytest.raises(SchemaError) as info:
        grammar_for_response_format(response_format)
    assert info.value.param == param


# -- what the grammar says ------------------------------------------------------------------------------


def test_text_needs_no_grammar_and_json_object_is_any_object():
    assert grammar_for_response_format({"type": "text"}) is None
    g = rules(grammar_for_response_format({"type": "json_object"}))
    assert g["root"] == "object"
    # A JSON string character: no raw control characters (llama-cpp-python's allowed them).
    assert g["char"].startswith('[^"\\\\\\x7F\\x00-\\x1F]')


@pytest.mark.parametrize("value", ['a"b', "a\\b", "tab\there", "\U0001f600", "é", 5, None, {"k": [True]}])
def test_constants_are_matched_as_their_json_text(value):
    if isinstance(value, str) and "\t" in value:
        with pytest.raises(SchemaError, match="control character"):
            schema_to_gbnf({"const": value})
        return
    g = rules(schema_to_gbnf({"const": value}))
    # The literal is the JSON text, ASCII only (non-ASCII as \\u escapes any tokenizer can write),
    # written for GBNF with every quote and backslash escaped.
    assert g["root"].isascii()
    assert _gbnf_literal_value(g["root"]) == json.dumps(value)


def _gbnf_literal_value(lit: str) -> str:
    """The text a one-literal GBNF rule matches (for the escapes grammar.py writes)."""
    assert lit.startswith('"') and lit.endswith('"')
    return re.sub(
        r"\\x([0-9A-F]{2})|\\u([0-9A-F]{4})|\\U([0-9A-F]{8})",
        lambda m: chr(int(next(g for g in m.groups() if g), 16)),
        lit[1:-1],
    )


def test_property_names_and_empty_names_keep_their_own_rules():
    g = rules(
        schema_to_gbnf(
            {
                "type": "object",
                "properties": {"": {"type": "string"}, 'q"\\': {"type": "integer"}, "space": {"type": "boolean"}},
                "required": ["", 'q"\\', "space"],
            }
        )
    )
    assert g["root"].startswith('"{" space ')  # the root is the object, not the property named ""
    kv = [v for k, v in g.items() if k.endswith("kv")]
    names = sorted(_gbnf_literal_value(v.split(" space ")[0]) for v in kv)
    assert names == sorted(json.dumps(n) for n in ["", 'q"\\', "space"])
    assert g["space"] == '" "?'  # a property named "space" does not replace the whitespace rule


def test_refs_are_inlined_and_cannot_shadow_builtin_rules():
    g = rules(
        schema_to_gbnf(
            {
                "$defs": {"space": {"type": "integer"}, "char": {"enum": ["x"]}},
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/space"}, "b": {"$ref": "#/$defs/char"}},
                "required": ["a", "b"],
            }
        )
    )
    assert g["space"] == '" "?'
    assert "integer" in g["a-kv"] and '"\\x22x\\x22"' in " ".join(g.values())


def test_types_lists_apply_sibling_keywords_to_each_type():
    g = rules(schema_to_gbnf({"type": ["string", "null"], "maxLength": 2}))
    assert g["root"] == "alternative-0 | null"
    assert g["alternative-0"] == '"\\"" (char (char)?)? "\\"" space'


@pytest.mark.parametrize(
    "pattern, grammar",
    [
        (r"^\d{3}$", r'"\"" pattern-1 pattern-1 pattern-1 "\"" space'),
        (r"^\.$", r'"\"" "." "\"" space'),
        (r"^a\x00b$", r'"\"" "a\x5Cu0000b" "\"" space'),  # NUL as the JSON escape \u0000: writable
        (r"^(?:yes|no)$", r'"\"" ("yes" | "no") "\"" space'),
        (r'^"$', r'"\"" "\x5C\x22" "\"" space'),  # a quote in the value is \" in the JSON text
        ("abc", r'"\"" char* "abc" char* "\"" space'),  # unanchored: a search, as JSON Schema says
    ],
)
def test_patterns_become_grammar_over_the_json_text(pattern, grammar):
    assert rules(schema_to_gbnf({"type": "string", "pattern": pattern}))["root"] == grammar


def test_a_negated_class_keeps_json_escapes_for_what_must_be_escaped():
    g = rules(schema_to_gbnf({"type": "string", "pattern": "^[^a]$"}))
    # Raw: every character but "a", quote, backslash, controls and surrogates; the rest as JSON escapes.
    assert g["root"] == r'"\"" ([ -!#-\x5B\x5D-`b-~\x80-\uD7FF\uE000-\U0010FFFF] | escaped) "\"" space'
    assert '"\\x5C\\x5C"' in g["escaped"] and '"\\x5Cn"' in g["escaped"] and '"\\x5C\\x22"' in g["escaped"]


# -- llama.cpp's parser takes every grammar this module writes ----------------------------------------------


class Parser:
    """llama.cpp's GBNF parser in a worker process (tests/gbnf_check.py)."""

    def __init__(self, model) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gbnf_check", str(model)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def accepts(self, gbnf: str) -> bool:
        self.proc.stdin.write(json.dumps(gbnf) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer in ("ok", "refused"), f"the parser process died (exit {self.proc.poll()}) on:\n{gbnf}"
        return answer == "ok"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def parser(smoke_store):
    p = Parser(smoke_store / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf")
    yield p
    p.close()


@pytest.mark.model
def test_the_parser_check_can_fail(parser):
    assert parser.accepts('root ::= "a"')
    # What llama-cpp-python's converter writes for enum: [], anyOf: [], type: [] (an empty rule
    # before another one), and for the pattern \d (an escape GBNF does not have).
    assert not parser.accepts('root ::= \nspace ::= " "?')
    assert not parser.accepts('root ::= "\\d"')  # what it wrote for pattern \d
    assert not parser.accepts("root ::= root")  # left recursion


def _schemas():
    from hypothesis import strategies as st

    hostile_text = st.sampled_from(
        [
            "",
            "a",
            'q"',
            "b\\s",
            "\u0000",
            "\u001f",
            "\u0085",
            "\U0001f600",
            "é",
            "space",
            "root",
            "char",
            "-",
            "a b",
            "x" * 300,
        ]
    )
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_text,
    )
    count = st.one_of(st.integers(-2, 300), st.just(10**8), st.booleans(), st.just(1.5))
    pattern = st.one_of(
        st.sampled_from(
            [
                r"^\d+$",
                r"^\.$",
                "abc",
                r"^[^a]$",
                "(a?)*",
                r"^a\x00b$",
                "[",
                r"^(a|b){2,5}c?$",
                r"\w+@\w+\.com",
                "^$",
                "a{0,64}",
                "(?i)x",
                r"^\S+$",
                r"^[\s\S]$",
                r"^a|b$",
                ".*",
                r"^[\]\-\\]$",
                r"\u00e9",
            ]
        ),
        st.text(alphabet="ab.|()[]^$*+?{}0123,\\d-", max_size=12),
    )
    keyword = st.sampled_from(
        [
            "type",
            "enum",
            "const",
            "anyOf",
            "oneOf",
            "allOf",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "pattern",
            "format",
            "$ref",
            "description",
            "$defs",
        ]
    )

    def node(children):
        value_for = {
            "type": st.one_of(
                st.sampled_from(["string", "number", "integer", "boolean", "null", "object", "array", "foo", "value"]),
                st.lists(st.sampled_from(["string", "null", "integer", "object"]), max_size=3),
            ),
            "enum": st.lists(scalar, max_size=3),
            "const": scalar,
            "anyOf": st.lists(children, max_size=3),
            "oneOf": st.lists(children, max_size=3),
            "allOf": st.lists(children, max_size=2),
            "properties": st.dictionaries(hostile_text, children, max_size=3),
            "required": st.lists(hostile_text, max_size=3),
            "additionalProperties": st.one_of(st.booleans(), children),
            "items": st.one_of(st.booleans(), children, st.lists(children, max_size=2)),
            "prefixItems": st.lists(children, max_size=2),
            "minItems": count,
            "maxItems": count,
            "minLength": count,
            "maxLength": count,
            "pattern": pattern,
            "format": st.sampled_from(["date", "date-time", "uuid", "email", "time"]),
            "$ref": st.sampled_from(["#", "#/$defs/a", "#/$defs/missing", "#/properties/x", "https://x/y"]),
            "description": hostile_text,
            "$defs": st.dictionaries(st.sampled_from(["a", "space", "root"]), children, max_size=2),
        }
        return st.lists(keyword, max_size=4, unique=True).flatmap(
            lambda keys: st.fixed_dictionaries({k: value_for[k] for k in keys})
        )

    return st.recursive(st.one_of(st.booleans(), node(st.just({}))), node, max_leaves=12)


@pytest.mark.model
def test_every_grammar_written_is_taken_by_llama_cpp(parser):
    """Hostile random schemas: each is either refused with a SchemaError, or its grammar is one
    llama.cpp's parser accepts (a grammar it refuses is a NULL sampler: SIGSEGV in llama-cpp-python)."""
    from hypothesis import HealthCheck, given, settings

    seen = {"refused": 0, "written": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_schemas())
    def check(schema):
        try:
            gbnf = schema_to_gbnf(schema)
        except SchemaError as exc:
            assert exc.param.startswith("schema") and exc.message
            seen["refused"] += 1
            return
        assert "\x00" not in gbnf
        assert parser.accepts(gbnf), f"llama.cpp refused the grammar of {schema!r}:\n{gbnf}"
        seen["written"] += 1

    check()
    assert seen["refused"] and seen["written"], seen  # both kinds were exercised


@pytest.mark.model
def test_the_engine_refuses_a_grammar_llama_cpp_cannot_parse(smoke_store):
    """Defence in depth under grammar.py: the engine parses a GBNF with llama.cpp before use and
    answers 400 instead of handing llama-cpp-python a NULL sampler. In a subprocess: were it to
    crash, pytest would not go with it."""
    model = smoke_store / "models" / "smoke" / "gemma-3-270m-q4_k_m.gguf"
    bad = ['root ::= \nspace ::= " "?', 'root ::= "\\d"', "root ::= root", 'root ::= "a\x00"']
    script = f"""
import json, sys
from llama_cpp import Llama
import llama_cpp.llama_cpp as C
from llmctl.serve.engine import BadRequest
from llmctl.serve.sampling import grammar_sampler
llm = Llama(model_path={str(model)!r}, vocab_only=True, verbose=False)
for bad in json.loads(sys.argv[1]):
    try:
        grammar_sampler(llm._model.vocab, bad)
    except BadRequest as exc:
        print("refused", exc.status)
    else:
        sys.exit("accepted " + repr(bad))
sampler = grammar_sampler(llm._model.vocab, 'root ::= "ok"')
C.llama_sampler_free(sampler)
print("accepted" if sampler else "NULL")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(bad)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:5] == ["refused 400"] * 4 + ["accepted"]
