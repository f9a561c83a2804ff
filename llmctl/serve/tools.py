"""Tool calling for `llmctl serve`: OpenAI's `tools` in, `message.tool_calls` out, on any chat format.

The model never sees OpenAI's tool fields. `render_messages()` turns the request's messages, its
tools and its tool_choice into plain system/user/assistant messages that whatever chat formatter the
model has (its GGUF template or a llama-cpp-python format) renders as text: the tool definitions and
the calling convention go into the system prompt, past calls back into assistant text, tool results
into user text, each in the model's own tool format. The model's output is text again, which
`parse_output()` (whole) or `StreamAssembler` (delta by delta) turn into OpenAI's tool calls.

Formats (`detect_format()` picks one from the GGUF's chat template):

- `hermes`: Hermes 2 Pro, Qwen 2.5/3 and others whose template writes `<tool_call>`: tools inside
  `<tools></tools>` in the system prompt; a call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
  a result is `<tool_response>\\n...\\n</tool_response>` in a user turn.
- `llama3`: Llama 3.1/3.2/3.3 (templates with `<|python_tag|>` or an `ipython` role): a call is the
  JSON object `{"name": ..., "parameters": {...}}` as the whole answer; results in a user turn.
- `mistral`: templates with `[TOOL_CALLS]`: a call is `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`.
- `generic` (every other model, the smoke model's Gemma 3 among them): the model answers with one
  JSON object, `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or `{"response": "..."}`, and a
  grammar holds it to that shape in every mode but `none`, so even a small model produces calls that
  parse.

When the call is `required` or names a function, a grammar built from the functions' JSON schemas
(`llmctl.serve.grammar`) constrains the output in every format, so the arguments parse and match.
With `auto`, the native formats write free text and calls are recognised in it.

Pure: the JSON schemas go through llmctl.serve.grammar; nothing here touches a model.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("generic", "hermes", "llama3", "mistral")
MAX_TOOLS = 128
MAX_DESCRIPTION = 8192
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a function name
CHOICES = ("none", "auto", "required")


class ToolError(ValueError):
    """A tools/tool_choice/messages value the server refuses; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.message = f"{param}: {message}"
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict  # a JSON schema of the arguments (an object); {} for none declared
    strict: bool = False


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools, validated: `choice` is none | auto | required | the name of a function."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    parallel: bool = False

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model may call."""
        if self.choice == "none":
            return ()
        if self.forced and self.choice != "required":
            return tuple(t for t in self.tools if t.name == self.choice)
        return self.tools

    def knows(self, name: str) -> bool:
        return any(t.name == name for t in self.offered)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the model wrote it
    id: str = field(default_factory=lambda: new_call_id())

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# -- validation -------------------------------------------------------------------------------------------


def parse_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolSpec | None:
    """The request's `tools`, `tool_choice` and `parallel_tool_calls`, checked; None without tools.
    Every function's `parameters` must be a schema the grammar can express (ToolError otherwise)."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolError("must be a boolean", "parallel_tool_calls")
    if tools is None:
        if tool_choice is not None and tool_choice != "none":
            raise ToolError("is only allowed when tools are specified", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise ToolError("must be a list of tools", "tools")
    if not tools:
        raise ToolError("must list at least one tool (or leave tools out)", "tools")
    if len(tools) > MAX_TOOLS:
        raise ToolError(f"has {len(tools)} tools; the limit is {MAX_TOOLS}", "tools")
    out: list[Tool] = []
    for i, raw in enumerate(tools):
        out.append(_tool(raw, f"tools[{i}]"))
    names = [t.name for t in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ToolError(f"the function name {name!r} is used twice", f"tools[{i}].function.name")
    choice = _choice(tool_choice, names)
    # One call per answer unless asked for more, as llama-server does: small models offered parallel calls
    # tend to call again and again until max_tokens (OpenAI's default is true).
    return ToolSpec(tuple(out), choice, bool(parallel_tool_calls))


def _tool(raw: Any, where: str) -> Tool:
    from llmctl.serve.grammar import SchemaError, schema_to_gbnf

    if not isinstance(raw, dict):
        raise ToolError('must be an object such as {"type": "function", "function": {...}}', where)
    kind = raw.get("type")
    if kind != "function":
        raise ToolError(f"unsupported tool type {kind!r}: this server supports 'function' tools", f"{where}.type")
    fn = raw.get("function")
    if not isinstance(fn, dict):
        raise ToolError("must be an object with a 'name'", f"{where}.function")
    name = fn.get("name")
    if not isinstance(name, str):
        raise ToolError("is required (a string)", f"{where}.function.name")
    if not NAME.fullmatch(name):
        raise ToolError(
            f"{name[:80]!r} is not a valid function name (a-z, A-Z, 0-9, _ and -, at most 64)", f"{where}.function.name"
        )
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError("must be a string", f"{where}.function.description")
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise ToolError(f"is longer than {MAX_DESCRIPTION} characters", f"{where}.function.description")
    strict = fn.get("strict", False)
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        raise ToolError("must be a boolean", f"{where}.function.strict")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise ToolError("must be a JSON schema (an object)", f"{where}.function.parameters")
    if params.get("type", "object") != "object":
        raise ToolError('must be the schema of an object ("type": "object")', f"{where}.function.parameters")
    try:
        schema_to_gbnf(params, f"{where}.function.parameters")
    except SchemaError as exc:
        raise ToolError(exc.message.split(": ", 1)[1], exc.param) from None
    return Tool(name, description, params, strict)


def _choice(value: Any, names: list[str]) -> str:
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in CHOICES:
            raise ToolError(
                f"unknown value {value[:40]!r} (none, auto, required, or "
                '{"type": "function", "function": {"name": ...}})',
                "tool_choice",
            )
        return value
    if not isinstance(value, dict):
        raise ToolError(
            'must be none, auto, required, or {"type": "function", "function": {"name": ...}}', "tool_choice"
        )
    if value.get("type") != "function":
        raise ToolError(f"unsupported type {value.get('type')!r} (function)", "tool_choice.type")
    fn = value.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ToolError("is required (a string)", "tool_choice.function.name")
    if name not in names:
        raise ToolError(f"no tool named {name[:80]!r} is in tools", "tool_choice.function.name")
    return name


# -- formats ------------------------------------------------------------------------------------------------


def detect_format(chat_template: str | None) -> str:
    """The tool format a model's chat template defines (see the module docstring); generic if none."""
    t = chat_template or ""
    if "<tool_call>" in t:
        return "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<|python_tag|>" in t or ("ipython" in t and "<|start_header_id|>" in t):
        return "llama3"
    return "generic"


def _definitions(tools: tuple[Tool, ...], args_key: str = "parameters") -> list[dict]:
    out = []
    for t in tools:
        d: dict[str, Any] = {"name": t.name}
        if t.description:
            d["description"] = t.description
        d[args_key] = t.parameters
        out.append(d)
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _instructions(spec: ToolSpec, fmt: str) -> str:
    offered = spec.offered
    if spec.choice == "required":
        must = "You must call at least one of these functions."
    elif spec.forced:
        must = f"You must call the function {spec.choice}."
    else:
        must = "Call a function when it helps to answer; otherwise answer directly."
    one = "" if spec.parallel else " Call at most one function at a time."
    if fmt == "hermes":
        tools = "\n".join(_dumps({"type": "function", "function": d}) for d in _definitions(offered))
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n\n' + must + one
        )
    if fmt == "llama3":
        tools = "\n\n".join(_dumps({"type": "function", "function": d}) for d in _definitions(offered))
        return (
            "You have access to the following functions. To call a function, respond with only a JSON "
            'object of the form {"name": function name, "parameters": dictionary of argument name and its '
            f"value}}. Do not use variables.\n\n{tools}\n\n{must}{one}"
        )
    if fmt == "mistral":
        tools = _dumps([{"type": "function", "function": d} for d in _definitions(offered)])
        return (
            f"[AVAILABLE_TOOLS]{tools}[/AVAILABLE_TOOLS]\nTo call functions, answer with [TOOL_CALLS] "
            'followed by a JSON list: [{"name": function name, "arguments": {arguments}}].\n' + must + one
        )
    tools = _dumps(_definitions(offered))
    if spec.forced:
        shape = (
            'Answer with one JSON object and nothing else: {"tool_calls": [{"name": "<function name>", '
            '"arguments": {<arguments>}}]}.'
        )
    else:
        shape = (
            'Answer with one JSON object and nothing else: either {"tool_calls": [{"name": "<function name>", '
            '"arguments": {<arguments>}}]} to call functions, or {"response": "<your answer>"} to answer '
            "the user directly."
        )
    return (
        f"You can call these functions (their arguments are described by JSON schemas):\n{tools}\n\n{shape} {must}{one}"
    )


def _call_text(calls: list[dict], fmt: str) -> str:
    """Past calls (OpenAI's assistant tool_calls) as the text the model writes for them."""
    parsed = []
    for c in calls:
        fn = c.get("function", {})
        try:
            args: Any = json.loads(fn.get("arguments", ""))
        except ValueError:
            args = fn.get("arguments", "")
        parsed.append((fn.get("name", ""), args))
    if fmt == "hermes":
        return "\n".join(f"<tool_call>\n{_dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in parsed)
    if fmt == "llama3":
        return "; ".join(_dumps({"name": n, "parameters": a}) for n, a in parsed)
    if fmt == "mistral":
        return "[TOOL_CALLS]" + _dumps([{"name": n, "arguments": a} for n, a in parsed])
    return _dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in parsed]})


def _result_text(content: str, name: str | None, call_id: str | None, fmt: str) -> str:
    if fmt == "hermes":
        return f"<tool_response>\n{content}\n</tool_response>"
    if fmt == "mistral":
        return f"[TOOL_RESULTS]{_dumps({'call_id': call_id, 'content': content})}[/TOOL_RESULTS]"
    if fmt == "llama3":
        return f"Result of {name or 'the function'}: {content}"
    response: dict[str, Any] = {"name": name, "content": content}
    if call_id:
        response["tool_call_id"] = call_id
    return _dumps({"tool_response": response})


def uses_tools(messages: list[dict], spec: ToolSpec | None) -> bool:
    """Whether render_messages changes anything: tools offered, or tool traffic in the history."""
    return spec is not None or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def render_messages(messages: list[dict], spec: ToolSpec | None, fmt: str) -> list[dict]:
    """Messages (the engine's shape: role, content, maybe tool_calls/tool_call_id/name) -> plain
    system/user/assistant messages with string content that any chat formatter renders.

    Tool results become user turns and past calls assistant text, in `fmt`; then consecutive turns of
    the same role are joined (blank line between), since many templates (Gemma's, Llama 2's) insist
    that user and assistant alternate."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown tool format {fmt!r}")
    names: dict[str, str] = {}
    plain: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            for c in m["tool_calls"]:
                names[c.get("id", "")] = c.get("function", {}).get("name", "")
            calls = _call_text(m["tool_calls"], fmt)
            plain.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("name") or names.get(call_id or "")
            plain.append({"role": "user", "content": _result_text(content, name, call_id, fmt)})
        else:
            plain.append({"role": role, "content": content, **({"name": m["name"]} if m.get("name") else {})})
    if spec is not None and spec.offered:
        text = _instructions(spec, fmt)
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": f"{plain[0]['content']}\n\n{text}"}
        else:
            plain.insert(0, {"role": "system", "content": text})
    out: list[dict] = []
    for m in plain:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(m)
    return out


# -- the grammar ------------------------------------------------------------------------------------------

# The tools' schemas joined into one: more room than one response_format gets.
_BOUNDS_ARGS: dict[str, int] = {"max_nodes": 4000, "max_alternatives": MAX_TOOLS, "max_grammar_bytes": 256 * 1024}


def _call_schema(tool: Tool, args_key: str) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: tool.parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def grammar_for(spec: ToolSpec, fmt: str) -> str | None:
    """GBNF for the model's answer: the call envelope of `fmt` around the offered functions' argument
    schemas. None where the output is free: tool_choice none, or auto in a native format."""
    from llmctl.serve.grammar import Bounds, SchemaError, schema_to_gbnf

    offered = spec.offered
    if not offered or (not spec.forced and fmt != "generic"):
        return None
    args_key = "parameters" if fmt == "llama3" else "arguments"
    calls = [_call_schema(t, args_key) for t in offered]
    one: dict = calls[0] if len(calls) == 1 else {"anyOf": calls}
    many = spec.parallel and fmt != "llama3"
    listing: dict = {"type": "array", "items": one, "minItems": 1}
    if not many:
        listing["maxItems"] = 1
    if fmt == "generic":
        envelope = {
            "type": "object",
            "properties": {"tool_calls": listing},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        schema: dict = (
            envelope
            if spec.forced
            else {
                "anyOf": [
                    envelope,
                    {
                        "type": "object",
                        "properties": {"response": {"type": "string"}},
                        "required": ["response"],
                        "additionalProperties": False,
                    },
                ]
            }
        )
    elif fmt == "mistral":
        schema = listing
    else:
        schema = one
    try:
        gbnf = schema_to_gbnf(schema, "tools", Bounds(**_BOUNDS_ARGS))
    except SchemaError as exc:
        raise ToolError(exc.message.split(": ", 1)[1], "tools") from None
    if fmt in ("generic", "llama3"):
        return gbnf
    # Wrap the JSON in the format's markers: the converter's root becomes one rule among the others.
    lines = gbnf.splitlines()
    renamed = [
        ("tool-json ::= " + line[len("root ::= ") :]) if line.startswith("root ::= ") else line for line in lines
    ]
    if fmt == "mistral":
        root = 'root ::= "[TOOL_CALLS]" tool-json'
    else:
        block = r'"<tool_call>\n" tool-json "\n</tool_call>"'
        root = f"root ::= {block}" + (rf' ("\n" {block})*' if many else "")
    return root + "\n" + "\n".join(renamed) + "\n"


# -- parsing the model's output -----------------------------------------------------------------------------

_DECODER = json.JSONDecoder()


def _json_at(text: str, i: int) -> tuple[Any, int] | None:
    """The JSON value starting at text[i] (after whitespace) and the index after it, or None."""
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    try:
        return _DECODER.raw_decode(text, i)
    except ValueError:
        return None


def _call_of(obj: Any, spec: ToolSpec, args_key: str) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj.get(args_key, obj.get("arguments" if args_key != "arguments" else "parameters"))
    if not isinstance(name, str) or not spec.knows(name):
        return None
    if args is None:
        args = {}
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


@dataclass(frozen=True)
class Parsed:
    content: str | None
    calls: tuple[ToolCall, ...]

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.calls else None


def parse_output(text: str, spec: ToolSpec, fmt: str) -> Parsed:
    """The model's whole answer -> content and tool calls. What does not parse as a call of an
    offered function stays content (a model in `auto` mode may write anything)."""
    if not spec.offered:
        return Parsed(text, ())
    if fmt == "generic":
        return _parse_generic(text, spec)
    if fmt == "hermes":
        return _parse_hermes(text, spec)
    if fmt == "mistral":
        return _parse_mistral(text, spec)
    return _parse_llama3(text, spec)


def _limit(calls: list[ToolCall], spec: ToolSpec) -> tuple[ToolCall, ...]:
    return tuple(calls if spec.parallel else calls[:1])


def _parse_generic(text: str, spec: ToolSpec) -> Parsed:
    found = _json_at(text, 0)
    if found is None and _RESPONSE_PREFIX.match(text):  # an answer cut short (max_tokens): its text so far
        assembler = StreamAssembler(spec, "generic")
        return Parsed("".join(d.get("content", "") for d in assembler.feed(text)), ())
    if found is None or text[found[1] :].strip() or not isinstance(found[0], dict):
        return Parsed(text, ())
    obj = found[0]
    if isinstance(obj.get("tool_calls"), list):
        calls = [_call_of(c, spec, "arguments") for c in obj["tool_calls"]]
        if calls and all(c is not None for c in calls):
            return Parsed(None, _limit([c for c in calls if c is not None], spec))
        return Parsed(text, ())
    if isinstance(obj.get("response"), str) and len(obj) == 1:
        return Parsed(obj["response"], ())
    return Parsed(text, ())


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def _parse_hermes(text: str, spec: ToolSpec) -> Parsed:
    start = text.find("<tool_call>")
    if start < 0:
        return Parsed(text, ())
    calls: list[ToolCall] = []
    for m in _HERMES.finditer(text, start):
        found = _json_at(m.group(1), 0)
        call = _call_of(found[0], spec, "arguments") if found and not m.group(1)[found[1] :].strip() else None
        if call is None:
            return Parsed(text, ())
        calls.append(call)
    if not calls:
        # An unclosed last call (the model stopped at </tool_call> as a stop string, or ran out)
        found = _json_at(text, start + len("<tool_call>"))
        call = _call_of(found[0], spec, "arguments") if found else None
        if call is None:
            return Parsed(text, ())
        calls.append(call)
    content = text[:start].strip()
    return Parsed(content or None, _limit(calls, spec))


def _parse_mistral(text: str, spec: ToolSpec) -> Parsed:
    body = text.strip()
    if body.startswith("[TOOL_CALLS]"):
        body = body[len("[TOOL_CALLS]") :]
    elif not body.startswith("["):  # llama.cpp drops the special token when it detokenizes
        return Parsed(text, ())
    found = _json_at(body, 0)
    if found is None or body[found[1] :].strip() or not isinstance(found[0], list) or not found[0]:
        return Parsed(text, ())
    calls = [_call_of(c, spec, "arguments") for c in found[0]]
    if not all(c is not None for c in calls):
        return Parsed(text, ())
    return Parsed(None, _limit([c for c in calls if c is not None], spec))


def _parse_llama3(text: str, spec: ToolSpec) -> Parsed:
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>") :]
    calls: list[ToolCall] = []
    i = 0
    while True:
        found = _json_at(body, i)
        call = _call_of(found[0], spec, "parameters") if found else None
        if call is None or found is None:
            return Parsed(text, ())
        calls.append(call)
        rest = body[found[1] :].strip()
        if not rest:
            return Parsed(None, _limit(calls, spec))
        if not rest.startswith(";"):
            return Parsed(text, ())
        i = body.index(";", found[1]) + 1


# -- streaming ------------------------------------------------------------------------------------------------

# Where a native format's calls may begin: content before that is streamed as it comes.
_MARKERS = {"hermes": ("<tool_call>",), "mistral": ("[TOOL_CALLS]", "["), "llama3": ("<|python_tag|>", "{")}
_RESPONSE_PREFIX = re.compile(r'\s*\{\s*"response"\s*:\s*"')


def _held_prefix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker` (held back until known)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


_CALL_HEADER = re.compile(r'\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"(?:arguments|parameters)"\s*:')


class _ValueScan:
    """Where a JSON value that starts at text[at] (after blanks) ends, found as the text grows."""

    def __init__(self, text: str, at: int) -> None:
        self.pos = at
        self.start: int | None = None  # its first character
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def advance(self, text: str) -> int | None:
        """The index after the value once it is complete, else None (all of the text is in it)."""
        while self.pos < len(text):
            c = text[self.pos]
            self.pos += 1
            if self.start is None:
                if c in " \t\r\n":
                    continue
                self.start = self.pos - 1
                if c == '"':
                    self.in_string = True
                elif c in "{[":
                    self.depth = 1
                else:  # a scalar: ends before the first character that cannot continue it
                    self.depth = -1
                continue
            if self.depth == -1:
                if c in ",}] \t\r\n":
                    self.pos -= 1
                    return self.pos
                continue
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return self.pos
                continue
            if c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return self.pos
        return None


class StreamAssembler:
    """Text deltas of a streamed answer -> OpenAI delta dicts (`{"content": ...}` or
    `{"tool_calls": [...]}`), in order, as the OpenAI API streams them. Content is passed on as soon as
    it cannot be the start of a call. Where a grammar holds the model to the call format (a forced
    call, or the generic format), a call goes out as it is written: id, type and name once its name is
    complete, then its arguments piece by piece. Elsewhere (auto in a native format, where the model
    may write anything) a call is held until it parses, then sent as the same two kinds of delta.
    `finish()` flushes and says whether calls were made."""

    def __init__(self, spec: ToolSpec, fmt: str) -> None:
        self.spec, self.fmt = spec, fmt
        self.text = ""  # everything so far
        self.sent = 0  # characters of self.text passed on as content (native formats)
        self.mode = "undecided"  # undecided | content | calls (native) ; response | calls (generic)
        self.calls: list[ToolCall] = []
        self._decoded = 0  # generic response: characters of the JSON string decoded and sent
        self._response_at = 0
        self.progressive = spec.forced or fmt == "generic"
        self._emitted = 0  # calls sent (progressive)
        self._search_at = 0  # where the next call's header may start
        self._args: _ValueScan | None = None  # the arguments being sent
        self._args_sent = 0  # characters of self.text sent as arguments of the current call

    def _progress(self) -> list[dict]:
        """Progressive calls: send what is new since the last feed."""
        out: list[dict] = []
        while True:
            if self._args is None:
                if self._emitted and not self.spec.parallel:
                    return out
                m = _CALL_HEADER.search(self.text, self._search_at)
                if m is None:
                    return out
                name = m.group(1)
                if not self.spec.knows(name):
                    self.progressive = False  # not a call this server can vouch for: parse at the end
                    return out
                call = ToolCall(name, "")
                out.append(
                    {
                        "tool_calls": [
                            {
                                "index": self._emitted,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
                self.calls.append(call)
                self._args = _ValueScan(self.text, m.end())
                self._args_sent = m.end()
            scan = self._args
            end = scan.advance(self.text)
            upto = end if end is not None else len(self.text)
            start = max(self._args_sent, scan.start if scan.start is not None else upto)
            if upto > start:
                out.append({"tool_calls": [{"index": self._emitted, "function": {"arguments": self.text[start:upto]}}]})
            self._args_sent = max(self._args_sent, upto)
            if end is None:
                return out
            self._args = None
            self._emitted += 1
            self._search_at = end

    def feed(self, delta: str) -> list[dict]:
        if not delta:
            return []
        self.text += delta
        if not self.spec.offered:
            return [{"content": delta}]
        if self.fmt == "generic":
            return self._feed_generic()
        return self._feed_native()

    # generic: {"response": "..."} is streamed as its string decodes; {"tool_calls": ...} at the end
    def _feed_generic(self) -> list[dict]:
        if self.mode == "undecided":
            m = _RESPONSE_PREFIX.match(self.text)
            compact = re.sub(r"\s+", "", self.text)
            if m:
                self.mode, self._response_at = "response", m.end()
            elif any(p.startswith(compact) for p in ('{"response":"', '{"tool_calls":')):
                return []
            else:
                self.mode = "calls"
        if self.mode == "calls" and self.progressive:
            return self._progress()
        if self.mode != "response":
            return []
        return self._decode_response()

    def _decode_response(self) -> list[dict]:
        body = self.text[self._response_at :]
        out: list[str] = []
        i = self._decoded
        while i < len(body):
            c = body[i]
            if c == '"':
                self.mode = "response-done"
                break
            if c == "\\":
                if i + 1 >= len(body):
                    break
                esc = body[i + 1]
                if esc == "u":
                    if i + 6 > len(body):
                        break
                    code = (
                        int(body[i + 2 : i + 6], 16) if re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]) else 0xFFFD
                    )
                    if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for its second half
                        if i + 12 > len(body):
                            break
                        if body[i + 6 : i + 8] == "\\u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 8 : i + 12]):
                            low = int(body[i + 8 : i + 12], 16)
                            out.append(
                                chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                                if 0xDC00 <= low < 0xE000
                                else "\ufffd"
                            )
                            i += 12
                            continue
                        code = 0xFFFD
                    out.append("\ufffd" if 0xDC00 <= code < 0xE000 else chr(code))
                    i += 6
                    continue
                out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(esc, esc))
                i += 2
                continue
            out.append(c)
            i += 1
        self._decoded = i
        return [{"content": "".join(out)}] if out else []

    # native formats: content until a marker, then calls
    def _feed_native(self) -> list[dict]:
        markers = _MARKERS[self.fmt]
        if self.mode == "calls":
            return self._progress() if self.progressive else []
        if self.fmt in ("mistral", "llama3"):
            # A call is the whole answer: decide on its first non-blank characters.
            if self.mode == "undecided":
                head = self.text.lstrip()
                if not head:
                    return []
                if any(head.startswith(mk) for mk in markers):
                    self.mode = "calls"
                    return self._progress() if self.progressive else []
                if any(mk.startswith(head) for mk in markers):
                    return []
                self.mode = "content"
            return self._pass_content(len(self.text))
        at = self.text.find(markers[0], self.sent)
        if at >= 0:
            self.mode = "calls"
            out = self._pass_content(at)
            self._search_at = at
            return out + (self._progress() if self.progressive else [])
        return self._pass_content(len(self.text) - _held_prefix(self.text, markers[0]))

    def _pass_content(self, upto: int) -> list[dict]:
        if upto <= self.sent:
            return []
        piece = self.text[self.sent : upto]
        self.sent = upto
        return [{"content": piece}]

    def finish(self) -> tuple[list[dict], bool]:
        """The deltas still owed at the end, and whether the answer was tool calls."""
        if not self.spec.offered:
            return [], False
        if self.fmt == "generic" and self.mode.startswith("response"):
            return [], False
        if self.mode == "content":
            return self._pass_content(len(self.text)), False
        if self.progressive and self.calls:
            return [], True  # a call cut short (max_tokens) stays as sent, as OpenAI's does
        parsed = parse_output(self.text, self.spec, self.fmt)
        if not parsed.calls:
            if self.fmt == "generic":
                return ([{"content": parsed.content}] if parsed.content else []), False
            return self._pass_content(len(self.text)), False
        out: list[dict] = []
        if parsed.content and self.fmt == "hermes":
            out += self._pass_content(len(self.text[: self.text.find("<tool_call>")].rstrip()))
        for i, call in enumerate(parsed.calls):
            out.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            out.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]})
        self.calls = list(parsed.calls)
        return out, True
