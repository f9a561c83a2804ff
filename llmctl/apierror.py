"""OpenAI's error shape: the one builder for every error llmctl answers over HTTP, the server's own
and the upstream router's (so the two cannot drift apart, as they once did on Retry-After).

    {"error": {"message": "...", "type": "...", "param": null | "...", "code": null | "..."}}

- `message` and `param` may carry text from a request: anything not encodable (a lone surrogate)
  is written as an escape, so the error itself can always be sent.
- `Retry-After` is whole seconds, rounded UP and at least 1: a client that waits as told never
  comes back before the limit has passed (a rate limit 0.2 s from a token says 1, 1.5 s says 2).
- In a stream (after a 200 has been sent) the same body goes out as an SSE event.

Standard library only; error_response imports starlette (the server's stack) when it is called.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


def safe_text(text: str) -> str:
    """`text` with anything that is not encodable (a lone surrogate) written as an escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": safe_text(message),
            "type": type_,
            "param": safe_text(param) if param is not None else None,
            "code": code,
        }
    }


def retry_after_header(seconds: float) -> str:
    """The Retry-After value for a wait of `seconds`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    *,
    param: str | None = None,
    retry_after: float | None = None,
) -> JSONResponse:
    """The error as a response: the body, and Retry-After when `retry_after` is given."""
    from starlette.responses import JSONResponse

    headers = {"Retry-After": retry_after_header(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def sse(data: dict) -> bytes:
    """One Server-Sent Event carrying a JSON object (a chunk, or an error body mid-stream)."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, type_: str, code: str | None) -> bytes:
    """The error in a stream that has already started: an SSE event with the error body."""
    return sse(error_body(message, type_, code))
