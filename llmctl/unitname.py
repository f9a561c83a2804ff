"""The systemd unit of a service: the one rule, used by the unit renderer, the health check (what
it restarts), the polkit rule and the monitoring (what the alerts name).

Standard library only: the schema checks `services.<name>.unit` with it too.
"""

from __future__ import annotations

from llmctl.errors import UsageError
from llmctl.text import check_pattern, printable

HEALTH_UNIT = "llmctl-health.service"
HEALTH_TIMER = "llmctl-health.timer"
UNIT_RULE = "letters, digits, '_', '.', '-', '\\', ending in .service"


def default_unit(service: str) -> str:
    return f"llmctl-{service}.service"


def unit_problem(unit: str) -> str | None:
    """Why `unit` (as configured: `.service` may be left off) cannot be a server's unit, or None."""
    name = unit if unit.endswith(".service") else f"{unit}.service"
    if not check_pattern("service_unit", name) or name.startswith((".", "-")) or len(name) > 255:
        return f"{printable(repr(unit))} is not a valid unit name ({UNIT_RULE})"
    if name == HEALTH_UNIT:
        return f"{name} is the health check's unit"
    return None


def unit_name(service: str, unit: str | None) -> str:
    """services.<service>.unit, with `.service` added when left off; default llmctl-<service>.service."""
    if unit is None:
        return default_unit(service)
    problem = unit_problem(unit)
    if problem is not None:
        raise UsageError(f"services.{service}.unit: {problem}")
    return unit if unit.endswith(".service") else f"{unit}.service"
