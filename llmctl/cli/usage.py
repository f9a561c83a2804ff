"""`llmctl usage`: what `llmctl serve` answered, from the usage ledger (serve's state dir, usage.db)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmctl.cli._common import JsonOpt, emit_json, guard, info, load_config, print_table, resolve_paths

HELP = "Requests, tokens, success rate, latency, cost and savings from the usage ledger of `llmctl serve`."


def _money(v: float) -> str:
    return f"${v:,.4f}"


@guard
def main(
    since: Annotated[str, typer.Option("--since", help="Window: 30m, 12h, 7d, 2w, an ISO date, or 'all'.")] = "7d",
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Group by day (UTC), provider (the route: local, upstream:<name>), model or key.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (one row per group, then the total).")] = False,
) -> None:
    """Aggregate the usage ledger: requests, tokens, success rate, p50/p95 latency, cost, and the
    savings against sending everything at routing.reference_price_*_per_1k."""
    from llmctl.errors import UsageError
    from llmctl.usage.report import parse_since, summarize

    if json_out and as_csv:
        raise UsageError("--json and --csv: choose one")
    loaded = load_config()
    paths = loaded.paths or resolve_paths()
    policy = loaded.config.routing
    report = summarize(
        paths.serve_state_dir,
        since=parse_since(since),
        by=by,
        reference_in_per_1k=policy.reference_price_in_per_1k,
        reference_out_per_1k=policy.reference_price_out_per_1k,
    )
    rows = list(report.rows) + [report.total]
    if report.skipped:
        info(
            f"note: {report.skipped} rows of {report.path} left out: a figure in them is not a number of the right type"
        )
    if json_out:
        emit_json(
            "usage",
            {
                "ledger": str(report.path),
                "since": report.since,
                "by": report.by,
                "skipped_rows": report.skipped,
                "reference_price_in_per_1k": report.reference_price_in_per_1k,
                "reference_price_out_per_1k": report.reference_price_out_per_1k,
                "rows": [r.as_dict() for r in report.rows],
                "total": report.total.as_dict(),
            },
        )
        return
    if as_csv:
        fields = list(report.total.as_dict())
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(r.as_dict())
        return
    if not report.path.exists():
        info(f"no usage recorded yet ({report.path} does not exist)")
    columns = [
        report.by or "",
        "requests",
        "success",
        "prompt tok",
        "completion tok",
        "p50 ms",
        "p95 ms",
        "cost",
        "savings",
    ]
    print_table(
        columns,
        [
            [
                r.group,
                r.requests,
                "-" if r.success_rate is None else f"{r.success_rate:.1%}",
                r.prompt_tokens,
                r.completion_tokens,
                "-" if r.p50_ms is None else f"{r.p50_ms:.0f}",
                "-" if r.p95_ms is None else f"{r.p95_ms:.0f}",
                _money(r.cost),
                _money(r.savings),
            ]
            for r in rows
        ],
    )
