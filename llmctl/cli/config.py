"""`llmctl config`: show the effective config, check a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmctl.cli._common import JsonOpt, QuietOpt, command, emit_json, info, load_config

app = typer.Typer(
    help="Show the effective configuration and where each value came from; validate a config file.",
    no_args_is_help=True,
)


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for k, v in data.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, data)]


@command(app, "show")
def show(json_out: JsonOpt = False) -> None:
    """Print the effective config: every key, its value, and where it came from (file, env, default)."""
    loaded = load_config()
    data = loaded.config.model_dump(mode="json")
    rows = [(key, value, loaded.source_of(key)) for key, value in _flatten(data)]
    if json_out:
        emit_json(
            "config",
            {
                "file": str(loaded.path) if loaded.path else None,
                "config": data,
                "sources": {key: source for key, _value, source in rows},
            },
        )
        return
    from llmctl.cli._common import print_table

    info(f"# config file: {loaded.path or '(none: defaults)'}")
    print_table(["key", "value", "source"], [(k, _fmt(v), s) for k, v, s in rows])


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return str(value)


@command(app, "check")
def check(
    file: Annotated[Path, typer.Argument(help="The YAML file to validate.")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate a config file. Exit 0 when valid, 2 with the key path when not."""
    from llmctl.config import check_file

    cfg = check_file(file)
    if json_out:
        emit_json(
            "config.check",
            {"file": str(file), "ok": True, "models": sorted(cfg.models), "services": sorted(cfg.services)},
        )
        return
    info(f"{file}: OK ({len(cfg.models)} models, {len(cfg.services)} services)", quiet=quiet)
