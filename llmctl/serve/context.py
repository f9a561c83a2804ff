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
from typing import Any

from llmctl.serve.metrics import Metrics
from llmctl.serve.pool import ModelPool
from llmctl.serve.protocol import Limits
from llmctl.serve.security import RateLimiter
from llmctl.serve.settings import ServeSettings


@dataclass
class ServerContext:
    settings: ServeSettings
    pool: ModelPool  # the models: each request leases its model's engine from the pool
    metrics: Metrics
    limiter: RateLimiter
    access_log: Callable[[dict], None]
    bounds: Limits  # what protocol.to_generation_request needs of the settings
    router: Any = None  # llmctl.upstreams.router.Router, or None: no fallback (see create_app)
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

    def bounds_for(self, model: str) -> Limits:
        """protocol.to_generation_request's bounds for one model (its name in the responses)."""
        if model == self.bounds.model_name:
            return self.bounds
        if model not in self._bounds:
            self._bounds[model] = replace(self.bounds, model_name=model)
        return self._bounds[model]


def context_of(request: Any) -> ServerContext:
    """The server's context, from a Starlette request (create_app put it on the app)."""
    ctx: ServerContext = request.app.state.ctx
    return ctx
