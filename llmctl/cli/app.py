"""The root command: every command group is registered here, in one place.

Each group lives in its own module. Modules import only typer and the standard library at the
top; the heavy libraries are imported inside the commands that use them, so `llmctl --help`
stays as fast as a bare Typer app (benchmarks/bench_help.py measures it).
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl import __version__
from llmctl.cli import bench, config, health, k8s, models, monitoring, ps, serve, systemd, usage
from llmctl.cli._common import OPTIONS

app = typer.Typer(
    name="llmctl",
    help="Operate hosts that run local LLMs: verified model pulls, hardened systemd units, "
    "health checks, benchmarks and an OpenAI-compatible server.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; names from the config and the store
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (else $LLMCTL_CONFIG, else the user's or /etc/llmctl/config.yaml).",
            show_default=False,
        ),
    ] = None,
    system: Annotated[
        bool | None,
        typer.Option(
            "--system/--user",
            help="System mode (/etc/llmctl, /var/lib/llmctl) or user mode (XDG dirs). "
            "Default: system when run as root. $LLMCTL_HOME overrides both.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    OPTIONS.config = config_file
    OPTIONS.system = system


app.add_typer(models.app, name="models")
app.add_typer(systemd.app, name="systemd")
app.add_typer(monitoring.app, name="monitoring")
app.add_typer(k8s.app, name="k8s")
app.command("health", help=health.HELP, context_settings=health.CONTEXT_SETTINGS)(health.main)
app.command("bench", help=bench.HELP)(bench.main)
app.command("serve", help=serve.HELP)(serve.main)
app.command("ps", help=ps.HELP)(ps.main)
app.command("usage", help=usage.HELP)(usage.main)
app.add_typer(config.app, name="config")


def main() -> None:
    # One program name however it was started (`python -m llmctl` too): the usage lines say llmctl,
    # and the shell completion protocol reads _LLMCTL_COMPLETE.
    app(prog_name="llmctl")
