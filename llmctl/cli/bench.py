"""`llmctl bench`: llama-bench-style engine figures, or an OpenAI-compatible endpoint under load."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmctl.cli._common import (
    ApiKeyOpt,
    JsonOpt,
    QuietOpt,
    guard,
    info,
    load_config,
    output_format_option,
    print_table,
    resolve_paths,
)
from llmctl.errors import OperationFailed, UsageError

HELP = (
    "Benchmark prompt processing and generation tokens/s of a model (llama-bench style) "
    "or of a running endpoint (--url), with CI gates; `llmctl bench compare FILE...` puts runs side by side."
)

_FORMATS = ("table", "json", "jsonl", "csv", "sql", "md", "json-full")
_COMPARE_FORMATS = ("table", "md", "csv", "json")
_ENGINE_ONLY = ("-p", "-pg", "-d", "-r", "-t", "-ngl", "-b", "-ub", "--ctx", "-fa", "--repack")
_ENDPOINT_ONLY = ("--concurrency", "--requests", "--api", "--prompt", "--timeout")


@guard
def main(
    target: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[MODEL | compare FILE...]",
            help="Store name, GGUF path or `smoke` (default: bench.model in the config). With --url: the model "
            "name sent to the server (default: its first /v1/models entry). `compare FILE FILE...`: put "
            "result files side by side instead (the first is the baseline).",
            show_default=False,
        ),
    ] = None,
    n_prompt: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--n-prompt",
            show_default=False,
            help="Prompt tokens of the pp test(s), comma list or range; 0 skips. Default: bench.n_prompt (512).",
        ),
    ] = None,
    n_gen: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--n-gen",
            show_default=False,
            help="Generated tokens of the tg test(s), comma list; 0 skips. With --url: max_tokens. Default: "
            "bench.n_gen (128).",
        ),
    ] = None,
    n_pg: Annotated[
        list[str] | None,
        typer.Option(
            "-pg",
            metavar="PP,TG",
            show_default=False,
            help="A prompt of PP tokens then TG generated, timed together (test ppPP+tgTG); repeat the flag for "
            "more. Default: bench.pg (none).",
        ),
    ] = None,
    n_depth: Annotated[
        str | None,
        typer.Option(
            "-d",
            "--n-depth",
            show_default=False,
            help="Run every test after this many tokens already in the context (test `pp512 @ d4096`), comma "
            "list. Default: bench.n_depth (0).",
        ),
    ] = None,
    repetitions: Annotated[
        int | None,
        typer.Option(
            "-r",
            "--repetitions",
            show_default=False,
            help="Timed repetitions per test, after a warm-up run. Default: bench.repetitions (5).",
        ),
    ] = None,
    threads: Annotated[
        str | None,
        typer.Option("-t", "--threads", show_default=False, help="CPU threads, comma list (default: physical cores)."),
    ] = None,
    n_gpu_layers: Annotated[
        str | None,
        typer.Option(
            "-ngl",
            "--n-gpu-layers",
            show_default=False,
            help="Layers offloaded to the GPU, comma list; -1 = all. Default: bench.n_gpu_layers (0).",
        ),
    ] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            "-b",
            "--batch-size",
            show_default=False,
            help="Logical batch size (n_batch), comma list. Default: bench.batch_size (2048).",
        ),
    ] = None,
    ubatch_size: Annotated[
        str | None,
        typer.Option(
            "-ub",
            "--ubatch-size",
            show_default=False,
            help="Physical batch size (n_ubatch), comma list. Default: bench.ubatch_size (512).",
        ),
    ] = None,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx",
            show_default=False,
            help="Context size (default: n_prompt + n_gen + n_depth of each test, as llama-bench).",
        ),
    ] = None,
    flash_attn: Annotated[
        str | None,
        typer.Option(
            "-fa",
            "--flash-attn",
            show_default=False,
            help="Flash attention: on, off, auto, or a list (on,off). Default: bench.flash_attn (off).",
        ),
    ] = None,
    repack: Annotated[
        bool | None,
        typer.Option(
            "--repack/--no-repack",
            show_default=False,
            help="llama.cpp's repacked/AMX weight buffers (default: on, except on AMX CPUs where ggml's AMX kernel"
            " crashes).",
        ),
    ] = None,
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="Skip the warm-up run.")] = False,
    output: Annotated[
        str,
        output_format_option(
            "table, json, jsonl, csv, sql or md: exactly llama-bench's; json-full: llmctl's document (rows, "
            "host record, gates), which --json also prints. compare: table, md, csv or json (--json: json)."
        ),
    ] = "table",
    json_out: JsonOpt = False,
    min_pp: Annotated[
        float | None,
        typer.Option("--min-pp", metavar="T/S", show_default=False, help="Gate: every pp result must reach this t/s."),
    ] = None,
    min_tg: Annotated[
        float | None,
        typer.Option(
            "--min-tg",
            metavar="T/S",
            show_default=False,
            help="Gate: every tg result (with --url: output t/s per level) must reach this.",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            metavar="FILE",
            show_default=False,
            help="Gate: compare with an earlier result, llmctl's or llama-bench's (json, jsonl, csv, sql, SQLite). "
            "compare: the baseline run.",
        ),
    ] = None,
    max_regression: Annotated[
        float | None,
        typer.Option(
            "--max-regression",
            metavar="PCT",
            show_default=False,
            help="With --baseline or compare: the largest drop in t/s allowed, in percent (default 10).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="compare: match rows on every setting (threads, batch sizes, model, ...), not only "
            "on what the runs sweep.",
        ),
    ] = False,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="test|run",
            show_default=False,
            help="compare: one row per test (default for two runs) or one row per run (a fleet, one file per "
            "host: the default for more).",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            show_default=False,
            help="Benchmark a running OpenAI-compatible endpoint instead (http://HOST:PORT).",
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option("--concurrency", show_default=False, help="With --url: parallel streams, comma list (default 1)."),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            "--requests",
            show_default=False,
            help="With --url: requests per concurrency level (default: max(4, 2 x concurrency)).",
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            show_default=False,
            help="With --url: chat (/v1/chat/completions, the default) or completions (/v1/completions).",
        ),
    ] = None,
    api_key: ApiKeyOpt = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            show_default=False,
            help="With --url: the prompt every request sends (default: a fixed story prompt).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", show_default=False, help="With --url: seconds per request (default 300)."),
    ] = None,
    quiet: QuietOpt = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show llama.cpp's own log lines.")] = False,
) -> None:
    """Measure like llama.cpp's llama-bench (pp = prompt processing, tg = generation) or a live endpoint;
    or compare result files (`llmctl bench compare A.json B.json`).

    Comma lists sweep a parameter (-t 1,2 -p 128,512). Gates exit 1 and name the figure that missed.
    """
    args = list(target or [])
    run_flags = {
        "-p": n_prompt,
        "-n": n_gen,
        "-pg": n_pg or None,
        "-d": n_depth,
        "-r": repetitions,
        "-t": threads,
        "-ngl": n_gpu_layers,
        "-b": batch_size,
        "-ub": ubatch_size,
        "--ctx": ctx,
        "-fa": flash_attn,
        "--repack": repack,
        "--no-warmup": no_warmup or None,
        "--url": url,
        "--concurrency": concurrency,
        "--requests": requests,
        "--api": api,
        "--prompt": prompt,
        "--timeout": timeout,
        "-v": verbose or None,
    }
    if args and args[0] == "compare":
        used = [flag for flag, value in run_flags.items() if value is not None]
        if used:
            raise UsageError(
                f"{', '.join(used)}: compare reads result files; it runs no benchmark",
                hint="llmctl bench compare BASELINE.json RESULT.json [--max-regression PCT] [-o md]",
            )
        _compare(args[1:], output, json_out, min_pp, min_tg, baseline, max_regression, strict, by, quiet)
        return
    if strict or by is not None:
        raise UsageError(f"{'--strict' if strict else '--by'}: only with `llmctl bench compare`")
    if len(args) > 1:
        raise UsageError(
            f"expected one MODEL, got {len(args)}: {' '.join(args)}",
            hint="to compare result files: llmctl bench compare A.json B.json",
        )
    model = args[0] if args else None

    from llmctl.bench import gates as G
    from llmctl.bench.report import host_lines, render

    fmt = "json-full" if json_out else output.lower()
    if fmt not in _FORMATS:
        raise UsageError(f"-o/--output: expected one of {', '.join(_FORMATS)}, got {output!r}")
    if fmt == "sql" and url is not None:
        raise UsageError(
            "-o sql: only the engine benchmark writes llama-bench's table; with --url use json, "
            "jsonl, csv, md or json-full"
        )
    if max_regression is not None and baseline is None:
        raise UsageError("--max-regression needs --baseline FILE")
    if max_regression is not None and max_regression < 0:
        raise UsageError("--max-regression: must be a percentage >= 0")
    baseline_rows = G.load_baseline(baseline) if baseline is not None else None
    loaded = load_config()
    cfg = loaded.config.bench
    progress = None if quiet else info

    if url is not None:
        report = _run_endpoint(
            url,
            model,
            cfg,
            n_gen,
            concurrency or "1",
            requests,
            api or "chat",
            api_key,
            prompt,
            300.0 if timeout is None else timeout,
            no_warmup,
            min_pp,
            progress,
            engine_flags={k: run_flags[k] for k in _ENGINE_ONLY},
        )
    else:
        used = [flag for flag in _ENDPOINT_ONLY if run_flags[flag] is not None]
        if used:
            raise UsageError(f"{', '.join(used)}: only with --url (the endpoint benchmark)")
        report = _run_engine(
            model or cfg.model,
            loaded,
            cfg,
            n_prompt,
            n_gen,
            n_pg,
            n_depth,
            repetitions,
            threads,
            n_gpu_layers,
            batch_size,
            ubatch_size,
            ctx,
            flash_attn,
            repack,
            no_warmup,
            verbose,
            progress,
        )

    results = list(report.results)
    outcomes = G.check_minimums(results, min_pp, min_tg)
    unmatched: list[str] = []
    if baseline_rows is not None:
        more, unmatched = G.check_regression(
            results, baseline_rows, 10.0 if max_regression is None else max_regression, str(baseline)
        )
        outcomes += more
    gate_dicts = [o.to_dict() for o in outcomes]

    if fmt == "table":
        if report.mode == "engine":
            from llmctl.bench.report import engine_table

            cols, rows = engine_table(results)
        else:
            from llmctl.bench.report import endpoint_table

            cols, rows = endpoint_table(results)
        print_table(cols, rows)
        sys.stdout.flush()
        if report.mode == "engine" and results:
            info(
                f"build: {results[0].build_commit} ({results[0].build_number}), "
                f"repack {'on' if results[0].repack else 'off'}",
                quiet=quiet,
            )
        for line in host_lines(report):
            info(line, quiet=quiet)
    else:
        from llmctl.text import printable_lines

        sys.stdout.write(printable_lines(render(report, fmt, gate_dicts)))
        sys.stdout.flush()

    for label in unmatched:
        info(f"note: no baseline row for {label}", quiet=quiet)
    _report_gates(outcomes, quiet)
    if report.mode == "endpoint":
        bad = [r for r in results if r.n_failed]
        if bad:
            r = bad[0]
            raise OperationFailed(
                f"{r.n_failed} of {r.n_requests} requests failed at concurrency {r.concurrency}: "
                f"{r.errors[0] if r.errors else 'unknown error'}"
            )


def _report_gates(outcomes: list[Any], quiet: bool) -> None:
    """The gates' lines on stderr; exit 1 (OperationFailed) naming the one that failed, or how many."""
    failed = [o for o in outcomes if not o.passed]
    for o in outcomes:
        if o.passed:
            info(f"gate ok: {o.detail}", quiet=quiet)
        elif len(failed) > 1:
            info(f"gate FAILED: {o.detail}")
    if len(failed) == 1:
        raise OperationFailed(f"benchmark gate not met: {failed[0].detail}")
    if failed:
        raise OperationFailed(f"{len(failed)} benchmark gates not met (listed above)")


def _compare(
    files: list[str],
    output: str,
    json_out: bool,
    min_pp,
    min_tg,
    baseline: Path | None,
    max_regression: float | None,
    strict: bool,
    by: str | None,
    quiet: bool,
) -> None:
    from llmctl.bench import compare as C
    from llmctl.bench.readers import load_runs
    from llmctl.bench.report import compare_by_run, compare_by_test, difference_lines, render_compare

    fmt = "json" if json_out else output.lower()
    if fmt not in _COMPARE_FORMATS:
        raise UsageError(f"-o/--output: compare writes {', '.join(_COMPARE_FORMATS)}, got {output!r}")
    if by is not None and by not in ("test", "run"):
        raise UsageError(f"--by: expected test or run, got {by!r}")
    if max_regression is not None and max_regression < 0:
        raise UsageError("--max-regression: must be a percentage >= 0")
    paths = ([baseline] if baseline is not None else []) + [Path(f) for f in files]
    if not paths:
        raise UsageError("compare: no result files given", hint="llmctl bench compare BASELINE.json RESULT.json")
    runs = load_runs(paths)
    comparison = C.compare(runs, strict=strict)
    layout = by or ("test" if len(runs) == 2 else "run")
    outcomes = C.check(
        comparison, max_regression=10.0 if max_regression is None else max_regression, min_pp=min_pp, min_tg=min_tg
    )
    if fmt == "table":
        head, rows, _ = compare_by_test(comparison) if layout == "test" else compare_by_run(comparison)
        print_table(head, rows)
        sys.stdout.flush()
    else:
        sys.stdout.write(render_compare(comparison, fmt, layout, [o.to_dict() for o in outcomes]))
        sys.stdout.flush()
    for line in difference_lines(comparison):
        info(f"note: {line}", quiet=quiet)
    _report_gates(outcomes, quiet)


def _engine_params(
    cfg: Any,
    n_prompt,
    n_gen,
    n_pg,
    n_depth,
    repetitions,
    threads,
    n_gpu_layers,
    batch_size,
    ubatch_size,
    ctx,
    flash_attn,
    repack,
    no_warmup,
):
    from llmctl.bench.host import default_threads
    from llmctl.bench.params import EngineParams, parse_flash_attn_list, parse_int_list, parse_pairs

    if ctx is not None and ctx < 1:
        raise UsageError("--ctx: must be at least 1")

    def ints(value, default, flag, minimum=0):
        return tuple(parse_int_list(value if value is not None else default, flag, minimum=minimum))

    return EngineParams(
        n_prompt=ints(n_prompt, cfg.n_prompt, "-p/--n-prompt"),
        n_gen=ints(n_gen, cfg.n_gen, "-n/--n-gen"),
        n_pg=tuple(parse_pairs(n_pg if n_pg else cfg.pg, "-pg")),
        n_depth=ints(n_depth, cfg.n_depth, "-d/--n-depth"),
        repetitions=repetitions if repetitions is not None else cfg.repetitions,
        threads=ints(threads, cfg.threads or [default_threads()], "-t/--threads", 1),
        n_gpu_layers=ints(n_gpu_layers, cfg.n_gpu_layers, "-ngl/--n-gpu-layers", -1),
        batch_size=ints(batch_size, cfg.batch_size, "-b/--batch-size", 1),
        ubatch_size=ints(ubatch_size, cfg.ubatch_size, "-ub/--ubatch-size", 1),
        flash_attn=tuple(
            parse_flash_attn_list(flash_attn if flash_attn is not None else cfg.flash_attn, "-fa/--flash-attn")
        ),
        n_ctx=ctx if ctx is not None else cfg.n_ctx,
        warmup=not no_warmup,
        repack=repack if repack is not None else cfg.repack,
    )


def _run_engine(
    ref: str,
    loaded: Any,
    cfg: Any,
    n_prompt,
    n_gen,
    n_pg,
    n_depth,
    repetitions,
    threads,
    n_gpu_layers,
    batch_size,
    ubatch_size,
    ctx,
    flash_attn,
    repack,
    no_warmup,
    verbose,
    progress,
):
    from llmctl.bench.engine import build_info, run_engine
    from llmctl.bench.host import host_info
    from llmctl.bench.params import expand
    from llmctl.bench.results import BenchReport
    from llmctl.models.resolve import resolve_model
    from llmctl.models.store import Store

    params = _engine_params(
        cfg,
        n_prompt,
        n_gen,
        n_pg,
        n_depth,
        repetitions,
        threads,
        n_gpu_layers,
        batch_size,
        ubatch_size,
        ctx,
        flash_attn,
        repack,
        no_warmup,
    )
    expand(params)  # usage errors (a --ctx too small) before a model is loaded
    resolved = resolve_model(ref, Store(loaded.paths or resolve_paths()), loaded.config, allow_path=True)
    build = build_info()
    results = run_engine(resolved.path, params, progress=progress, verbose=verbose, build=build)
    return BenchReport(
        "engine",
        host_info(build.system_info, build.ggml_commit),
        tuple(results),
        model=ref,
        model_path=str(resolved.path),
    )


def _run_endpoint(
    url,
    model,
    cfg,
    n_gen,
    concurrency,
    requests,
    api,
    api_key,
    prompt,
    timeout,
    no_warmup,
    min_pp,
    progress,
    engine_flags,
):
    from llmctl.bench.endpoint import DEFAULT_PROMPT, EndpointParams, run_endpoint
    from llmctl.bench.host import host_info
    from llmctl.bench.params import parse_int_list
    from llmctl.bench.results import BenchReport

    used = [flag for flag, value in engine_flags.items() if value is not None]
    if min_pp is not None:
        used.append("--min-pp")
    if used:
        raise UsageError(
            f"{', '.join(used)}: engine options have no meaning with --url",
            hint="the endpoint benchmark takes -n, --concurrency, --requests, --prompt, --min-tg",
        )
    gens = parse_int_list(n_gen if n_gen is not None else cfg.n_gen, "-n/--n-gen", minimum=1)
    if len(gens) != 1:
        raise UsageError("-n: give one value with --url (the max_tokens of every request)")
    params = EndpointParams(
        url=url,
        model=model,
        concurrency=tuple(parse_int_list(concurrency, "--concurrency", minimum=1)),
        requests=requests,
        n_gen=gens[0],
        prompt=prompt or DEFAULT_PROMPT,
        api=api,
        api_key=api_key or None,
        timeout_s=timeout,
        warmup=not no_warmup,
    )
    results = run_endpoint(params, progress=progress)
    return BenchReport("endpoint", host_info(), tuple(results), model=results[0].model if results else model)
