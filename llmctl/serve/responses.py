"""OpenAI's response shapes, as this server writes them: error bodies (and the responses that carry
them), SSE events, the usage-only chunk that ends a stream, the model card.

protocol.py reads requests; this module writes what goes back. No state: the routes, the gate and
the streams build every body they send through these functions.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from llmctl.serve import protocol
from llmctl.serve.engine import EngineError
from llmctl.serve.security import retry_after_header

SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no"))
SSE_DONE = b"data: [DONE]\n\n"


# -- errors ------------------------------------------------------------------------------------------


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    # Text from a request may end up in a message or param: never let it make the error unwritable.
    message = protocol.safe_text(message)
    param = protocol.safe_text(param) if param is not None else None
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   *, param: str | None = None, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": retry_after_header(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def engine_error_response(exc: EngineError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.code, param=getattr(exc, "param", None),
                          retry_after=exc.retry_after)


# -- streams -----------------------------------------------------------------------------------------


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def usage_chunk(last: dict) -> dict:
    """The chunk that ends a stream when the client asked for `stream_options.include_usage`:
    no choices, the usage of the last chunk."""
    return {"id": last.get("id"), "object": last.get("object"), "created": last.get("created"),
            "model": last.get("model"), "choices": [], "usage": last["usage"]}


# -- models ------------------------------------------------------------------------------------------


def model_card(model_id: str, created: float) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": "llmctl"}


def model_list(*cards: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list", "data": list(cards)}
