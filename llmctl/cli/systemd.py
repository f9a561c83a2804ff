"""`llmctl systemd`: render, install, uninstall and verify the hardened units."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli._common import (
    OPTIONS,
    JsonOpt,
    OutputDirOpt,
    OutputDirShortOpt,
    command,
    complete_services,
    emit_json,
    info,
    print_table,
)

app = typer.Typer(
    help="Render, install, verify and uninstall hardened systemd units for the services and the health timer.",
    no_args_is_help=True,
)

LlmctlOpt = Annotated[
    str | None,
    typer.Option(
        "--llmctl", help="llmctl executable written into ExecStart (default: this installation's).", show_default=False
    ),
]
ConfigPathOpt = Annotated[
    str | None,
    typer.Option(
        "--config-path",
        help="Config file written into ExecStart (default: the one in use, absolute).",
        show_default=False,
    ),
]
UserOpt = Annotated[bool, typer.Option("--user", help="User units (systemctl --user) instead of system units.")]


def _user_mode(user: bool) -> bool:
    return user or OPTIONS.system is False


def _render(services: list[str] | None, llmctl: str | None, config_path: str | None, user: bool):
    import os

    from llmctl.units.render import SYSTEM_CONFIG_FILE, RenderOptions, default_llmctl, render

    loaded = _load()
    user = _user_mode(user)
    if config_path is None:
        if loaded.path is not None:
            config_path = str(Path(loaded.path).absolute())
        elif user:
            config_path = str(loaded.paths.config_file)
        else:
            config_path = str(SYSTEM_CONFIG_FILE)
    options = RenderOptions(
        llmctl=os.path.abspath(llmctl) if llmctl else default_llmctl(),
        config_path=config_path,
        user=user,
        paths=loaded.paths,
    )
    result = render(loaded.config, options, services or None)
    for warning in result.warnings:
        info(f"Warning: {warning}")
    return result


def _load():
    from llmctl.cli._common import load_config

    return load_config()


@command(app, "render")
def render_cmd(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="Services to render (default: all).", show_default=False, autocompletion=complete_services),
    ] = None,
    output_dir: OutputDirOpt = None,
    llmctl: LlmctlOpt = None,
    config_path: ConfigPathOpt = None,
    user: UserOpt = False,
    json_out: JsonOpt = False,
    _o: OutputDirShortOpt = None,
) -> None:
    """Render the units (server per service, health service and timer, polkit rule, sysusers.d).

    Example: llmctl systemd render chat --output-dir /tmp/units
    """
    from llmctl.fsutil import atomic_write_text

    result = _render(services, llmctl, config_path, user)
    written = []
    if output_dir is not None:
        for f in result.files:
            path = output_dir / f.name
            atomic_write_text(path, f.content)
            written.append(str(path))
    if json_out:
        emit_json(
            "systemd.render",
            {
                "files": [
                    {
                        "name": f.name,
                        "kind": f.kind,
                        "install_path": f.relpath,
                        "service": f.service,
                        **({"path": str(output_dir / f.name)} if output_dir else {"content": f.content}),
                    }
                    for f in result.files
                ],
                "warnings": list(result.warnings),
            },
        )
        return
    if output_dir is not None:
        sys.stdout.write("".join(p + "\n" for p in written))
        return
    for i, f in enumerate(result.files):
        sys.stdout.write(("\n" if i else "") + f"==> {f.name} <==\n" + f.content)


def _runner(no_systemctl: bool):
    from llmctl.units.install import run_command

    return None if no_systemctl else run_command


@command(app, "install")
def install_cmd(
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="Install under this directory (image builds): no daemon-reload, systemctl only as `--root=`.",
            show_default=False,
        ),
    ] = None,
    user: UserOpt = False,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the servers and the health timer.")] = False,
    now: Annotated[bool, typer.Option("--now", help="With --enable: start them too.")] = False,
    llmctl: LlmctlOpt = None,
    config_path: ConfigPathOpt = None,
    systemctl: Annotated[str, typer.Option("--systemctl", help="The systemctl to run.")] = "systemctl",
    no_systemctl: Annotated[
        bool, typer.Option("--no-systemctl", help="Write the files only; print the commands that would run.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Write, remove and run nothing; list the files that would be written or removed and the commands.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write every unit atomically, create the health user (sysusers.d), daemon-reload, enable.

    Example: sudo llmctl systemd install --enable --now
    """
    from llmctl.units.install import install

    result = _render(None, llmctl, config_path, user)
    outcome = install(
        result,
        root=root.absolute() if root else None,
        user=_user_mode(user),
        enable=enable,
        now=now,
        run=_runner(no_systemctl),
        systemctl=systemctl,
        dry_run=dry_run,
    )
    _report("systemd.install", outcome, no_systemctl or dry_run, json_out, dry_run)


@command(app, "uninstall")
def uninstall_cmd(
    root: Annotated[
        Path | None, typer.Option("--root", help="Uninstall from under this directory.", show_default=False)
    ] = None,
    user: UserOpt = False,
    systemctl: Annotated[str, typer.Option("--systemctl", help="The systemctl to run.")] = "systemctl",
    no_systemctl: Annotated[
        bool, typer.Option("--no-systemctl", help="Remove the files only; print the commands that would run.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Disable and stop llmctl's units, then remove every file llmctl installed.

    Example: sudo llmctl systemd uninstall
    """
    from llmctl.units.install import uninstall

    outcome = uninstall(
        root=root.absolute() if root else None, user=_user_mode(user), run=_runner(no_systemctl), systemctl=systemctl
    )
    _report("systemd.uninstall", outcome, no_systemctl, json_out)


def _report(kind: str, outcome, dry: bool, json_out: bool, dry_run: bool = False) -> None:
    if json_out:
        emit_json(
            kind,
            {
                "written": list(outcome.written),
                "unchanged": list(outcome.unchanged),
                "removed": list(outcome.removed),
                "commands": [list(c) for c in outcome.commands],
                "commands_run": not dry,
                "dry_run": dry_run,
            },
        )
        return
    would = "would be " if dry_run else ""
    rows = (
        [(f"{would}written", p) for p in outcome.written]
        + [("unchanged", p) for p in outcome.unchanged]
        + [(f"{would}removed", p) for p in outcome.removed]
    )
    if rows:
        print_table(["ACTION", "PATH"], rows)
    else:
        info("Nothing to do.")
    for argv in outcome.commands:
        info(("Would run: " if dry else "Ran: ") + " ".join(argv))


@command(app, "verify")
def verify_cmd(
    unit_files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Unit files (default: render the config into a temp dir and check those).", show_default=False
        ),
    ] = None,
    max_exposure: Annotated[
        float,
        typer.Option(
            "--max-exposure", help="Fail (exit 1) when a service's exposure score is above this.", min=0.0, max=10.0
        ),
    ] = 1.5,
    llmctl: LlmctlOpt = None,
    user: UserOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """systemd-analyze verify (no warnings allowed) and security --offline=true (exposure score).

    Example: llmctl systemd verify --max-exposure 1.0
    """
    from llmctl.units.verify import verify_units

    if unit_files:
        result = verify_units(unit_files, max_exposure)
    else:
        rendered = _render(None, llmctl, None, user)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="llmctl-units.") as tmp:
            paths = []
            for f in rendered.files:
                p = Path(tmp) / f.name
                p.write_text(f.content, encoding="utf-8")
                paths.append(p)
            result = verify_units(paths, max_exposure)
    if json_out:
        emit_json(
            "systemd.verify",
            {
                "ok": result.ok,
                "max_exposure": result.max_exposure,
                "units": [
                    {
                        "unit": u.unit,
                        "path": u.path,
                        "exposure": u.exposure,
                        "rating": u.rating,
                        "warnings": list(u.warnings),
                        "ok": u.passes(result.max_exposure),
                    }
                    for u in result.units
                ],
            },
        )
    else:
        print_table(
            ["UNIT", "EXPOSURE", "RATING", "VERIFY", "RESULT"],
            [
                (
                    u.unit,
                    "-" if u.exposure is None else f"{u.exposure:.1f}",
                    u.rating or "-",
                    "ok" if not u.warnings else f"{len(u.warnings)} warning(s)",
                    "ok" if u.passes(result.max_exposure) else "FAIL",
                )
                for u in result.units
            ],
        )
        for u in result.units:
            for line in u.warnings:
                info(f"{u.unit}: {line}")
    if not result.ok:
        over = [u.unit for u in result.units if u.exposure is not None and u.exposure > result.max_exposure]
        if over:
            info(f"Error: exposure above {result.max_exposure:.1f}: {', '.join(over)}")
        if any(u.warnings for u in result.units):
            info("Error: systemd-analyze verify reported warnings")
        raise typer.Exit(1)
