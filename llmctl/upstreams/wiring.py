"""What `llmctl serve` runs with: the router (fallback, privacy, airgap) and the usage ledger.

The CLI calls this and hands the router to llmctl.serve (features do not import each other: the
usage ledger reaches the router as a callable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.paths import Paths
    from llmctl.schema import Config
    from llmctl.serve.settings import ServeSettings
    from llmctl.upstreams.router import Router
    from llmctl.usage.ledger import Ledger


def build_router(cfg: Config, paths: Paths, settings: ServeSettings) -> tuple[Router, Ledger | None, list[str]]:
    """(router, ledger or None, notes for the start-up log). Raises ConfigError for a missing key."""
    from llmctl.upstreams.config import routing_for
    from llmctl.upstreams.router import Router

    routing = routing_for(cfg, settings.service)
    ledger = None
    from llmctl.usage.ledger import FILENAME, Ledger

    notes: list[str] = []
    if cfg.routing.ledger:
        try:
            ledger = Ledger(paths.serve_state_dir / FILENAME, maxsize=cfg.routing.ledger_queue)
        except Exception as exc:  # noqa: BLE001 - serving goes on without a ledger
            notes.append(f"usage ledger off: cannot open {paths.serve_state_dir / FILENAME}: {exc}")
    if routing.airgap and cfg.upstreams:
        notes.append("airgap: no request leaves this host; upstreams are not used")
    elif routing.upstreams:
        names = ", ".join(u.name for u in routing.upstreams)
        notes.append(f"fallback ({routing.strategy}): {names}")
    router = Router(
        routing,
        served_model=settings.model_name,
        max_tokens=settings.limits.max_tokens,
        recorder=ledger.record if ledger is not None else None,
        dropped=(lambda: ledger.dropped) if ledger is not None else None,
    )
    return router, ledger, notes
