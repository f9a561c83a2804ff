"""`llmctl serve`."""

from __future__ import annotations

from llmctl.cli._common import guard
from llmctl.errors import OperationFailed

HELP = "Serve a verified model on an OpenAI-compatible HTTP endpoint with API keys, rate limits, bounded queues and metrics."


@guard
def main() -> None:
    raise OperationFailed("llmctl serve is not built yet")
