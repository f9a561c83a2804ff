"""OpenAI's request bodies, validated in full before anything reaches llama.cpp.

`parse_body()` turns the raw body into a JSON object (strict UTF-8, no NaN/Infinity, bounded nesting,
every string encodable), the models below check it with strict types (no coercion: `"5"`, `true`,
`"yes"` are not numbers or booleans), and `to_generation_request()` turns a validated body into the
`GenerationRequest` the engine takes, in the normalized shape the engine may rely on (see
`llmctl.serve.engine`): messages with a known role and text content, token ids inside the
vocabulary, `max_tokens >= 1`, finite sampling values in range, `logit_bias` keyed by token id, and a
`response_format` compiled to GBNF by `llmctl.serve.grammar`.

Every refusal is an `InvalidRequest` (400, OpenAI's error shape, `param` naming the field). Unknown
fields are accepted and ignored, as OpenAI's API does with new ones; fields this server knows but
does not implement (`REFUSED`, `best_of > 1`, `n` above `limits.max_n`, `logprobs` where the engine
has none) are refused.

Tools (`tools`, `tool_choice`, `parallel_tool_calls`) are checked by `llmctl.serve.tools`; a chat
request with tools, or with tool traffic in its history, reaches the engine as plain messages in the
model's tool format (`tool_format`), with a grammar when the format or tool_choice calls for one.

Pure: pydantic and the settings only; the engine's state comes in as `n_vocab`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmctl.apierror import safe_text
from llmctl.serve.engine import BadRequest, GenerationRequest, NotReady

if TYPE_CHECKING:
    from llmctl.serve.settings import ServeSettings
    from llmctl.serve.tools import ToolSpec

MAX_JSON_DEPTH = 64  # nesting of the request body; OpenAI's bodies need a handful
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's bound for chat's top_logprobs)
MAX_LOGIT_BIAS = 1024
MAX_EMBEDDING_INPUTS = 2048
TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,9}")  # a logit_bias key: a token id in decimal, no sign
INT64 = 2**63
# Known OpenAI fields this server does not implement: a 400 naming the field, never silently dropped.
REFUSED: dict[str, dict[str, str]] = {
    "chat": {
        "functions": "the deprecated 'functions' is not supported; send 'tools'",
        "function_call": "the deprecated 'function_call' is not supported; send 'tool_choice'",
        "audio": "audio output is not supported: this server serves text models",
        "prediction": "predicted outputs are not supported by this server",
        "web_search_options": "web search is not supported by this server",
    },
    "completion": {},
}
NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "video_url")


class InvalidRequest(BadRequest):
    """A request refused before it reaches the engine: 400 with the field in `param`."""

    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


# -- the body --------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not a JSON number; send finite numbers only")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"{text} is out of range for a number")
    return value


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or InvalidRequest: strict UTF-8 (no encoded surrogates),
    standard JSON (no NaN, Infinity or 1e999), nesting at most MAX_JSON_DEPTH, and every string
    (keys too) valid Unicode text (no lone surrogate escapes such as "\\ud800")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidRequest(f"the JSON body nests too deeply (the limit is {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, and the 4300-digit limit of int()
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.) "
            f"{str(exc)[:200]}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_tree(data)
    return data


def check_tree(data: Any) -> None:
    """Nesting depth and encodable text, without recursion (the walk is over the parsed body)."""
    stack: list[tuple[Any, int, tuple]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"the JSON body nests too deeply (the limit is {MAX_JSON_DEPTH} levels)",
                safe_text(str(path[0])) if path else None,
            )
        if isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, (*path, k))
                stack.append((v, depth + 1, (*path, k)))
        else:
            stack.extend((v, depth + 1, (*path, i)) for i, v in enumerate(value))


def _check_text(s: str, path: tuple) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "holds a lone UTF-16 surrogate (such as \\ud800), which is not text",
            safe_text(param_path(path)) or None,
            code="invalid_encoding",
        ) from None


# -- the models -------------------------------------------------------------------------------------------


class _Model(BaseModel):
    """Strict: no coercion between JSON types."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None
    refusal: str | None = None


class _Function(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    arguments: str


class _ToolCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: _Function


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


Unit = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Generation(_Model):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: Unit | None = None
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    min_p: Unit | None = None
    typical_p: Unit | None = None
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None


class ChatBody(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: Any = None  # checked by llmctl.serve.tools.parse_tools
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    modalities: list[str] | None = None


class CompletionBody(_Generation):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1)


class EmbeddingBody(_Model):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


def param_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validate(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        # Union members each add a segment ('str', 'list[...]'); the field path is what a client needs.
        loc = tuple(
            p
            for p in err.get("loc", ())
            if not (
                isinstance(p, str)
                and ("[" in p or p in ("str", "int", "float", "bool", "function-after", "constrained-str"))
            )
        )
        where = param_path(loc)
        message = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            message = "is required"
        elif err.get("type") == "extra_forbidden":
            message = "is not a known field"
        raise InvalidRequest(f"{where}: {message}" if where else message, where or None) from None


def validate_chat(data: dict) -> ChatBody:
    return _validate(ChatBody, data)


def validate_completion(data: dict) -> CompletionBody:
    return _validate(CompletionBody, data)


def validate_embedding(data: dict) -> EmbeddingBody:
    return _validate(EmbeddingBody, data)


# -- body -> GenerationRequest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What the translation needs of the server: its model, context and caps."""

    model_name: str
    n_ctx: int
    max_tokens: int  # the cap on (and the default of) a request's max_tokens
    max_prompt_tokens: int | None
    max_n: int = 1  # choices per request

    @classmethod
    def of(cls, settings: ServeSettings) -> Limits:
        return cls(
            settings.model_name,
            settings.n_ctx,
            settings.limits.max_tokens,
            settings.limits.max_prompt_tokens,
            settings.limits.max_n,
        )


def flatten_content(content: str | list[_Part] | None, where: str) -> str:
    """Text parts joined with newlines (as llama.cpp does for templates without typed content);
    a part that is not text is refused: this server serves text models."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None:
            texts.append(part.refusal)
        elif part.type in NON_TEXT_PARTS:
            raise InvalidRequest(
                f"{where}[{i}]: content parts of type '{part.type}' are not supported: this server takes text only",
                f"{where}[{i}].type",
                code="unsupported_content",
            )
        elif part.type in ("text", "refusal"):
            raise InvalidRequest(f"{where}[{i}].{part.type}: is required", f"{where}[{i}].{part.type}")
        else:
            raise InvalidRequest(
                f"{where}[{i}].type: unknown content part type {part.type!r} (text)", f"{where}[{i}].type"
            )
    return "\n".join(texts)


def normalize_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The engine's message shape: role system|user|assistant|tool, content a string."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.content is None and m.role != "assistant":
            raise InvalidRequest(f"{where}.content: is required for a {m.role} message", f"{where}.content")
        if m.role == "assistant" and m.content is None and not m.tool_calls:
            raise InvalidRequest(
                f"{where}.content: is required for an assistant message without tool_calls", f"{where}.content"
            )
        if m.role == "tool" and m.tool_call_id is None:
            raise InvalidRequest(f"{where}.tool_call_id: is required for a tool message", f"{where}.tool_call_id")
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": flatten_content(m.content, f"{where}.content"),
        }
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _token_ids(ids: list[int], n_vocab: int, where: str) -> list[int]:
    if not ids:
        raise InvalidRequest(f"{where}: must not be empty", where)
    if n_vocab <= 0:
        raise NotReady("the model is still loading; token ids cannot be checked yet")
    for i, t in enumerate(ids):
        if not 0 <= t < n_vocab:
            raise InvalidRequest(
                f"{where}[{i}]: token id {t} is not in this model's vocabulary (0-{n_vocab - 1})", f"{where}[{i}]"
            )
    return ids


def _logit_bias(bias: dict[str, float], n_vocab: int) -> dict[int, float]:
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias: has {len(bias)} entries; the limit is {MAX_LOGIT_BIAS}", "logit_bias")
    if bias and n_vocab <= 0:
        raise NotReady("the model is still loading; token ids cannot be checked yet")
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not TOKEN_ID.fullmatch(key):
            raise InvalidRequest(f"logit_bias: key {key!r} is not a token id (a non-negative integer)", "logit_bias")
        token = int(key)
        if token >= n_vocab:
            raise InvalidRequest(
                f"logit_bias: token id {token} is not in this model's vocabulary (0-{n_vocab - 1})", "logit_bias"
            )
        out[token] = float(value)
    return out


def _stop(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP:
        raise InvalidRequest(f"stop: has {len(stops)} sequences; the limit is {MAX_STOP}", "stop")
    for i, s in enumerate(stops):
        if not s:
            raise InvalidRequest(f"stop[{i}]: must not be empty", "stop")
    return stops or None


def tool_spec(body: ChatBody) -> ToolSpec | None:
    """The chat request's tools, validated (None without tools)."""
    from llmctl.serve.tools import ToolError, parse_tools

    try:
        return parse_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    except ToolError as exc:
        raise InvalidRequest(
            exc.message, exc.param, code="invalid_schema" if ".parameters" in exc.param else None
        ) from None


def refuse_unsupported(body: ChatBody | CompletionBody) -> None:
    """A 400 for each known OpenAI field this server does not implement (see REFUSED)."""
    extra = body.model_extra or {}
    for name, why in REFUSED["chat" if isinstance(body, ChatBody) else "completion"].items():
        if extra.get(name) is not None:
            raise InvalidRequest(f"{name}: {why}", name, code="unsupported_parameter")
    if isinstance(body, ChatBody) and body.modalities is not None and set(body.modalities) - {"text"}:
        raise InvalidRequest(
            'modalities: this server answers with text only (["text"])', "modalities", code="unsupported_parameter"
        )


def _logprobs(body: ChatBody | CompletionBody, supported: bool) -> int | None:
    """How many alternatives per token the request wants logprobs of (0: the token's own only), or
    None for no logprobs. Chat: `logprobs: true` and `top_logprobs` 0-20; completions: `logprobs` N."""
    if isinstance(body, ChatBody):
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidRequest("top_logprobs: needs logprobs: true", "top_logprobs")
        k = (body.top_logprobs or 0) if body.logprobs else None
    else:
        k = body.logprobs
        if k is not None and k > MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"logprobs: at most {MAX_TOP_LOGPROBS}", "logprobs")
        if k is not None and body.echo:
            raise InvalidRequest(
                "logprobs: the prompt's logprobs (logprobs with echo) are not supported",
                "logprobs",
                code="unsupported_parameter",
            )
    if k is not None and not supported:
        raise InvalidRequest(
            "logprobs: logprobs are not supported by this server's engine", "logprobs", code="unsupported_parameter"
        )
    return k


def to_generation_request(
    body: ChatBody | CompletionBody,
    limits: Limits,
    n_vocab: int,
    *,
    tools: ToolSpec | None = None,
    tool_format: str = "generic",
    logprobs: bool = False,
) -> GenerationRequest:
    """A validated chat or completion body -> the engine's request; InvalidRequest for what the
    models alone cannot see (vocabulary, combinations, context room). `tools`: the chat body's
    `tool_spec()`, rendered in `tool_format` (llmctl.serve.tools.FORMATS). `logprobs`: the engine
    supports `params["logprobs"]` (else a request for them is refused)."""
    refuse_unsupported(body)
    top = _logprobs(body, logprobs)
    if body.n > limits.max_n:
        raise InvalidRequest(f"n: this server returns at most {limits.max_n} choices per request (limits.max_n)", "n")
    requested = body.max_tokens
    if isinstance(body, ChatBody):
        if body.max_completion_tokens is not None:
            requested = body.max_completion_tokens
    else:
        if body.best_of is not None and body.best_of != 1:
            raise InvalidRequest("best_of: this server returns one choice per request (best_of must be 1)", "best_of")
    max_tokens = limits.max_tokens if requested is None else min(requested, limits.max_tokens)
    room = limits.n_ctx - max_tokens
    prompt_limit = room if limits.max_prompt_tokens is None else min(room, limits.max_prompt_tokens)
    if prompt_limit < 1:
        raise InvalidRequest(
            f"max_tokens={max_tokens} leaves no room for a prompt in the context of {limits.n_ctx} tokens", "max_tokens"
        )
    params: dict[str, Any] = {"max_tokens": max_tokens, "model": limits.model_name}
    for key in SAMPLING:
        value = getattr(body, key)
        if value is not None:
            params[key] = value
    stop = _stop(body.stop)
    if stop:
        params["stop"] = stop
    if body.logit_bias:
        params["logit_bias"] = _logit_bias(body.logit_bias, n_vocab)
    if top is not None:
        params["logprobs"] = top
    if isinstance(body, ChatBody):
        messages = normalize_messages(body.messages)
        grammar = None
        if body.response_format is not None:
            from llmctl.serve.grammar import SchemaError, grammar_for_response_format

            try:
                grammar = grammar_for_response_format(body.response_format)
            except SchemaError as exc:
                raise InvalidRequest(exc.message, exc.param, code="invalid_schema") from None
        from llmctl.serve import tools as T

        if T.uses_tools(messages, tools):
            messages = T.render_messages(messages, tools, tool_format)
            try:
                tool_grammar = T.grammar_for(tools, tool_format) if tools is not None else None
            except T.ToolError as exc:
                raise InvalidRequest(exc.message, exc.param, code="invalid_schema") from None
            if grammar is not None and tools is not None and tools.offered:
                raise InvalidRequest(
                    "response_format: a JSON response_format cannot be combined with tools the "
                    "model may call; send tool_choice 'none', or leave one out",
                    "response_format",
                )
            grammar = grammar or tool_grammar
        params["messages"] = messages
        if grammar is not None:
            params["grammar"] = grammar
        endpoint = "chat"
    else:
        prompt: Any = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise InvalidRequest("prompt: this server takes one prompt per request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequest("prompt: must not be empty", "prompt")
        else:
            prompt = _token_ids(prompt, n_vocab, "prompt")
            if body.echo:
                raise InvalidRequest("echo: echo is supported only with a text prompt", "echo")
            if len(prompt) > prompt_limit:
                raise InvalidRequest(
                    f"prompt: the prompt has {len(prompt)} tokens; this server accepts at most {prompt_limit}",
                    "prompt",
                    code="context_length_exceeded",
                )
        params.update(prompt=prompt, echo=body.echo, suffix=body.suffix)
        endpoint = "completion"
    return GenerationRequest(endpoint, params, stream=body.stream, max_prompt_tokens=prompt_limit)


def prompt_text(request: GenerationRequest) -> str:
    """The request's text, for the cheap token-count bound before queueing (exact for a text
    prompt, a lower bound for chat, empty for token ids)."""
    p = request.params
    if "messages" in p:
        return "\n".join(m["content"] for m in p["messages"])
    return p["prompt"] if isinstance(p.get("prompt"), str) else ""


def embedding_input(body: EmbeddingBody) -> str | list[str]:
    """The engine's embedding input: one string or a list of non-empty strings."""
    value = body.input
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input: must not be empty", "input")
        return value
    if not value:
        raise InvalidRequest("input: must not be empty", "input")
    texts = [v for v in value if isinstance(v, str)]
    if len(texts) != len(value):
        raise InvalidRequest("input: token arrays are not supported for embeddings; send text", "input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"input: has {len(texts)} items; the limit is {MAX_EMBEDDING_INPUTS}", "input")
    for i, v in enumerate(texts):
        if not v:
            raise InvalidRequest(f"input[{i}]: must not be empty", f"input[{i}]")
    return texts
