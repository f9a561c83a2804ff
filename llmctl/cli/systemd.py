"""`llmctl systemd`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Render, install, verify and uninstall hardened systemd units for the services and the health timer.", no_args_is_help=True)
