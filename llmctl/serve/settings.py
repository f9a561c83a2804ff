"""What `llmctl serve` runs: flags + config -> one frozen ServeSettings.

Resolution order per value: flag > services.<name> (config, with LLMCTL_* overrides) > default.
The model is resolved through the store and verified (quick: size + mtime against the stamp of
the last full hash) before anything is loaded. A path outside the store needs an explicit allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.keys import ApiKey, load_api_keys
from llmctl.netutil import is_loopback

if TYPE_CHECKING:
    from llmctl.config import LoadedConfig
    from llmctl.models.store import Progress
    from llmctl.paths import Paths
    from llmctl.schema import Limits


@dataclass(frozen=True)
class ServedModel:
    """One model of the server: the name clients ask for, and its verified file."""

    name: str
    path: Path
    verified: bool
    chat_format: str | None


@dataclass(frozen=True)
class PoolSettings:
    """What may be loaded at once (llmctl.serve.pool). The defaults are one model served as before:
    loaded at start, never unloaded."""

    max_loaded: int | None = None  # None: no cap by count
    memory_budget: int | None = None  # bytes of estimated weights + KV; None: no cap by memory
    pinned: tuple[str, ...] = ()
    keep_alive_s: float | None = None  # unload after this long idle; None: only to make room
    preload: tuple[str, ...] | None = None  # None: the default (first) model


@dataclass(frozen=True)
class ServeSettings:
    service: str | None  # the config service, or None for a bare model ref
    model_name: str  # the id /v1/models lists
    model_path: Path
    verified: bool  # False only for an explicitly allowed path outside the store
    host: str
    port: int
    n_ctx: int
    n_batch: int
    n_threads: int | None
    n_gpu_layers: int
    flash_attn: bool
    chat_format: str | None
    embeddings: bool
    api_keys: tuple[ApiKey, ...] = field(repr=False)
    api_keys_source: str | None  # where the keys came from (a path), for the start-up line
    public_health: bool
    public_metrics: bool
    shutdown_timeout_s: float
    limits: Limits
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For uvicorn believes; () = nobody's
    tool_format: str | None = None  # llmctl.serve.tools.FORMATS; None: detected from the GGUF's chat template
    parallel: int = 4  # slots: requests decoded together, each with its own n_ctx
    swa_full: bool = True  # sliding-window layers keep every position (prefix reuse) or the window only
    prompt_cache_mib: int = 1024  # host memory for the prompt KV of evicted slots (0: off)
    # Several models: every one (the first is model_name's), and how many may be loaded at once.
    # () is the one model above. Each model's engine gets for_model(m): these settings, its file.
    models: tuple[ServedModel, ...] = ()
    pool: PoolSettings = PoolSettings()

    @property
    def served(self) -> tuple[ServedModel, ...]:
        return self.models or (ServedModel(self.model_name, self.model_path, self.verified, self.chat_format),)

    @property
    def preload(self) -> tuple[str, ...]:
        names = self.pool.preload if self.pool.preload is not None else (self.served[0].name,)
        return tuple(dict.fromkeys([*self.pool.pinned, *names]))

    def for_model(self, model: ServedModel) -> ServeSettings:
        """The settings one model's engine runs with (its name, file and chat format)."""
        return replace(
            self,
            model_name=model.name,
            model_path=model.path,
            verified=model.verified,
            chat_format=model.chat_format,
            models=(),
        )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def resolve_settings(
    loaded: LoadedConfig,
    paths: Paths,
    target: str | None,
    *,
    model: str | Sequence[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    api_keys_file: str | None = None,
    allow_unverified: bool = False,
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    threads: int | None = None,
    chat_format: str | None = None,
    max_loaded: int | None = None,
    parallel: int | None = None,
    environ: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> ServeSettings:
    """`model`: one model or several (`--model A --model B`); they replace the service's."""
    from llmctl.models.store import Store
    from llmctl.schema import MAX_PARALLEL, ServiceSpec

    cfg = loaded.config
    refs = [model] if isinstance(model, str) else list(dict.fromkeys(model or []))
    service: str | None
    if target is not None and target in cfg.services:
        service, spec = target, cfg.services[target]
    elif target is None and not refs:
        if len(cfg.services) != 1:
            names = ", ".join(sorted(cfg.services)) or "none configured"
            raise UsageError(f"name a service or a model to serve (services: {names})", hint="llmctl serve smoke")
        service, spec = next(iter(cfg.services.items()))
    elif target is not None and refs:
        raise UsageError(f"'{target}' is not a service in the config; with --model, name a service or nothing")
    else:
        refs = refs or [target]  # type: ignore[list-item]
        service, spec = None, ServiceSpec(model=refs[0])
    where = f"services.{service}" if service else "serve"

    if port is not None and not 1 <= port <= 65535:
        raise UsageError("--port: must be 1-65535")
    if n_ctx is not None and n_ctx < 64:
        raise UsageError("--n-ctx: must be at least 64")
    if threads is not None and threads < 1:
        raise UsageError("--threads: must be at least 1")
    if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel: must be 1-{MAX_PARALLEL}")
    if n_gpu_layers is not None and n_gpu_layers < -1:
        raise UsageError("--n-gpu-layers: must be -1 (all) or more")
    if max_loaded is not None and max_loaded < 1:
        raise UsageError("--max-loaded: must be at least 1")

    store = Store(paths)
    allow = allow_unverified or spec.allow_unverified_path
    served: list[ServedModel] = []
    for ref in refs or spec.served_models:
        m = _resolve_served(ref, store, cfg, allow, where, progress)
        if any(other.name == m.name for other in served):
            raise UsageError(
                f"two of the models to serve are named '{m.name}'",
                hint="import one under another name: llmctl models import PATH --name NAME",
            )
        served.append(m)
    served_names = [m.name for m in served]
    pinned: tuple[str, ...] = ()
    preload: tuple[str, ...] | None = None
    if not refs or (service is not None and served_names == spec.served_models):
        # The service's own models: its pool keys apply (--model with other models drops them).
        pinned, preload = tuple(spec.pinned), (tuple(spec.preload) if spec.preload is not None else None)
    cap = max_loaded or spec.max_loaded
    if cap is not None and len(pinned) > cap:
        raise UsageError(f"--max-loaded {cap}: {len(pinned)} models are pinned ({where}.pinned)")

    keys, keys_source = load_api_keys(api_keys_file, spec.api_keys_file, f"{where}.api_keys_file", environ)
    first = served[0]
    fmt = chat_format  # the flag overrides every model's
    if fmt is not None:
        served = [replace(m, chat_format=fmt) for m in served]
    elif spec.chat_format is not None:
        served = [replace(m, chat_format=spec.chat_format) for m in served]
    return ServeSettings(
        service=service,
        model_name=first.name,
        model_path=first.path,
        verified=first.verified,
        host=host or spec.host,
        port=port or spec.port,
        n_ctx=n_ctx or spec.n_ctx,
        n_batch=spec.n_batch,
        n_threads=threads or spec.n_threads,
        n_gpu_layers=spec.n_gpu_layers if n_gpu_layers is None else n_gpu_layers,
        flash_attn=spec.flash_attn,
        chat_format=served[0].chat_format,
        embeddings=spec.embeddings,
        api_keys=keys,
        api_keys_source=keys_source,
        public_health=spec.public_health,
        public_metrics=spec.public_metrics,
        shutdown_timeout_s=spec.shutdown_timeout_s,
        limits=spec.limits,
        trusted_proxies=tuple(spec.trusted_proxies),
        tool_format=spec.tool_format,
        parallel=parallel or spec.parallel,
        swa_full=spec.swa_full,
        prompt_cache_mib=spec.prompt_cache_mib,
        models=tuple(served) if len(served) > 1 else (),
        pool=PoolSettings(
            max_loaded=cap,
            memory_budget=spec.memory_budget,
            pinned=pinned,
            keep_alive_s=spec.keep_alive_s,
            preload=preload,
        ),
    )


def _resolve_served(ref: str, store, cfg, allow_unverified: bool, where: str, progress: Progress | None) -> ServedModel:
    """One model to serve: resolved through the store and verified (quick), or an allowed path."""
    from llmctl.models.resolve import ResolvedModel, resolve_model

    resolved = resolve_model(ref, store, cfg, allow_path=True, progress=progress)
    if resolved.entry is None:
        # A path: if it is a file of the store, serve it as that (verified) model.
        real = resolved.path.resolve()
        for entry in store.list():
            if store.model_path(entry).resolve() == real:
                mspec = cfg.models.get(entry.name)
                fmt = (mspec.chat_format if mspec else None) or entry.chat_format
                resolved = ResolvedModel(entry.name, store.model_path(entry), entry, fmt)
                break
    if resolved.entry is None and not allow_unverified:
        raise UsageError(
            f"{resolved.path} is outside the verified model store",
            hint="import it with `llmctl models import`, or pass --allow-unverified "
            f"(config: {where}.allow_unverified_path: true) to serve it anyway",
        )
    if resolved.entry is not None:
        store.verify(resolved.entry, progress, quick=True)  # IntegrityError -> exit 3
    return ServedModel(resolved.name, resolved.path, resolved.entry is not None, resolved.chat_format)
