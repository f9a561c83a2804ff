"""OpenAI's response shapes, as this server writes them: error bodies (and the responses that carry
them), SSE events, the usage-only chunk that ends a stream, the model card.

protocol.py reads requests; this module writes what goes back. No state: the routes, the gate and
the streams build every body they send through these functions. The error body, Retry-After and
the SSE event are llmctl.apierror's (the upstream router writes the same ones).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from llmctl.apierror import error_body, error_event, error_response, sse
from llmctl.serve.engine import EngineError

__all__ = [
    "SSE_DONE",
    "SSE_HEADERS",
    "engine_error_response",
    "error_body",
    "error_event",
    "error_response",
    "model_card",
    "model_list",
    "sse",
    "usage_chunk",
]

SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
SSE_DONE = b"data: [DONE]\n\n"


# -- errors ------------------------------------------------------------------------------------------


def engine_error_response(exc: EngineError) -> JSONResponse:
    return error_response(
        exc.status, exc.message, exc.type, exc.code, param=getattr(exc, "param", None), retry_after=exc.retry_after
    )


# -- streams -----------------------------------------------------------------------------------------


def usage_chunk(last: dict) -> dict:
    """The chunk that ends a stream when the client asked for `stream_options.include_usage`:
    no choices, the usage of the last chunk."""
    return {
        "id": last.get("id"),
        "object": last.get("object"),
        "created": last.get("created"),
        "model": last.get("model"),
        "choices": [],
        "usage": last["usage"],
    }


# -- models ------------------------------------------------------------------------------------------


def model_card(model_id: str, created: float) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": "llmctl"}


def model_list(*cards: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list", "data": list(cards)}
