"""The state one server shares between its gate, its routes and its streams.

create_app() builds one ServerContext and puts it on the Starlette app (`app.state.ctx`): the
routes read it from `request.app.state.ctx`, the gate holds it, and the server flips
`shutting_down` and waits on `active` when it drains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from llmctl.serve.engine import EngineError
from llmctl.serve.metrics import Metrics
from llmctl.serve.pool import ModelPool
from llmctl.serve.protocol import Limits
from llmctl.serve.security import RateLimiter
from llmctl.serve.settings import ServeSettings


class Fallback(Protocol):
    """What serve needs of the upstream router (llmctl.upstreams.router.Router, which the CLI wires
    in through llmctl.upstreams.wiring): serve does not import it."""

    def attach(self, registry: Any) -> None:
        """Register the router's metrics in the server's Prometheus registry."""

    def observe(self, record: dict) -> None:
        """Every finished request's access record (the route counters, the usage ledger)."""

    async def handle(self, request: Request, endpoint: str, error: EngineError, info: dict) -> Response | None:
        """A generation that failed here with a 5xx before anything was sent: an upstream's
        response, an error response, or None (serve answers with its own error)."""

    async def aclose(self) -> None:
        """Close the upstream connections (at shutdown)."""


@dataclass
class ServerContext:
    settings: ServeSettings
    pool: ModelPool  # the models: each request leases its model's engine from the pool
    metrics: Metrics
    limiter: RateLimiter
    access_log: Callable[[dict], None]
    bounds: Limits  # what protocol.to_generation_request needs of the settings
    router: Fallback | None = None  # None: no fallback, no ledger (see create_app)
    shutting_down: bool = False
    active: int = 0  # /v1/ requests in progress: what the SIGTERM drain waits for
    streams: int = 0  # streaming requests admitted (waiting or sending), bounded by max_concurrent_streams
    started_at: float = field(default_factory=time.time)
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # concurrent /ready checks share one probe
    # The pinned and preload models are loaded (the server sets it; an adopted engine: at once).
    # Until then /health says 503 model_loading; a failed one: model_failed.
    preloaded: bool = False
    preload_error: str | None = None
    _bounds: dict[str, Limits] = field(default_factory=dict)
    _tool_formats: dict[str, str] = field(default_factory=dict)  # per model: see tool_format_for

    def bounds_for(self, model: str) -> Limits:
        """protocol.to_generation_request's bounds for one model (its name in the responses)."""
        if model == self.bounds.model_name:
            return self.bounds
        if model not in self._bounds:
            self._bounds[model] = replace(self.bounds, model_name=model)
        return self._bounds[model]

    def tool_format_for(self, settings: ServeSettings) -> str:
        """A model's tool format (llmctl.serve.tools.FORMATS): the config's, else the one its GGUF's
        chat template defines (read once per model); generic when a named chat_format replaces that
        template."""
        name = settings.model_name
        if name not in self._tool_formats:
            self._tool_formats[name] = settings.tool_format or _detect_tool_format(settings)
        return self._tool_formats[name]


def context_of(request: Any) -> ServerContext:
    """The server's context, from a Starlette request (create_app put it on the app)."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


def _detect_tool_format(settings: ServeSettings) -> str:
    from llmctl.errors import LlmctlError
    from llmctl.models.gguf import read_gguf_string
    from llmctl.serve.tools import detect_format

    if settings.chat_format is not None:  # a named format, not the template the GGUF carries
        return "generic"
    try:
        return detect_format(read_gguf_string(settings.model_path, "tokenizer.chat_template"))
    except (OSError, LlmctlError):
        return "generic"
