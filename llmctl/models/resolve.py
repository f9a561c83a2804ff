"""Turn what a user typed (`smoke`, a store name, a configured name, a path) into a model file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import NotFound, UsageError
from llmctl.models.store import LockEntry, Progress, Store

if TYPE_CHECKING:
    from llmctl.schema import Config


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    entry: LockEntry | None  # None for a path outside the store
    chat_format: str | None

    @property
    def verified(self) -> bool:
        return self.entry is not None


def resolve_model(
    ref: str,
    store: Store,
    config: Config | None = None,
    *,
    allow_path: bool = True,
    progress: Progress | None = None,
) -> ResolvedModel:
    """`smoke` -> the smoke model (assembled on first use); a lock name -> its file; a path -> it."""
    from llmctl.models.smoke import SMOKE_NAME, ensure_smoke

    spec = config.models.get(ref) if config is not None else None
    chat_format = spec.chat_format if spec is not None else None
    if ref == SMOKE_NAME:
        entry = ensure_smoke(store, progress)
        return ResolvedModel(ref, store.model_path(entry), entry, chat_format or entry.chat_format)
    locked = store.read_lock().get(ref)
    if locked is not None:
        return ResolvedModel(ref, store.model_path(locked), locked, chat_format or locked.chat_format)
    if spec is not None:
        raise NotFound(f"model '{ref}' is configured but not pulled yet", hint=f"llmctl models pull {ref}")
    if "/" in ref or ref.endswith(".gguf"):
        path = Path(ref).expanduser()
        if not allow_path:
            raise UsageError(
                f"'{ref}' is a path outside the model store",
                hint="import it with `llmctl models import`, or allow unverified paths explicitly",
            )
        if not path.is_file():
            raise NotFound(f"model file not found: {path}")
        return ResolvedModel(path.stem, path.absolute(), None, None)
    raise NotFound(f"unknown model '{ref}'", hint="see `llmctl models list`, or use `smoke`")
