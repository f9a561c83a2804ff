"""`llmctl bench`."""

from __future__ import annotations

from llmctl.cli._common import guard
from llmctl.errors import OperationFailed

HELP = "Benchmark prompt processing and generation tokens/s of a model (llama-bench style) or of a running endpoint (--url), with CI gates."


@guard
def main() -> None:
    raise OperationFailed("llmctl bench is not built yet")
