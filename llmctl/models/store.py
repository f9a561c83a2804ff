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
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path, PurePosixPath

from llmctl.errors import IntegrityError, NotFound, OperationFailed
from llmctl.fsutil import atomic_write_text
from llmctl.paths import Paths
from llmctl.text import check_pattern, control_char, is_name, printable

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


# The type of each field of a lock entry, as read back from JSON (None: may be null). A lockfile is
# read back from disk and may be corrupt or hostile: every field is checked before it is used.
_FIELD_TYPES: dict[str, tuple[type, bool]] = {
    "file": (str, False),
    "path": (str, False),
    "size": (int, False),
    "sha256": (str, False),
    "pulled_at": (str, False),
    "repo": (str, True),
    "revision": (str, True),
    "source": (str, False),
    "chat_format": (str, True),
}
_REQUIRED = {f.name for f in fields(LockEntry) if f.default is MISSING} - {"name"}


def _entry_from_json(name: object, raw: object) -> LockEntry:
    """One lock entry, type-checked; ValueError names what is wrong."""
    if not is_name(name):
        raise ValueError(f"entry {printable(repr(name))} is not a model name")
    if not isinstance(raw, dict):
        raise ValueError(f"entry '{name}' is not an object")
    unknown = sorted(set(raw) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"entry '{name}': unknown field {printable(repr(unknown[0]))}")
    missing = sorted(_REQUIRED - set(raw))
    if missing:
        raise ValueError(f"entry '{name}': field '{missing[0]}' is missing")
    for key, value in raw.items():
        kind, nullable = _FIELD_TYPES[key]
        if value is None and nullable:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"entry '{name}': field '{key}' must be {'an integer' if kind is int else 'a string'}"
                + (" or null" if nullable else "")
            )
    if raw["size"] < 0 or not check_pattern("sha256", raw["sha256"]):
        raise ValueError(f"entry '{name}': size or sha256 is malformed")
    return LockEntry(name=name, **raw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Lockfile:
    entries: dict[str, LockEntry]

    def get(self, name: str) -> LockEntry | None:
        return self.entries.get(name)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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

        lock = FileLock(str(self.lock_path) + ".flock")
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise OperationFailed(f"another llmctl process holds {lock.lock_file} for over {timeout:.0f}s") from None
        except PermissionError as exc:
            raise _access_error(exc) from None

    def read_lock(self) -> Lockfile:
        try:
            data = self.lock_path.read_bytes()
        except FileNotFoundError:
            return Lockfile({})
        except OSError as exc:
            raise _access_error(exc) from None
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
                version = doc.get("version") if isinstance(doc, dict) else None
                raise ValueError(f"unsupported version {printable(repr(version))[:40]}")
            models = doc.get("models")
            if not isinstance(models, dict):
                raise ValueError("'models' is not an object")
            entries = {name: _entry_from_json(name, raw) for name, raw in models.items()}
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise IntegrityError(
                f"lockfile {self.lock_path} is corrupt: {printable(why)[:200]}",
                hint="restore it from a backup, or remove it and pull the models again",
            ) from None
        return Lockfile(entries)

    def _write_lock(self, lock: Lockfile) -> None:
        data = {
            "version": LOCK_VERSION,
            "models": {name: lock.entries[name].to_json() for name in sorted(lock.entries)},
        }
        try:
            atomic_write_text(self.lock_path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise _access_error(exc) from None

    def list(self) -> list[LockEntry]:
        lock = self.read_lock()
        return [lock.entries[n] for n in sorted(lock.entries)]

    def get(self, name: str) -> LockEntry:
        entry = self.read_lock().get(name)
        if entry is None:
            raise NotFound(f"model '{name}' is not installed", hint="see `llmctl models list`")
        return entry

    def model_path(self, entry: LockEntry) -> Path:
        """The file of a lock entry, which must stay inside the store: every reader of a lock
        entry's path goes through here. A path that is absolute, has '..' or a control character,
        or resolves (symbolic links followed) outside the models dir is an IntegrityError that
        names the entry."""
        path = self.root / lock_relpath(entry, self.lock_path)
        try:
            real = path.resolve()
            root = self.root.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
            raise _escape_error(entry, self.lock_path, f"cannot be resolved ({exc})") from None
        if real == root or not real.is_relative_to(root):
            raise _escape_error(entry, self.lock_path, f"resolves to {real}, outside the store {root}")
        return path

    def partial_dir(self) -> Path:
        d = self.root / ".partial"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _access_error(exc) from None
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

        dest = self.model_path(entry)
        if not keep_mode:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a service running as another user must read it
        with self.locked():
            lock = self.read_lock()
            old = lock.get(entry.name)
            try:
                commit_file(tmp, dest)
            except OSError as exc:
                raise _access_error(exc) from None
            # The bytes were hashed on the way in: record that, so a server that may not write
            # here (a sandboxed unit) starts with the cheap size+mtime check, not a full re-hash.
            _write_stamp(dest, entry.sha256)
            entries = dict(lock.entries)
            entries[entry.name] = entry
            self._write_lock(Lockfile(entries))
            if old is not None and old.path != entry.path and not any(e.path == old.path for e in entries.values()):
                try:
                    old_path = self.model_path(old)
                except IntegrityError:
                    old_path = None  # it pointed outside the store: replaced in the lock, never deleted
                if old_path is not None:
                    _delete_model_file(old_path, self.root)
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
        """Drop a model from the lock and delete its file (and its directory, when empty).

        Checked before anything changes: the path must stay inside the store, and be a regular
        file (or missing). An entry whose path leaves the store is dropped from the lock and no
        file is deleted; that still ends in an IntegrityError, so the caller hears of it.
        """
        with self.locked():
            lock = self.read_lock()
            entry = lock.get(name)
            if entry is None:
                raise NotFound(f"model '{name}' is not installed", hint="see `llmctl models list`")
            escaped: IntegrityError | None = None
            path: Path | None = None
            try:
                path = self.model_path(entry)
            except IntegrityError as exc:
                escaped = exc
            if path is not None:
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    st = None
                except OSError as exc:
                    raise _access_error(exc) from None
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise IntegrityError(
                        f"model '{name}': {path} is not a regular file; nothing removed",
                        hint="move it out of the store by hand, then run `llmctl models rm` again",
                    )
            entries = {k: v for k, v in lock.entries.items() if k != name}
            self._write_lock(Lockfile(entries))
            if path is not None and not any(e.path == entry.path for e in entries.values()):
                _delete_model_file(path, self.root)
        if escaped is not None:
            raise IntegrityError(f"{escaped.message}; the entry was removed from the lock, no file was deleted")
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
        except OSError as exc:
            raise _access_error(exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{path}: not a regular file (model '{entry.name}')")
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
        try:
            actual = sha256_file(path, progress)
        except OSError as exc:
            raise _access_error(exc) from None
        if actual != entry.sha256:
            raise IntegrityError(
                f"{path}: sha256 {actual} does not match the lock's {entry.sha256} (model '{entry.name}')"
            )
        _write_stamp(path, actual)
        return path


def lock_relpath(entry: LockEntry, lock_path: Path | str = "models.lock") -> PurePosixPath:
    """A lock entry's path, checked without touching the disk: relative, without '..' or control
    characters, naming something below the models dir. Callers that have a store use
    Store.model_path, which also resolves it; rendering for another host uses this alone."""
    raw = entry.path
    rel = PurePosixPath(raw)
    if not raw or rel.is_absolute():
        problem = "is empty" if not raw else "is absolute"
    elif ".." in rel.parts:
        problem = "contains '..'"
    elif control_char(raw) is not None:
        problem = "contains a control character"
    elif not rel.parts or rel.parts[0] == ".partial":
        problem = "does not name a model file"
    else:
        return rel
    raise _escape_error(entry, lock_path, problem)


def _escape_error(entry: LockEntry, lock_path: Path | str, problem: str) -> IntegrityError:
    return IntegrityError(
        f"model '{entry.name}': its path {printable(repr(entry.path))} in {lock_path} {problem}: "
        "a model's file must stay inside the store",
        hint=f"`llmctl models rm {entry.name}` drops the entry (and deletes no file outside the store), "
        "or restore models.lock from a backup",
    )


def _access_error(exc: OSError) -> OperationFailed:
    return OperationFailed(
        f"cannot access {exc.filename}: {exc.strerror or exc}",
        hint="run as the user that owns the store, or as root with --system",
    )


def _delete_model_file(path: Path, root: Path) -> None:
    """Delete a model file, its verify stamp, and its directory when that is empty (never the root)."""
    try:
        path.unlink(missing_ok=True)
        _stamp_path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise OperationFailed(f"removed from the lock, but cannot delete {path}: {exc.strerror or exc}") from None
    if path.parent != root:
        try:
            path.parent.rmdir()
        except OSError:
            pass


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


def free_bytes(path: Path) -> int:
    try:
        path.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(path)
    except OSError as exc:
        raise _access_error(exc) from None
    return st.f_bavail * st.f_frsize
