"""`llmctl monitoring render`: Prometheus scrape config, alert and recording rules, Grafana dashboard.

This module is also the wiring between features: the monitoring renderer gets the unit names from
the unit renderer and the cloud routes from the upstreams' config, so what it alerts on is what
`llmctl systemd` deploys and `llmctl serve` routes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli._common import JsonOpt, OutputDirOpt, OutputDirShortOpt, command, emit_json, info, load_config

app = typer.Typer(
    help="Render the Prometheus scrape config, alert and recording rules and the Grafana dashboard "
    "for the configured services.",
    no_args_is_help=True,
)


def deployment(loaded, config_path: str | None = None):  # -> llmctl.monitoring.render.Deployment
    """What is deployed, as the monitoring names it: units, the health check's units, cloud routes,
    and how a runbook runs llmctl on that host (`config_path`: default the config in use)."""
    from llmctl.monitoring.render import Deployment, runbook_llmctl
    from llmctl.unitname import HEALTH_TIMER, HEALTH_UNIT, unit_name
    from llmctl.units.render import SYSTEM_CONFIG_FILE
    from llmctl.upstreams.config import upstream_route

    cfg = loaded.config
    units = {name: unit_name(name, spec.unit) for name, spec in cfg.services.items()}
    cloud = () if cfg.airgap else tuple(upstream_route(n) for n, u in cfg.upstreams.items() if u.cloud)
    if config_path is None and loaded.path is not None:
        config_path = str(Path(loaded.path).absolute())
    return Deployment(
        units=units,
        health_service=HEALTH_UNIT,
        health_timer=HEALTH_TIMER,
        cloud_routes=cloud,
        llmctl=runbook_llmctl(config_path, str(SYSTEM_CONFIG_FILE)),
    )


@command(app, "render")
def render_cmd(
    output_dir: OutputDirOpt = None,
    config_path: Annotated[
        str | None,
        typer.Option(
            "--config-path",
            help="The config file on the served host, "
            "for the runbooks' llmctl commands (default: the one in use; "
            "not named when it is /etc/llmctl/config.yaml).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    _o: OutputDirShortOpt = None,
) -> None:
    """Render llmctl-scrape.yml, llmctl.rules.yml and llmctl-dashboard.json from the config.

    Scrape configs for every service's /metrics and node_exporter's textfile (health),
    alert and recording rules for Prometheus, and a dashboard for Grafana.

    Example: llmctl monitoring render --output-dir /etc/prometheus/llmctl
    """
    from llmctl.errors import OperationFailed, UsageError
    from llmctl.fsutil import atomic_write_text
    from llmctl.monitoring.render import render

    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir}: not a directory")
    loaded = load_config()
    result = render(loaded.config, deployment(loaded, config_path))
    written = []
    if output_dir is not None:
        for f in result.files:
            path = output_dir / f.name
            try:
                atomic_write_text(path, f.content)
            except OSError as exc:
                raise OperationFailed(
                    f"cannot write {path}: {exc.strerror or exc}",
                    hint="choose a directory you can write with --output-dir",
                ) from None
            written.append(str(path))
    if json_out:
        emit_json(
            "monitoring.render",
            {
                "files": [
                    {
                        "name": f.name,
                        "kind": f.kind,
                        **({"path": str(output_dir / f.name)} if output_dir else {"content": f.content}),
                    }
                    for f in result.files
                ],
                "alerts": list(result.alerts),
                "records": list(result.records),
                "notes": list(result.notes),
            },
        )
        return
    for note in result.notes:
        info(f"Note: {note}")
    if output_dir is not None:
        sys.stdout.write("".join(p + "\n" for p in written))
        return
    for i, f in enumerate(result.files):
        sys.stdout.write(("\n" if i else "") + f"==> {f.name} <==\n" + f.content)
