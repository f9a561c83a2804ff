"""`response_format` -> GBNF, in one validating step with size and complexity bounds.

llama.cpp's grammar engine aborts or crashes the whole process on grammars it cannot take: an empty
`enum`/`anyOf`/`type` gives an empty rule (SIGSEGV: the grammar sampler is NULL), a literal that no
token can produce (a NUL character) gives "Unexpected empty grammar stack" (SIGABRT), a regular
expression escape the converter passes through raw (`\\d`, `\\.`) is a GBNF parse error (SIGSEGV),
and `minItems: 100000000` expands into a grammar of gigabytes. So a schema is first *normalized*
here: every keyword that shapes the output is checked (types, emptiness, control characters,
bounds), local `$ref`s are inlined (remote and recursive ones are refused), and what is left is a
small canonical schema. llama-cpp-python's own converter (`llama_cpp.llama_grammar.SchemaConverter`)
then writes the GBNF, with four parts replaced where it is unsound:

- literals (constants, property names) are escaped for GBNF properly (it escapes only `"`, CR, LF,
  so `"a\\\\b"` or `"\\u0000"` in a constant turned into other or impossible characters);
- a JSON string character excludes raw control characters (it allowed them: invalid JSON);
- a property named "" no longer takes the name of the root rule;
- `pattern` is translated here, from Python's own regular-expression parser, into GBNF that
  matches the JSON text of a string (it passed escapes through raw and ignored JSON escaping).

What the grammar does not enforce (accepted, as JSON Schema treats unknown keywords): numeric
bounds (`minimum`, `multipleOf`, ...), `uniqueItems`, `not`, `if`/`then`/`else`, unknown `format`s,
`oneOf`'s "exactly one" (it is `anyOf`). Everything the grammar does enforce is exact or a subset
of what the schema allows, so what the model writes always validates where those keywords do.

Pure: no llama.cpp call, no model. The engine turns the GBNF text into a sampler.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

# A JSON value of any type (the converter's "value" rule); only this module writes it.
ANY_TYPE = "value"
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
# Keywords that only annotate: allowed beside $ref, anyOf/oneOf.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "$defs",
        "definitions",
        "deprecated",
        "readOnly",
        "writeOnly",
        "nullable",
        "strict",
    }
)
SUPPORTED_FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
# One JSON string character, without raw control characters (JSON requires them escaped).
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


@dataclass(frozen=True)
class Bounds:
    """What one request's schema may ask of the grammar engine."""

    max_depth: int = 24  # nesting of subschemas, after $refs are inlined
    max_nodes: int = 1000  # subschemas in all, after $refs are inlined
    max_properties: int = 128  # per object
    max_alternatives: int = 64  # anyOf/oneOf alternatives, types in a list
    max_enum: int = 256  # values of one enum
    max_literal: int = 1024  # characters of a const/enum string or a property name
    max_items: int = 256  # minItems, maxItems
    max_length: int = 1024  # minLength, maxLength
    max_pattern: int = 512  # characters of a pattern
    max_repeat: int = 64  # {n,m} counts in a pattern
    max_grammar_bytes: int = 64 * 1024  # the GBNF text


DEFAULT_BOUNDS = Bounds()


class SchemaError(ValueError):
    """A response_format the server refuses; `param` is where (response_format.json_schema...)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.message = f"{param}: {message}"
        self.param = param


def grammar_for_response_format(
    value: Any, param: str = "response_format", bounds: Bounds = DEFAULT_BOUNDS
) -> str | None:
    """GBNF for a request's `response_format`, or None for plain text.

    `{"type": "text"}`: None. `{"type": "json_object"}`: any JSON object (`"schema"` beside it, as
    llama-cpp-python accepts, constrains it). `{"type": "json_schema", "json_schema": {"schema": ...}}`:
    that schema. Raises SchemaError naming the key for anything else."""
    if not isinstance(value, dict):
        raise SchemaError('must be an object such as {"type": "json_object"}', param)
    kind = value.get("type")
    if kind is None:
        raise SchemaError("'type' is required: text, json_object or json_schema", param)
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema", {"type": "object"})
        where = f"{param}.schema"
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise SchemaError("must be an object with a 'schema'", f"{param}.json_schema")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise SchemaError("must be a string", f"{param}.json_schema.name")
        schema = spec.get("schema", {"type": "object"})
        where = f"{param}.json_schema.schema"
    else:
        raise SchemaError(f"unknown type {kind!r}: text, json_object or json_schema", f"{param}.type")
    return schema_to_gbnf(schema, where, bounds)


def schema_to_gbnf(schema: Any, param: str = "schema", bounds: Bounds = DEFAULT_BOUNDS) -> str:
    """GBNF for a JSON schema, within `bounds`; SchemaError names what is refused."""
    canonical = _Normalizer(schema, param, bounds).run()
    converter = _converter_class()(bounds)
    try:
        converter.visit(canonical, "")
    except SchemaError:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:  # a gap in the normalizer
        raise SchemaError(f"cannot be turned into a grammar ({type(exc).__name__}: {exc})", param) from None
    gbnf = converter.format_grammar()
    size = len(gbnf.encode("utf-8"))
    if size > bounds.max_grammar_bytes:
        raise SchemaError(
            f"the grammar for this schema would be {size} bytes; the limit is "
            f"{bounds.max_grammar_bytes} (fewer properties, alternatives or items)",
            param,
        )
    return gbnf


# -- GBNF text ---------------------------------------------------------------------------------------


def gbnf_char(cp: int) -> str:
    """One code point inside a GBNF literal or character class."""
    c = chr(cp)
    if c.isascii() and c.isalnum() or c in " !#$%&'()*+,./:;<=>?@_`{|}~":
        return c
    if cp <= 0xFF:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def gbnf_literal(text: str) -> str:
    """A GBNF literal matching exactly `text`."""
    return '"' + "".join(gbnf_char(ord(c)) for c in text) + '"'


def json_text_literal(text: str) -> str:
    """A GBNF literal matching the JSON-escaped form of `text` (ASCII only, so any tokenizer can write it)."""
    return gbnf_literal(json.dumps(text)[1:-1])


# -- the converter, where llama-cpp-python's is unsound ------------------------------------------------


@functools.cache
def _converter_class() -> type:
    """llama-cpp-python's SchemaConverter with the unsound parts replaced (see the module docstring).
    Made on first use, so that importing this module does not import llama_cpp."""
    from llama_cpp.llama_grammar import PRIMITIVE_RULES, BuiltinRule, SchemaConverter

    json_char = BuiltinRule(JSON_CHAR, [])

    class Converter(SchemaConverter):
        def __init__(self, bounds: Bounds) -> None:
            super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
            self._bounds = bounds
            self._root_seen = False

        def _format_literal(self, literal: str) -> str:
            return gbnf_literal(literal)

        def _add_primitive(self, name: str, rule: Any) -> str:
            if rule is PRIMITIVE_RULES["char"]:
                rule = json_char
            return super()._add_primitive(name, rule)

        def visit(self, schema: dict, name: str) -> str:
            if not name:  # the root; a later "" is a property named "" (or one made of symbols only)
                if self._root_seen:
                    name = "prop"
                self._root_seen = True
            return super().visit(schema, name)

        def _visit_pattern(self, pattern: str, name: str) -> str:
            body = PatternCompiler(self._add_rule, self._bounds).compile(pattern)
            return self._add_rule(name, r'"\"" ' + body + r' "\"" space')

    return Converter


# -- patterns -----------------------------------------------------------------------------------------

MAX_CP = 0x10FFFF
Ranges = list[tuple[int, int]]
# ECMA-262 classes (JSON Schema's regular-expression dialect): \d and \w are ASCII.
DIGIT: Ranges = [(0x30, 0x39)]
WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE: Ranges = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
]
LINE_TERMINATORS: Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
# What a JSON string holds raw; the rest of a class is written as JSON escapes.
RAW_OK: Ranges = [(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, MAX_CP)]
ESCAPED: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]


def _normalize(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for lo, hi in _normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CP:
        out.append((nxt, MAX_CP))
    return out


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out: Ranges = []
    for lo1, hi1 in _normalize(a):
        for lo2, hi2 in _normalize(b):
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return _normalize(out)


class PatternCompiler:
    """A regular expression -> GBNF for the JSON text of a string that matches it.

    Parsed by Python's own parser (`re._parser`, what `re.compile` uses). Supported: literals, `.`,
    classes (ranges, negation, `\\d \\w \\s` and their negations, ECMA-262 meanings), groups
    (capturing or `(?:...)`), alternation, `* + ? {n} {n,} {n,m}` (lazy forms too), `^` at the start
    and `$` at the end of an alternative (a side without an anchor allows any text there, as a JSON
    Schema pattern is a search). Refused: lookaround, backreferences, word boundaries, inline flags,
    possessive repeats, counts over `bounds.max_repeat`, unbounded repeats of what can be empty."""

    def __init__(self, add_rule: Callable[[str, str], str], bounds: Bounds) -> None:
        self.add_rule = add_rule
        self.bounds = bounds
        self.n = 0

    def compile(self, pattern: str) -> str:
        from re import _constants as C  # type: ignore[attr-defined]
        from re import _parser as P  # type: ignore[attr-defined]

        if len(pattern) > self.bounds.max_pattern:
            raise ValueError(f"is {len(pattern)} characters; the limit is {self.bounds.max_pattern}")
        try:
            parsed = P.parse(pattern)
        except Exception as exc:  # noqa: BLE001 - re.error, OverflowError, RecursionError: whatever sre_parse raises
            raise ValueError(f"is not a regular expression: {exc}") from None
        if parsed.state.flags & ~(C.SRE_FLAG_UNICODE):
            raise ValueError("inline flags such as (?i) are not supported")
        self.C = C
        items = list(parsed)
        alternatives = [list(a) for a in items[0][1][1]] if len(items) == 1 and items[0][0] is C.BRANCH else [items]
        texts = []
        for alt in alternatives:
            start = bool(alt) and alt[0][0] is C.AT and alt[0][1] in (C.AT_BEGINNING, C.AT_BEGINNING_STRING)
            end = bool(alt) and alt[-1][0] is C.AT and alt[-1][1] in (C.AT_END, C.AT_END_STRING)
            core = alt[1 if start else 0 : len(alt) - 1 if end else len(alt)]
            text, _ = self._seq(core)
            parts = (
                ([] if start else [self._any_text()]) + ([text] if text else []) + ([] if end else [self._any_text()])
            )
            texts.append(" ".join(parts))
        return self._alternation(texts)

    def _any_text(self) -> str:
        return self.add_rule("char", JSON_CHAR) + "*"

    def _alternation(self, texts: list[str]) -> str:
        nonempty = [t for t in texts if t]
        if not nonempty:
            return ""
        body = " | ".join(nonempty)
        if len(nonempty) < len(texts):
            return f"({body})?"
        return f"({body})" if len(nonempty) > 1 else body

    def _seq(self, items: list) -> tuple[str, bool]:
        """(GBNF, can it match the empty string)."""
        C = self.C
        parts: list[str] = []
        nullable = True
        literal: list[int] = []

        def flush() -> None:
            if literal:
                parts.append(json_text_literal("".join(map(chr, literal))))
                literal.clear()

        for op, arg in items:
            if op is C.LITERAL:
                self._check_cp(arg)
                literal.append(arg)
                nullable = False
                continue
            flush()
            text, empty = self._item(op, arg)
            if text:
                parts.append(text)
            nullable = nullable and empty
        flush()
        return " ".join(parts), nullable

    def _check_cp(self, cp: int) -> None:
        if 0xD800 <= cp <= 0xDFFF:
            raise ValueError("a lone surrogate (\\ud800-\\udfff) cannot be written")

    def _item(self, op: Any, arg: Any) -> tuple[str, bool]:
        C = self.C
        if op is C.NOT_LITERAL:
            return self._class(_complement([(arg, arg)])), False
        if op is C.ANY:
            return self._class(_complement(LINE_TERMINATORS)), False
        if op is C.IN:
            return self._class(self._set(arg)), False
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg
            if add_flags or del_flags:
                raise ValueError("inline flags such as (?i:...) are not supported")
            text, empty = self._seq(list(sub))
            return (f"({text})" if text else ""), empty
        if op is C.BRANCH:
            results = [self._seq(list(alt)) for alt in arg[1]]
            return self._alternation([t for t, _ in results]), any(e or not t for t, e in results)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):
            return self._repeat(*arg)
        if op is C.AT:
            raise ValueError("'^' and '$' are supported only at the start and the end (of an alternative)")
        names = {
            C.POSSESSIVE_REPEAT: "possessive repeats",
            C.ATOMIC_GROUP: "atomic groups",
            C.GROUPREF: "backreferences",
            C.GROUPREF_EXISTS: "conditional groups",
            C.ASSERT: "lookahead/lookbehind",
            C.ASSERT_NOT: "lookahead/lookbehind",
        }
        raise ValueError(f"{names.get(op, str(op).lower())} are not supported")

    def _repeat(self, lo: int, hi: Any, sub: Any) -> tuple[str, bool]:
        from llama_cpp.llama_grammar import _build_repetition

        unbounded = hi is self.C.MAXREPEAT
        limit = self.bounds.max_repeat
        if lo > limit or (not unbounded and hi > limit):
            raise ValueError(f"repeat count {{{lo},{'' if unbounded else hi}}} is over the limit of {limit}")
        text, empty = self._seq(list(sub))
        if not text:
            return "", True
        if empty and (unbounded or hi > 1):
            raise ValueError("a repeated part can match the empty string; repeat something that cannot")
        self.n += 1
        item = self.add_rule(f"pattern-{self.n}", text)
        return _build_repetition(item, lo, None if unbounded else hi), lo == 0 or empty

    def _set(self, items: list) -> Ranges:
        C = self.C
        negate = False
        ranges: Ranges = []
        categories = {C.CATEGORY_DIGIT: DIGIT, C.CATEGORY_WORD: WORD, C.CATEGORY_SPACE: SPACE}
        negated = {C.CATEGORY_NOT_DIGIT: DIGIT, C.CATEGORY_NOT_WORD: WORD, C.CATEGORY_NOT_SPACE: SPACE}
        for op, arg in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                ranges.append((arg, arg))
            elif op is C.RANGE:
                ranges.append(arg)
            elif op is C.CATEGORY and arg in categories:
                ranges += categories[arg]
            elif op is C.CATEGORY and arg in negated:
                ranges += _complement(negated[arg])
            else:
                raise ValueError(f"{op} {arg} in a character class is not supported")
        ranges = _normalize(ranges)
        if negate:
            ranges = _complement(ranges)
        # Surrogates are not characters a JSON string can hold.
        return _intersect(ranges, [(0, 0xD7FF), (0xE000, MAX_CP)])

    def _class(self, ranges: Ranges) -> str:
        """GBNF for one character of `ranges`, written as JSON text: raw where JSON allows, escaped where not."""
        alts: list[str] = []
        raw = _intersect(ranges, RAW_OK)
        if raw:
            alts.append(
                "[" + "".join(gbnf_char(lo) if lo == hi else f"{gbnf_char(lo)}-{gbnf_char(hi)}" for lo, hi in raw) + "]"
            )
        escaped = _intersect(ranges, ESCAPED)
        if escaped:
            chars = [cp for lo, hi in escaped for cp in range(lo, hi + 1)]
            alts.append(
                self.add_rule("escaped", " | ".join(json_text_literal(chr(cp)) for cp in chars))
                if len(chars) > 2
                else " | ".join(json_text_literal(chr(cp)) for cp in chars)
            )
        if not alts:
            raise ValueError("a character class matches no character a JSON string can hold")
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _dry_rule(name: str, text: str) -> str:
    return name


# -- normalization ---------------------------------------------------------------------------------------


class _Normalizer:
    """Schema -> canonical schema (only the shapes the converter handles soundly), or SchemaError."""

    def __init__(self, root: Any, param: str, bounds: Bounds) -> None:
        self.root = root
        self.param = param
        self.bounds = bounds
        self.nodes = 0

    def run(self) -> dict:
        return self.norm(self.root, self.param, 0, ())

    def fail(self, message: str, where: str) -> SchemaError:
        return SchemaError(message, where)

    # -- helpers ----------------------------------------------------------------------------------

    def text(self, value: Any, where: str, what: str) -> str:
        if not isinstance(value, str):
            raise self.fail(f"{what} must be a string", where)
        if len(value) > self.bounds.max_literal:
            raise self.fail(f"{what} is {len(value)} characters; the limit is {self.bounds.max_literal}", where)
        bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) <= 0xDFFF), None)
        if bad is not None:
            raise self.fail(
                f"{what} holds the control character U+{ord(bad):04X}, which the grammar engine cannot take", where
            )
        return value

    def literal(self, value: Any, where: str) -> Any:
        """A const/enum value: any JSON value whose strings (keys too) are checked."""
        stack = [(value, where)]
        while stack:
            v, w = stack.pop()
            if isinstance(v, str):
                self.text(v, w, "a string value")
            elif isinstance(v, list):
                stack.extend((x, f"{w}[{i}]") for i, x in enumerate(v))
            elif isinstance(v, dict):
                for k, x in v.items():
                    self.text(k, w, "a key")
                    stack.append((x, f"{w}.{k}"))
        return value

    def count(self, value: Any, where: str, what: str, limit: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(f"{what} must be a non-negative integer", where)
        if value > limit:
            raise self.fail(f"{what} is {value}; the limit is {limit}", where)
        return value

    def resolve(self, ref: Any, where: str) -> tuple[Any, str]:
        """The schema a local $ref points to, and where that is (for messages)."""
        if not isinstance(ref, str):
            raise self.fail("$ref must be a string", where)
        if not ref.startswith("#"):
            raise self.fail(f"$ref {ref!r}: only local references (#/$defs/...) are supported", where)
        target = self.root
        at = self.param
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise self.fail(f"$ref {ref!r}: only JSON pointers (#/...) are supported", where)
        for part in pointer.split("/")[1:] if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target, at = target[part], f"{at}.{part}"
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target, at = target[int(part)], f"{at}[{part}]"
            else:
                raise self.fail(f"$ref {ref!r} does not resolve (no {part!r})", where)
        return target, at

    # -- the walk -----------------------------------------------------------------------------------

    def norm(self, schema: Any, where: str, depth: int, refs: tuple[str, ...]) -> dict:
        self.nodes += 1
        if self.nodes > self.bounds.max_nodes:
            raise self.fail(
                f"the schema has more than {self.bounds.max_nodes} subschemas ($refs counted each time they are used)",
                where,
            )
        if depth > self.bounds.max_depth:
            raise self.fail(f"the schema nests deeper than {self.bounds.max_depth} levels", where)
        if schema is True:
            return {"type": ANY_TYPE}
        if schema is False:
            raise self.fail("the schema 'false' can never be satisfied", where)
        if not isinstance(schema, dict):
            raise self.fail("must be a JSON schema (an object)", where)
        keys = set(schema)
        if "$ref" in schema:
            others = keys - ANNOTATIONS - {"$ref"}
            if others:
                raise self.fail(f"$ref beside {', '.join(sorted(others))} is not supported", where)
            ref = schema["$ref"]
            if ref in refs:
                raise self.fail(f"$ref {ref!r} is recursive; recursive schemas are not supported", where)
            target, at = self.resolve(ref, f"{where}.$ref")
            return self.norm(target, at, depth + 1, (*refs, ref))
        if "const" in schema:
            return {"const": self.literal(schema["const"], f"{where}.const")}
        if "enum" in schema:
            return self.enum(schema, where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.union(schema, key, where, depth, refs)
        if "allOf" in schema:
            return self.all_of(schema, where, depth, refs)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise self.fail("must list at least one type", f"{where}.type")
            if len(kind) > len(TYPES) or len(set(map(str, kind))) != len(kind):
                raise self.fail("must list each type at most once", f"{where}.type")
            alternatives = [self.norm({**schema, "type": t}, where, depth + 1, refs) for t in kind]
            return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        if kind is None:
            kind = self.infer(schema)
            if kind == ANY_TYPE:
                return {"type": ANY_TYPE}
        if kind not in TYPES:
            raise self.fail(f"unknown type {kind!r} (one of {', '.join(TYPES)})", f"{where}.type")
        if kind == "string":
            return self.string(schema, where)
        if kind == "object":
            return self.object(schema, where, depth, refs)
        if kind == "array":
            return self.array(schema, where, depth, refs)
        return {"type": kind}

    def infer(self, schema: dict) -> str:
        if {"properties", "additionalProperties", "required"} & set(schema):
            return "object"
        if {"items", "prefixItems", "minItems", "maxItems"} & set(schema):
            return "array"
        if {"pattern", "minLength", "maxLength", "format"} & set(schema):
            return "string"
        return ANY_TYPE

    def enum(self, schema: dict, where: str) -> dict:
        values = schema["enum"]
        w = f"{where}.enum"
        if not isinstance(values, list):
            raise self.fail("must be a list", w)
        if not values:
            raise self.fail("must list at least one value", w)
        if len(values) > self.bounds.max_enum:
            raise self.fail(f"has {len(values)} values; the limit is {self.bounds.max_enum}", w)
        for i, v in enumerate(values):
            self.literal(v, f"{w}[{i}]")
        kind = schema.get("type")
        if isinstance(kind, str):  # keep the values of that type (JSON Schema applies both)
            if kind not in TYPES:
                raise self.fail(f"unknown type {kind!r} (one of {', '.join(TYPES)})", f"{where}.type")
            values = [v for v in values if _is_type(v, kind)]
            if not values:
                raise self.fail(f"no value is of type {kind!r}", w)
        return {"enum": values}

    def union(self, schema: dict, key: str, where: str, depth: int, refs: tuple[str, ...]) -> dict:
        w = f"{where}.{key}"
        others = set(schema) - ANNOTATIONS - {key}
        if others:
            raise self.fail(
                f"{key} beside {', '.join(sorted(others))} is not supported; move those keywords into each alternative",
                where,
            )
        alternatives = schema[key]
        if not isinstance(alternatives, list):
            raise self.fail("must be a list of schemas", w)
        if not alternatives:
            raise self.fail("must list at least one schema", w)
        if len(alternatives) > self.bounds.max_alternatives:
            raise self.fail(f"has {len(alternatives)} schemas; the limit is {self.bounds.max_alternatives}", w)
        out = [self.norm(a, f"{w}[{i}]", depth + 1, refs) for i, a in enumerate(alternatives)]
        return out[0] if len(out) == 1 else {"anyOf": out}

    def all_of(self, schema: dict, where: str, depth: int, refs: tuple[str, ...]) -> dict:
        w = f"{where}.allOf"
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise self.fail("must be a non-empty list of schemas", w)
        if len(parts) > self.bounds.max_alternatives:
            raise self.fail(f"has {len(parts)} schemas; the limit is {self.bounds.max_alternatives}", w)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        merged: dict = {"type": "object", "properties": {}, "required": []}
        extra: Any = None
        for i, part in enumerate([*parts, rest] if set(rest) - ANNOTATIONS else parts):
            pw = f"{w}[{i}]" if i < len(parts) else where
            n = self.norm(part, pw, depth + 1, refs)
            if n.get("type") != "object":
                raise self.fail("allOf is supported for objects only (each part with 'properties')", pw)
            for name, sub in n.get("properties", {}).items():
                if name in merged["properties"] and merged["properties"][name] != sub:
                    raise self.fail(f"property {name!r} is defined twice, differently", pw)
                merged["properties"][name] = sub
            merged["required"] += [r for r in n.get("required", []) if r not in merged["required"]]
            if "additionalProperties" in n and n["additionalProperties"] is not True:
                extra = n["additionalProperties"]
        if len(merged["properties"]) > self.bounds.max_properties:
            raise self.fail(f"has {len(merged['properties'])} properties; the limit is {self.bounds.max_properties}", w)
        merged["additionalProperties"] = extra if extra is not None else False
        return merged

    def string(self, schema: dict, where: str) -> dict:
        shaping = [k for k in ("pattern", "minLength", "maxLength") if k in schema]
        fmt = schema.get("format")
        if fmt is not None and not isinstance(fmt, str):
            raise self.fail("must be a string", f"{where}.format")
        if fmt in SUPPORTED_FORMATS:
            shaping.append("format")
        if "pattern" in shaping and len(shaping) > 1:
            raise self.fail(f"pattern beside {', '.join(k for k in shaping if k != 'pattern')} is not supported", where)
        if "format" in shaping and len(shaping) > 1:
            raise self.fail(f"format {fmt!r} beside minLength/maxLength is not supported", where)
        if "pattern" in schema:
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise self.fail("must be a string", f"{where}.pattern")
            try:
                PatternCompiler(_dry_rule, self.bounds).compile(pattern)
            except ValueError as exc:
                raise self.fail(str(exc), f"{where}.pattern") from None
            return {"type": "string", "pattern": pattern}
        if "format" in shaping:
            return {"type": "string", "format": fmt}
        out: dict = {"type": "string"}
        lo = self.count(schema.get("minLength", 0), f"{where}.minLength", "minLength", self.bounds.max_length)
        if "minLength" in schema:
            out["minLength"] = lo
        if "maxLength" in schema:
            hi = self.count(schema["maxLength"], f"{where}.maxLength", "maxLength", self.bounds.max_length)
            if hi < lo:
                raise self.fail(f"maxLength {hi} is less than minLength {lo}", where)
            out["maxLength"] = hi
        return out

    def object(self, schema: dict, where: str, depth: int, refs: tuple[str, ...]) -> dict:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self.fail("must be an object of schemas", f"{where}.properties")
        if len(props) > self.bounds.max_properties:
            raise self.fail(
                f"has {len(props)} properties; the limit is {self.bounds.max_properties}", f"{where}.properties"
            )
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail("must be a list of property names", f"{where}.required")
        if len(set(required)) != len(required):
            raise self.fail("names a property twice", f"{where}.required")
        extra = schema.get("additionalProperties", None)
        if not props and extra is None and not required:
            return {"type": "object"}  # any object
        out_props: dict = {}
        for name, sub in props.items():
            self.text(name, f"{where}.properties", "a property name")
            out_props[name] = self.norm(sub, f"{where}.properties.{name}", depth + 1, refs)
        for name in required:
            if name not in out_props:
                if extra is False:
                    raise self.fail(
                        f"{name!r} is required but not a property, and additionalProperties is false",
                        f"{where}.required",
                    )
                self.text(name, f"{where}.required", "a property name")
                out_props[name] = {"type": ANY_TYPE}
        out: dict = {"type": "object", "properties": out_props, "required": list(required)}
        if extra is True:
            out["additionalProperties"] = {"type": ANY_TYPE}
        elif isinstance(extra, dict):
            out["additionalProperties"] = self.norm(extra, f"{where}.additionalProperties", depth + 1, refs)
        elif extra is None or extra is False:
            out["additionalProperties"] = False  # only the named properties (a subset of JSON Schema's default)
        else:
            raise self.fail("must be true, false or a schema", f"{where}.additionalProperties")
        return out

    def array(self, schema: dict, where: str, depth: int, refs: tuple[str, ...]) -> dict:
        items = schema.get("items", None)
        prefix = schema.get("prefixItems", None)
        if isinstance(items, list):  # draft-07 tuples
            prefix, items = items, False
        if prefix is not None:
            if not isinstance(prefix, list):
                raise self.fail("must be a list of schemas", f"{where}.prefixItems")
            if len(prefix) > self.bounds.max_items:
                raise self.fail(
                    f"has {len(prefix)} schemas; the limit is {self.bounds.max_items}", f"{where}.prefixItems"
                )
            if items not in (None, False):
                raise self.fail("prefixItems beside items is not supported", where)
            return {
                "type": "array",
                "prefixItems": [
                    self.norm(s, f"{where}.prefixItems[{i}]", depth + 1, refs) for i, s in enumerate(prefix)
                ],
            }
        lo = self.count(schema.get("minItems", 0), f"{where}.minItems", "minItems", self.bounds.max_items)
        hi = schema.get("maxItems")
        if hi is not None:
            hi = self.count(hi, f"{where}.maxItems", "maxItems", self.bounds.max_items)
            if hi < lo:
                raise self.fail(f"maxItems {hi} is less than minItems {lo}", where)
        if items is False:
            if lo > 0:
                raise self.fail("items is false (no items) but minItems is above 0", where)
            hi, item = 0, {"type": ANY_TYPE}
        else:
            item = (
                {"type": ANY_TYPE}
                if items is None or items is True
                else self.norm(items, f"{where}.items", depth + 1, refs)
            )
        out: dict = {"type": "array", "items": item, "minItems": lo}
        if hi is not None:
            out["maxItems"] = hi
        return out


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "null":
        return value is None
    return isinstance(value, {"string": str, "boolean": bool, "object": dict, "array": list}[kind])
