"""`llmctl serve`: a thin command over llmctl.serve (settings -> server)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from llmctl.cli._common import guard, load_config, resolve_paths

HELP = "Serve a verified model on an OpenAI-compatible HTTP endpoint with API keys, rate limits, bounded queues and metrics."


@guard
def main(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A service from the config (its settings apply; flags override), or a model: "
            "`smoke`, a store name, or a path.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Serve this model instead of the service's (name or path); repeat it "
            "to serve several on one port, loaded on demand (the first is the default).",
            show_default=False,
        ),
    ] = None,
    max_loaded: Annotated[
        int | None,
        typer.Option(
            "--max-loaded",
            help="With several models: how many may be loaded at once (the least "
            "recently used idle one is unloaded to make room; default: the service's max_loaded, "
            "else no cap).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Bind address (default 127.0.0.1, or the service's).", show_default=False),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="TCP port (default 8000, or the service's).", show_default=False)
    ] = None,
    api_keys_file: Annotated[
        str | None,
        typer.Option(
            "--api-keys-file",
            help="File with one API key per line (the systemd credential "
            "'api-keys' takes precedence). Without keys the server is open.",
            show_default=False,
        ),
    ] = None,
    allow_unverified: Annotated[
        bool,
        typer.Option("--allow-unverified", help="Allow a GGUF path outside the verified model store."),
    ] = False,
    n_ctx: Annotated[
        int | None,
        typer.Option("--n-ctx", help="Context size in tokens (default 4096, or the service's).", show_default=False),
    ] = None,
    n_gpu_layers: Annotated[
        int | None,
        typer.Option(
            "--n-gpu-layers",
            help="Layers to offload to the GPU; -1 = all (default 0, or the service's).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            "-t",
            help="CPU threads (default: llama.cpp's choice, or the service's n_threads).",
            show_default=False,
        ),
    ] = None,
    chat_format: Annotated[
        str | None,
        typer.Option(
            "--chat-format",
            help="llama-cpp-python chat format (overrides the service's and the model's).",
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            help="Slots: requests decoded together, each with its own n_ctx of KV cache (default 4, or the service's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a verified model on an OpenAI-compatible HTTP endpoint.

    Endpoints: /v1/chat/completions, /v1/completions (SSE streaming or not), /v1/models,
    /v1/embeddings (when enabled), /health, /ready, /metrics, /status (what `llmctl ps` shows),
    POST /models/load and /models/unload. Logs are JSON lines on stderr.
    SIGTERM drains in-flight requests for shutdown_timeout_s, then exits 0.
    """
    from llmctl.serve.settings import resolve_settings

    loaded = load_config()
    paths = loaded.paths or resolve_paths()
    settings = resolve_settings(
        loaded,
        paths,
        target,
        model=model,
        host=host,
        port=port,
        api_keys_file=api_keys_file,
        allow_unverified=allow_unverified,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        chat_format=chat_format,
        parallel=parallel,
        max_loaded=max_loaded,
    )
    try:
        import llama_cpp  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        from llmctl.errors import UsageError

        raise UsageError(
            f"llmctl serve needs the [serve] extra ({exc.name} is missing)", hint="pip install 'llmctl[serve]'"
        ) from None
    warnings = []
    for served in settings.served:
        if not served.verified:
            warnings.append(f"serving {served.path}, a file outside the verified store (--allow-unverified)")
    if not settings.auth_enabled and not settings.loopback:
        warnings.append(
            f"no API keys and bound to {settings.host}: anyone who can reach this port can use "
            "the model (set --api-keys-file)"
        )
    from llmctl.serve.server import run
    from llmctl.upstreams.wiring import build_router

    router, ledger, notes = build_router(loaded.config, paths, settings)
    warnings.extend(notes)
    try:
        result = run(settings, warnings=tuple(warnings), router=router)
    finally:
        if ledger is not None:
            ledger.close()
    sys.stderr.flush()
    if not result.worker_stopped:
        # The model worker is still inside llama.cpp; do not let interpreter teardown race it.
        sys.stdout.flush()
        os._exit(0)
