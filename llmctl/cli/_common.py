"""What every command shares: the error table, global options, output helpers.

Kept light: typer and the standard library only. rich is imported when something is rendered.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

from llmctl.errors import ExitCode, LlmctlError

F = TypeVar("F", bound=Callable[..., Any])
JSON_SCHEMA_VERSION = 1


@dataclass
class GlobalOptions:
    config: str | None = None
    system: bool | None = None


OPTIONS = GlobalOptions()


# -- the one error table ---------------------------------------------------------------------------


def render_error(exc: BaseException, hint: str | None = None) -> None:
    if os.environ.get("LLMCTL_DEBUG"):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"Error: {exc}\n")
    if hint:
        sys.stderr.write(f"Hint: {hint}\n")
    sys.stderr.flush()


def guard(fn: F | None = None, *, exit_for: Callable[[LlmctlError], int] | None = None) -> Any:
    """Turn LlmctlError into `Error: ...` on stderr and its exit code; Ctrl-C into exit 130.

    `exit_for` lets a command map errors to other codes (health speaks the monitoring-plugin
    convention). Anything else propagates: an unexpected exception is a bug and tests must see it.
    """

    def deco(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except LlmctlError as exc:
                render_error(exc, exc.hint)
                raise typer.Exit(exit_for(exc) if exit_for else exc.exit_code) from None
            except KeyboardInterrupt:
                sys.stderr.write("Interrupted.\n")
                raise typer.Exit(ExitCode.INTERRUPTED) from None

        return wrapper  # type: ignore[return-value]

    return deco(fn) if fn is not None else deco


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """`@command(app)` = `@app.command()` with the error table applied."""

    def deco(func: F) -> F:
        app.command(name, **kwargs)(guard(func))
        return func

    return deco


# -- config ----------------------------------------------------------------------------------------


def load_config():  # -> llmctl.config.LoadedConfig
    from llmctl.config import load_config as _load

    return _load(OPTIONS.config, system=OPTIONS.system)


def resolve_paths():
    from llmctl.paths import resolve_paths as _resolve

    return _resolve(OPTIONS.system)


# -- output ----------------------------------------------------------------------------------------


def emit_json(kind: str, payload: dict[str, Any]) -> None:
    """Print a result as JSON on stdout, in a stable, versioned shape."""
    doc = {"schema_version": JSON_SCHEMA_VERSION, "kind": kind, **payload}
    import json

    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A rich table on a terminal; plain aligned columns when piped (easy to grep and cut)."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if stdout_is_tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for col in columns:
            table.add_column(col)
        for row in cells:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    sys.stdout.write("\n".join(lines) + "\n")


def info(message: str, *, quiet: bool = False) -> None:
    """A diagnostic line for people, on stderr."""
    if not quiet:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
