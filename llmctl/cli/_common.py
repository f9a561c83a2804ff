"""What every command shares: the error table, global options, output helpers.

Kept light: typer and the standard library only. rich is imported when something is rendered.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from llmctl.errors import ExitCode, LlmctlError

F = TypeVar("F", bound=Callable[..., Any])
JSON_SCHEMA_VERSION = 1


@dataclass
class GlobalOptions:
    config: str | None = None
    system: bool | None = None


OPTIONS = GlobalOptions()


# -- the options every command group shares: declared once, one meaning each --------------------------
#
# --json        the command's result as JSON on stdout (a stable shape with schema_version). Printed
#               whatever else is asked, --quiet included.
# --quiet, -q   nothing on success but the result --json (or bench's -o) asks for: no progress, no
#               notes (errors and warnings still go to stderr). `llmctl health`: nothing when every
#               service is OK.
# --output-dir  a directory to write files into, instead of printing them.
# -o, --output  an output *format* (`llmctl bench -o json`, llama-bench's meaning). No command takes
#               -o for a directory: the render commands refuse it with the new spelling (below).
# --api-key     the Bearer key sent to an endpoint given with --url (else $OPENAI_API_KEY); never printed.

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print nothing on success but the result --json or -o asks for (no progress, no notes)."
    ),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        metavar="DIR",
        show_default=False,
        help="Write the files into DIR (created if missing) instead of printing them.",
    ),
]


ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        show_envvar=True,
        metavar="KEY",
        show_default=False,
        help="With --url: the Bearer key the endpoint is sent (else $OPENAI_API_KEY). Never printed.",
    ),
]
OUTPUT_FORMAT_DECLS = ("-o", "--output")


def output_format_option(formats: str) -> Any:
    """-o/--output FORMAT, declared here once; each command that prints several formats lists its own."""
    return typer.Option(*OUTPUT_FORMAT_DECLS, metavar="FORMAT", help=formats)


def _refuse_short_output(value: str | None) -> None:
    if value is not None:
        raise typer.BadParameter(
            "a directory is --output-dir DIR (-o is an output format, as in `llmctl bench -o json`)", param_hint="-o"
        )


# Until 0.1 the render commands took `-o DIR`: a hidden -o that says what to write instead (exit 2).
OutputDirShortOpt = Annotated[
    str | None, typer.Option("-o", hidden=True, expose_value=False, callback=_refuse_short_output, show_default=False)
]


# -- shell completion: names from the config and the store, cheaply (no pydantic, no validation) -----


def _root_options(ctx: typer.Context) -> tuple[str | None, bool | None]:
    """--config and --system/--user as typed before the command (the root callback does not run
    while the shell completes)."""
    params = ctx.find_root().params
    return params.get("config_file"), params.get("system")


def _starting(ctx: typer.Context, names: Sequence[str], incomplete: str) -> list[str]:
    """The names that start so, less those the command line has already given."""
    given: set[str] = set()
    for value in ctx.params.values():
        given.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str))
    return [n for n in names if n.startswith(incomplete) and n not in given]


def complete_services(ctx: typer.Context, incomplete: str) -> list[str]:
    """services: in the config file."""
    from llmctl.config import section_names

    config, system = _root_options(ctx)
    return _starting(ctx, section_names("services", config, system=system), incomplete)


def complete_installed_models(ctx: typer.Context, incomplete: str) -> list[str]:
    """The models in the store's lock."""
    from llmctl.errors import LlmctlError
    from llmctl.models.store import Store
    from llmctl.paths import resolve_paths as _resolve

    try:
        names = sorted(Store(_resolve(_root_options(ctx)[1])).read_lock().entries)
    except (LlmctlError, OSError, ValueError):
        names = []
    return _starting(ctx, names, incomplete)


def complete_model_refs(ctx: typer.Context, incomplete: str) -> list[str]:
    """What `models pull` takes by name: the config's models: and the smoke model."""
    from llmctl.config import section_names
    from llmctl.models.smoke import SMOKE_NAME

    config, system = _root_options(ctx)
    return _starting(ctx, sorted({SMOKE_NAME, *section_names("models", config, system=system)}), incomplete)


# -- the one error table ---------------------------------------------------------------------------

BUG_HINT = "this is a bug in llmctl; please report it with the output of the same command run with LLMCTL_DEBUG=1"


def debug_mode() -> str | None:
    """LLMCTL_DEBUG: unset (or 0): one-line errors. `raise`: an unexpected exception propagates
    (the test suite sets it, so a bug fails a test). Any other value: a traceback with every error."""
    value = os.environ.get("LLMCTL_DEBUG", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return None
    return "raise" if value == "raise" else "traceback"


def render_error(error: BaseException | str, hint: str | None = None) -> None:
    """`Error: ...` (+ `Hint: ...`) on stderr, control characters made visible."""
    if isinstance(error, BaseException) and debug_mode() == "traceback":
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    from llmctl.text import printable

    sys.stderr.write(f"Error: {printable(error)}\n")
    if hint:
        sys.stderr.write(f"Hint: {printable(hint)}\n")
    sys.stderr.flush()


def describe_unexpected(exc: BaseException) -> tuple[str, str | None]:
    """The one line (and hint) for an exception that is not an LlmctlError. An OSError is the host
    refusing something (permissions, a full disk); anything else is a bug."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or exc}{where}", None
    if isinstance(exc, MemoryError):
        return "out of memory", None
    text = str(exc).strip().splitlines()
    return f"internal error: {type(exc).__name__}" + (f": {text[0][:300]}" if text else ""), BUG_HINT


def _validation_error(exc: Exception) -> LlmctlError | None:
    """pydantic's ValidationError (a value from a flag checked by the config schema) as the
    ConfigError the config loader would raise: one line naming the field, exit 2."""
    if type(exc).__name__ != "ValidationError" or not type(exc).__module__.startswith("pydantic"):
        return None
    from llmctl.config import format_validation_error
    from llmctl.errors import ConfigError

    return ConfigError(format_validation_error(exc))


def guard(fn: F | None = None, *, exit_for: Callable[[Exception], int] | None = None) -> Any:
    """The one error path of every command: LlmctlError -> `Error: ...` on stderr and its exit code;
    Ctrl-C -> exit 130; any other exception -> one line, a hint to report the bug (an OSError:
    no hint), exit 1, and a traceback only under LLMCTL_DEBUG=1.

    `exit_for` lets a command map errors to other codes (health speaks the monitoring-plugin
    convention: every error is 3, UNKNOWN). Under LLMCTL_DEBUG=raise an unexpected exception
    propagates, so tests (CliRunner with catch_exceptions=False) see bugs.
    """

    def deco(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (typer.Exit, typer.Abort, typer.TyperException):
                raise  # Typer's own exits and usage errors
            except LlmctlError as exc:
                render_error(exc, exc.hint)
                raise typer.Exit(exit_for(exc) if exit_for else exc.exit_code) from None
            except KeyboardInterrupt:
                sys.stderr.write("Interrupted.\n")
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            except Exception as exc:  # noqa: BLE001 - the one place every unexpected exception ends
                invalid = _validation_error(exc)
                if invalid is not None:  # a schema object built from a flag (serve --model): exit 2
                    render_error(invalid, invalid.hint)
                    raise typer.Exit(exit_for(invalid) if exit_for else invalid.exit_code) from None
                if debug_mode() == "raise":
                    raise
                message, hint = describe_unexpected(exc)
                if debug_mode() == "traceback":
                    import traceback

                    traceback.print_exception(exc, file=sys.stderr)
                render_error(message, hint)
                raise typer.Exit(exit_for(exc) if exit_for else ExitCode.FAILED) from None

        wrapper.__llmctl_guarded__ = True  # type: ignore[attr-defined]  # tests: every command has the guard
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
    from llmctl.text import printable

    cells = [[printable("" if c is None else c) for c in row] for row in rows]
    if stdout_is_tty():
        from rich.console import Console
        from rich.table import Table

        from rich.text import Text

        table = Table(title=title, show_lines=False)
        for col in columns:
            table.add_column(col)
        for row in cells:
            table.add_row(*(Text(c) for c in row))  # Text: a '[' in a model name is not markup
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
        from llmctl.text import printable

        sys.stderr.write(printable(message) + "\n")
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


# The services a command acts on (health, ps): the config's, completed from it.
ServicesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[SERVICE]...",
        help="Services from the config (default: all of them).",
        show_default=False,
        autocompletion=complete_services,
    ),
]
