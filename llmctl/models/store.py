"""The model store and its lockfile.

Layout under the data dir:
    models/<name>/<file>.gguf    verified model files, the only thing llmctl ever loads
    models/.partial/             downloads in progress; never visible as a model
    models.lock                  JSON, sorted, human-readable: what is installed and its SHA256

The lockfile is written atomically under a file lock, so concurrent llmctl runs never corrupt it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from llmctl.errors import IntegrityError, NotFound, OperationFailed
from llmctl.fsutil import atomic_write_text
from llmctl.paths import Paths

LOCK_VERSION = 1
HASH_CHUNK = 8 * 1024 * 1024
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class LockEntry:
    name: str
    file: str  # the file name as published
    path: str  # relative to the models dir
    size: int
    sha256: str
    pulled_at: str  # ISO 8601, UTC
    repo: str | None = None
    revision: str | None = None  # the resolved commit
    source: str = "hub"  # "hub" | "import" | "pypi:<package>"
    chat_format: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


@dataclass(frozen=True)
class Lockfile:
    entries: dict[str, LockEntry]

    def get(self, name: str) -> LockEntry | None:
        return self.entries.get(name)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            done += n
            if progress:
                progress(done, total)
    return digest.hexdigest()


class Store:
    """The verified model files of one host and their lockfile."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.root = paths.models_dir
        self.lock_path = paths.lockfile

    # -- the lockfile ---------------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        """Hold the store's file lock (other llmctl processes wait)."""
        from filelock import FileLock, Timeout

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path) + ".flock")
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise OperationFailed(
                f"another llmctl process holds {lock.lock_file} for over {timeout:.0f}s"
            ) from None

    def read_lock(self) -> Lockfile:
        try:
            raw = self.lock_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Lockfile({})
        try:
            data = json.loads(raw)
            if data.get("version") != LOCK_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            entries = {name: LockEntry(name=name, **fields) for name, fields in data["models"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OperationFailed(
                f"lockfile {self.lock_path} is unreadable: {exc}",
                hint="restore it from a backup, or remove it and pull the models again",
            ) from None
        return Lockfile(entries)

    def _write_lock(self, lock: Lockfile) -> None:
        data = {
            "version": LOCK_VERSION,
            "models": {name: lock.entries[name].to_json() for name in sorted(lock.entries)},
        }
        atomic_write_text(self.lock_path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def list(self) -> list[LockEntry]:
        lock = self.read_lock()
        return [lock.entries[n] for n in sorted(lock.entries)]

    def get(self, name: str) -> LockEntry:
        entry = self.read_lock().get(name)
        if entry is None:
            raise NotFound(f"model '{name}' is not installed", hint="see `llmctl models list`")
        return entry

    def model_path(self, entry: LockEntry) -> Path:
        return self.root / entry.path

    def partial_dir(self) -> Path:
        d = self.root / ".partial"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def destination(self, name: str, filename: str) -> Path:
        return self.root / name / Path(filename).name

    # -- installing -----------------------------------------------------------------------------

    def install(self, tmp: Path, entry: LockEntry, *, keep_mode: bool = False) -> LockEntry:
        """Move a verified temp file into the store and record it, atomically, under the lock.

        The caller has already hashed `tmp` and compared it with entry.sha256. keep_mode: `tmp` is a
        hard link to another store's file (already readable by others), whose mode is not ours to change.
        """
        from llmctl.fsutil import commit_file

        dest = self.root / entry.path
        if not keep_mode:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a service running as another user must read it
        with self.locked():
            lock = self.read_lock()
            old = lock.get(entry.name)
            commit_file(tmp, dest)
            # The bytes were hashed on the way in: record that, so a server that may not write
            # here (a sandboxed unit) starts with the cheap size+mtime check, not a full re-hash.
            _write_stamp(dest, entry.sha256)
            entries = dict(lock.entries)
            entries[entry.name] = entry
            self._write_lock(Lockfile(entries))
            if old is not None and old.path != entry.path:
                (self.root / old.path).unlink(missing_ok=True)
        return entry

    def record(self, entry: LockEntry) -> LockEntry:
        """Update the lock entry of a file already in the store (e.g. the same bytes at a newer commit)."""
        with self.locked():
            lock = self.read_lock()
            old = lock.get(entry.name)
            if old is None or old.path != entry.path or old.sha256 != entry.sha256:
                raise OperationFailed(f"model '{entry.name}' changed in the lock while it was being updated")
            entries = dict(lock.entries)
            entries[entry.name] = entry
            self._write_lock(Lockfile(entries))
        return entry

    def remove(self, name: str) -> LockEntry:
        with self.locked():
            lock = self.read_lock()
            entry = lock.get(name)
            if entry is None:
                raise NotFound(f"model '{name}' is not installed", hint="see `llmctl models list`")
            entries = {k: v for k, v in lock.entries.items() if k != name}
            self._write_lock(Lockfile(entries))
            path = self.root / entry.path
            still_used = any(e.path == entry.path for e in entries.values())
            if not still_used:
                path.unlink(missing_ok=True)
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
        return entry

    def verify(self, entry: LockEntry, progress: Progress | None = None, *, quick: bool = False) -> Path:
        """Check a stored file against its lock entry; raise IntegrityError when it differs.

        quick=True trusts a file whose size and mtime are unchanged since the last full check
        (recorded in a stamp file beside it); `llmctl models verify` always hashes.
        """
        path = self.model_path(entry)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IntegrityError(f"{path}: missing (model '{entry.name}' is in the lock)") from None
        if st.st_size != entry.size:
            raise IntegrityError(
                f"{path}: size {st.st_size} does not match the lock's {entry.size} (model '{entry.name}')"
            )
        if quick:
            try:
                if _stamp_path(path).read_text() == _stamp_value(entry.sha256, st):
                    return path
            except OSError:
                pass
        actual = sha256_file(path, progress)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{path}: sha256 {actual} does not match the lock's {entry.sha256} (model '{entry.name}')"
            )
        _write_stamp(path, actual)
        return path


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp_value(sha256: str, st: os.stat_result) -> str:
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, sha256: str) -> None:
    """Record that `path`, as it is now (size, mtime), has this SHA256. Best effort."""
    try:
        atomic_write_text(_stamp_path(path), _stamp_value(sha256, path.stat()))
    except OSError:
        pass


def entry_with(entry: LockEntry, **changes) -> LockEntry:
    return replace(entry, **changes)


def free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
