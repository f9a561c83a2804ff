"""`llmctl models`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Pull GGUF models from the Hugging Face Hub verified by SHA256; list, show, verify, import and remove them.", no_args_is_help=True)
