"""`llmctl health`: probe services, restart them on failure, speak the monitoring-plugin convention.

Exit codes: 0 OK, 1 WARNING (slow, degraded, or recovered after a restart), 2 CRITICAL (still down,
restart failed, restart budget spent), 3 UNKNOWN (bad config or usage, lock held, nothing to check).

stdout: one Nagios line per service (or --json). stderr: one JSON object per line for every action
(probe failed, restart issued, recovered ...), which journald keeps. --quiet: nothing when every
service is OK (cron mails any output) but the JSON that --json asks for; otherwise everything, as
without it.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from llmctl.cli._common import ApiKeyOpt, JsonOpt, QuietOpt, ServicesArg, emit_json, guard

HELP = "Probe services (TCP, /health, models, a one-token completion) and restart them on failure. Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."

UNKNOWN = 3

# `llmctl health` exits 3 (UNKNOWN) for bad usage. app.py registers the command with these settings:
# an unknown option then reaches SERVICE and is refused here (3), not by Typer's parser (2). Numbers
# are parsed here for the same reason (`--timeout abc` exits 3). Left to Typer, and exit 2: an
# option without its value (`--timeout` at the end of the line).
CONTEXT_SETTINGS = {"ignore_unknown_options": True}


class _Events:
    """Structured log lines on stderr; under --quiet held back until we know the run was not OK."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.held: list[str] = []

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        from llmctl.health.report import log_line

        line = log_line(event, level, fields, time.time())
        if self.hold:
            self.held.append(line)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def flush(self) -> None:
        if self.held:
            sys.stderr.write("".join(line + "\n" for line in self.held))
            sys.stderr.flush()
            self.held.clear()


def _number(flag: str, raw: str | None, kind: type, minimum: float, *, above: bool = False) -> Any:
    from llmctl.errors import UsageError

    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{flag} {raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if value != value or value < minimum or (above and value == minimum):  # NaN, or out of range
        raise UsageError(f"{flag} {raw!r}: must be {'>' if above else '>='} {minimum:g}")
    return value


def _exit_for(_exc: Exception) -> int:
    """Every error of a health run, expected or not, is UNKNOWN (3): never 1, which the health
    unit counts as success (WARNING)."""
    return UNKNOWN


@guard(exit_for=_exit_for)
def main(
    services: ServicesArg = None,
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url", metavar="URL", help="Check an endpoint ad hoc (repeatable); never restarted.", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="With --url: the model /v1/models must list (default: the first).")
    ] = None,
    api_key: ApiKeyOpt = None,  # configured services send the first key of their api_keys_file
    timeout: Annotated[
        str | None, typer.Option("--timeout", metavar="SECONDS", help="Per probe; default: health.timeout_s.")
    ] = None,
    retries: Annotated[
        str | None, typer.Option("--retries", metavar="N", help="Extra attempts; default: health.retries.")
    ] = None,
    retry_delay: Annotated[
        str | None,
        typer.Option("--retry-delay", metavar="SECONDS", help="Between attempts; default: health.retry_delay_s."),
    ] = None,
    slow_ms: Annotated[
        str | None,
        typer.Option("--slow-ms", metavar="MS", help="Slower completion is WARNING; default: health.slow_ms."),
    ] = None,
    recovery_timeout: Annotated[
        str | None,
        typer.Option(
            "--recovery-timeout",
            metavar="SECONDS",
            help="Wait for a restarted service; default: health.recovery_timeout_s.",
        ),
    ] = None,
    no_restart: Annotated[bool, typer.Option("--no-restart", help="Report only: never restart.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be restarted; restart nothing, save no state.")
    ] = False,
    json_out: JsonOpt = False,
    textfile: Annotated[
        str | None,
        typer.Option(
            "--textfile",
            metavar="PATH",
            help="Write Prometheus metrics for node_exporter's textfile collector (atomically).",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="If another health run holds the lock, wait this long for it (default 0: exit 3 at once).",
        ),
    ] = None,
) -> None:
    events = _Events(hold=quiet)
    try:
        code = _run(
            services or [],
            url or [],
            model,
            api_key,
            timeout,
            retries,
            retry_delay,
            slow_ms,
            recovery_timeout,
            no_restart,
            dry_run,
            json_out,
            textfile,
            quiet,
            wait,
            events,
        )
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it was, the monitoring system hears UNKNOWN
        events.flush()
        _unknown(exc, json_out, textfile)
        raise  # guard prints the error line and exits 3 (UNKNOWN), whatever the exception
    raise typer.Exit(code)


def _unknown(exc: Exception, json_out: bool, textfile: str | None) -> None:
    """Could not check: still one line on stdout for the monitoring system, and the textfile says 3."""
    from llmctl.cli._common import describe_unexpected
    from llmctl.errors import LlmctlError
    from llmctl.health.report import unknown_line
    from llmctl.health.run import HealthLocked

    text = str(exc) if isinstance(exc, LlmctlError) else describe_unexpected(exc)[0]
    if json_out:
        emit_json("health", {"status": "UNKNOWN", "exit_code": UNKNOWN, "error": text, "services": []})
    else:
        sys.stdout.write(unknown_line(text) + "\n")
        sys.stdout.flush()
    if textfile and not isinstance(exc, HealthLocked):  # the run holding the lock will write it
        from llmctl.health.report import textfile_bytes, write_textfile
        from llmctl.health.run import Status

        try:
            write_textfile(textfile, textfile_bytes(None, status=Status.UNKNOWN, now=time.time()))
        except (OSError, ValueError):
            pass


def _run(
    names: list[str],
    urls: list[str],
    model: str | None,
    api_key: str | None,
    timeout: str | None,
    retries: str | None,
    retry_delay: str | None,
    slow_ms: str | None,
    recovery_timeout: str | None,
    no_restart: bool,
    dry_run: bool,
    json_out: bool,
    textfile: str | None,
    quiet: bool,
    wait: str | None,
    events: _Events,
) -> int:
    from llmctl.errors import UsageError

    flags = [n for n in names if n.startswith("-")]
    if flags:
        raise UsageError(f"no such option: {flags[0]}", hint="see llmctl health --help")
    timeout_s = _number("--timeout", timeout, float, 0, above=True)
    retries_n = _number("--retries", retries, int, 0)
    retry_delay_s = _number("--retry-delay", retry_delay, float, 0)
    slow = _number("--slow-ms", slow_ms, int, 1)
    recovery_s = _number("--recovery-timeout", recovery_timeout, float, 0, above=True)
    lock_wait_s = _number("--wait", wait, float, 0) or 0.0
    if (model or api_key) and not urls:
        raise UsageError("--model and --api-key go with --url (configured services use their own settings)")

    from dataclasses import replace

    from llmctl.cli._common import OPTIONS
    from llmctl.health.plan import load_plan

    # What the config says, validated; cached in the state dir for the runs that follow (plan.py).
    plan = load_plan(OPTIONS.config, system=OPTIONS.system, write=not dry_run)

    from llmctl.health.restart import command_restarter
    from llmctl.health.run import run_health
    from llmctl.health.targets import plan_targets, url_target

    targets = []
    if names or not urls:
        if not names and not plan.services:
            raise UsageError(
                "no services configured and no --url given: nothing to check",
                hint="add services: to the config file, or pass --url http://HOST:PORT",
            )
        targets += plan_targets(plan.services, names)
    for i, u in enumerate(urls):
        targets.append(url_target(u, model=model, api_key=api_key, name="url" if len(urls) == 1 else f"url{i + 1}"))
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise UsageError(f"{t.name!r} named twice")
        seen.add(t.name)

    configured = plan.probe
    settings = replace(
        configured,
        timeout_s=timeout_s if timeout_s is not None else configured.timeout_s,
        retries=retries_n if retries_n is not None else configured.retries,
        retry_delay_s=retry_delay_s if retry_delay_s is not None else configured.retry_delay_s,
        slow_ms=slow if slow is not None else configured.slow_ms,
    )
    policy = replace(plan.policy, restart=False) if no_restart else plan.policy
    recovery_timeout_s = recovery_s if recovery_s is not None else plan.recovery_timeout_s
    restart_command = list(plan.restart_command) if plan.restart_command is not None else None
    restarter = None if no_restart else command_restarter(restart_command, recovery_timeout_s)

    report = run_health(
        targets,
        state_dir=plan.state_dir,
        settings=settings,
        policy=policy,
        restarter=restarter,
        recovery_timeout_s=recovery_timeout_s,
        dry_run=dry_run,
        lock_wait_s=lock_wait_s,
        log=events,
    )

    from llmctl.health.report import nagios_lines, report_doc, textfile_bytes, write_textfile
    from llmctl.health.run import Status

    if textfile:
        try:
            write_textfile(textfile, textfile_bytes(report))
        except OSError as exc:
            events("textfile_failed", "error", path=textfile, error=exc.strerror or str(exc))
            report = _with_note(report, f"cannot write --textfile {textfile}: {exc.strerror or exc}")

    if quiet and report.status is Status.OK and not json_out:
        return report.exit_code
    events.flush()
    if json_out:
        emit_json("health", report_doc(report))
    else:
        sys.stdout.write("".join(line + "\n" for line in nagios_lines(report, settings)))
        sys.stdout.flush()
    return report.exit_code


def _with_note(report: Any, note: str) -> Any:
    from dataclasses import replace

    from llmctl.health.run import Status, worst

    return replace(report, status=worst([report.status, Status.UNKNOWN]), notes=(*report.notes, note))
