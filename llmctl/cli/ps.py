"""`llmctl ps`: what the servers run (a thin command over llmctl.serve.ps).

Targets: the configured services (all, or those named), with the API key health would send (the
`api-keys-<service>` credential of the health unit, else the service's api_keys_file), or --url.
Exit codes: 0 every server answered, 1 one did not (its row says why), 2 bad usage or config.
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import ApiKeyOpt, JsonOpt, ServicesArg, emit_json, guard, human_bytes, print_table

HELP = (
    "Show what each server runs: per model its status, memory, context and slots, busy slots, the last "
    "minute's requests and tokens/s, idle time."
)


def _seconds(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    s = int(value)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@guard
def main(
    services: ServicesArg = None,
    url: Annotated[
        list[str] | None,
        typer.Option("--url", metavar="URL", help="Ask this server instead (repeatable).", show_default=False),
    ] = None,
    api_key: ApiKeyOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="Per server.", min=0.1)] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Show what each server runs (from its /status endpoint). Configured services are asked with the
    health check's key for them; --url with --api-key."""
    from llmctl.errors import UsageError
    from llmctl.serve.ps import PsTarget, collect

    if url:
        from llmctl.health.targets import url_target

        if services:
            raise UsageError("name services or give --url, not both")
        found = [url_target(u, api_key=api_key) for u in dict.fromkeys(url)]
    else:
        from llmctl.cli._common import load_config
        from llmctl.health.targets import config_targets

        found = config_targets(load_config().config, services or [])
        if not found:
            raise UsageError(
                "no services are configured",
                hint="configure services: in the config file, or pass --url http://HOST:PORT",
            )
    targets = [PsTarget(t.name, t.base_url, t.api_key, t.setup_error) for t in found]
    results = collect(targets, timeout_s=timeout)
    if json_out:
        emit_json("ps", {"servers": [r.to_json() for r in results]})
    else:
        rows: list[tuple] = []
        for r in results:
            if not r.ok:
                rows.append((r.name, "-", "error", "-", "-", "-", "-", "-", "-", "-", "-"))
                continue
            for m in r.models:
                rows.append(
                    (
                        r.name,
                        m.get("id"),
                        m.get("status"),
                        human_bytes(m.get("rss_bytes")),
                        human_bytes(m.get("vram_bytes")),
                        m.get("n_ctx", "-"),
                        m.get("slots", "-"),
                        m.get("busy", "-"),
                        m.get("requests_1m", "-"),
                        m.get("tokens_per_s_1m", "-"),
                        _seconds(m.get("idle_s")),
                    )
                )
        print_table(
            ("SERVER", "MODEL", "STATUS", "RSS", "VRAM", "CTX", "SLOTS", "BUSY", "REQ/1M", "TOK/S", "IDLE"), rows
        )
        from llmctl.cli._common import render_error

        for r in results:
            if not r.ok:
                render_error(f"{r.name} ({r.url}): {r.error}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
