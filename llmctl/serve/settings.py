"""What `llmctl serve` runs: flags + config -> one frozen ServeSettings.

Resolution order per value: flag > services.<name> (config, with LLMCTL_* overrides) > default.
The model is resolved through the store and verified (quick: size + mtime against the stamp of
the last full hash) before anything is loaded. A path outside the store needs an explicit allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    api_keys_file: str | None = None,
    allow_unverified: bool = False,
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    threads: int | None = None,
    chat_format: str | None = None,
    parallel: int | None = None,
    environ: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> ServeSettings:
    from llmctl.models.resolve import ResolvedModel, resolve_model
    from llmctl.models.store import Store
    from llmctl.schema import MAX_PARALLEL, ServiceSpec

    cfg = loaded.config
    service: str | None
    if target is not None and target in cfg.services:
        service, spec = target, cfg.services[target]
    elif target is None and model is None:
        if len(cfg.services) != 1:
            names = ", ".join(sorted(cfg.services)) or "none configured"
            raise UsageError(f"name a service or a model to serve (services: {names})",
                             hint="llmctl serve smoke")
        service, spec = next(iter(cfg.services.items()))
    elif target is not None and model is not None:
        raise UsageError(f"'{target}' is not a service in the config; with --model, name a service or nothing")
    else:
        service, spec = None, ServiceSpec(model=model or target)
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

    store = Store(paths)
    ref = model or spec.model
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
    if resolved.entry is None and not (allow_unverified or spec.allow_unverified_path):
        raise UsageError(
            f"{resolved.path} is outside the verified model store",
            hint="import it with `llmctl models import`, or pass --allow-unverified "
            f"(config: {where}.allow_unverified_path: true) to serve it anyway",
        )
    if resolved.entry is not None:
        store.verify(resolved.entry, progress, quick=True)  # IntegrityError -> exit 3

    keys, keys_source = load_api_keys(api_keys_file, spec.api_keys_file, f"{where}.api_keys_file", environ)
    return ServeSettings(
        service=service,
        model_name=resolved.name,
        model_path=resolved.path,
        verified=resolved.entry is not None,
        host=host or spec.host,
        port=port or spec.port,
        n_ctx=n_ctx or spec.n_ctx,
        n_batch=spec.n_batch,
        n_threads=threads or spec.n_threads,
        n_gpu_layers=spec.n_gpu_layers if n_gpu_layers is None else n_gpu_layers,
        flash_attn=spec.flash_attn,
        chat_format=chat_format or spec.chat_format or resolved.chat_format,
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
    )
