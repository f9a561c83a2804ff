"""The state one server shares between its gate, its routes and its streams.

create_app() builds one ServerContext and puts it on the Starlette app (`app.state.ctx`): the
routes read it from `request.app.state.ctx`, the gate holds it, and the server flips
`shutting_down` and waits on `active` when it drains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmctl.serve.engine import Scheduler
from llmctl.serve.metrics import Metrics
from llmctl.serve.protocol import Limits
from llmctl.serve.security import RateLimiter
from llmctl.serve.settings import ServeSettings


@dataclass
class ServerContext:
    settings: ServeSettings
    engine: Scheduler
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


def context_of(request: Any) -> ServerContext:
    """The server's context, from a Starlette request (create_app put it on the app)."""
    ctx: ServerContext = request.app.state.ctx
    return ctx
