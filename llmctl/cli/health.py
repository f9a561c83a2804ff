"""`llmctl health`."""

from __future__ import annotations

from llmctl.cli._common import guard
from llmctl.errors import OperationFailed

HELP = "Probe services (TCP, /health, models, a one-token completion) and restart them on failure. Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."


@guard
def main() -> None:
    raise OperationFailed("llmctl health is not built yet")
