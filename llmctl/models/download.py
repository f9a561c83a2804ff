"""A verified, resumable download: one streaming GET, hashed in the same loop that writes it.

The bytes go to a partial file named by the expected SHA256 (so a resume only ever continues the
same content). A resume hashes the bytes already on disk, then asks for the rest with
`Range: bytes=N-` and accepts only a 206 whose Content-Range starts at N and ends at the expected
size. Nothing here installs anything: the caller moves the partial into the store once it is verified.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import IntegrityError, OperationFailed
from llmctl.models.store import HASH_CHUNK, Progress

Notice = Callable[[str], None]


@dataclass(frozen=True)
class Downloaded:
    path: Path  # the verified partial file, ready for Store.install
    size: int
    sha256: str
    resumed_from: int  # bytes already on disk when this run started (0: a fresh download)
    fetched: int  # bytes received over the network by this run


class _Transient(Exception):
    """A dropped connection or a short body: worth resuming."""


def write_all(out, data) -> None:
    """An unbuffered write may be short: loop until every byte is on its way to the disk."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n:]


def _hash_existing(path: Path, digest, progress: Progress | None, total: int) -> int:
    done = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            done += n
            if progress:
                progress(done, total)
    return done


def fetch_verified(
    url: str,
    partial: Path,
    *,
    size: int,
    sha256: str | None,
    pinned: str | None = None,
    token: str | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    notice: Notice | None = None,
    retries: int = 2,
    timeout: float = 60.0,
) -> Downloaded:
    """Download `url` into `partial` (resuming what is there), verify size and SHA256, return it.

    On a hash mismatch the partial is deleted and IntegrityError raised. On a dropped connection the
    partial is kept (resumable) and OperationFailed raised after `retries` in-process resumes.
    Ctrl-C leaves the partial in place.
    """
    try:  # the HTTP client huggingface_hub 2.x itself uses (already imported for the metadata)
        import httpx2 as httpx
    except ImportError:  # huggingface_hub 1.x: plain httpx, same API
        import httpx  # type: ignore[no-redef]

    label = label or url
    if sha256 is None and pinned is None:
        raise OperationFailed(f"no SHA256 to verify {label} against", hint="pin one with --sha256")
    digest = hashlib.sha256()
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    resumed_from = have
    if have:
        if notice:
            notice(f"resuming {label} at {have} of {size} bytes")
        _hash_existing(partial, digest, progress, size)
    fetched = 0
    headers = {"Accept-Encoding": "identity", "User-Agent": "llmctl"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    failures = 0
    # httpx(2) drops the Authorization header itself when a redirect leaves the origin (a CDN).
    with (
        httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout, connect=10.0)) as client,
        open(partial, "ab", buffering=0) as out,
    ):
        while have < size:
            req_headers = dict(headers)
            if have:
                req_headers["Range"] = f"bytes={have}-"
            try:
                with client.stream("GET", url, headers=req_headers) as resp:
                    if resp.status_code == 200 and have:
                        # The server ignored Range: start over with this full body.
                        if notice:
                            notice(f"server ignored the Range request; downloading {label} from the start")
                        out.truncate(0)
                        out.seek(0)
                        digest = hashlib.sha256()
                        have = 0
                    elif resp.status_code == 206:
                        expected_range = f"bytes {have}-{size - 1}/{size}"
                        got = resp.headers.get("Content-Range", "")
                        if not have or got.strip() != expected_range:
                            raise OperationFailed(
                                f"{label}: server answered Range bytes={have}- with Content-Range "
                                f"'{got}', expected '{expected_range}'; partial download kept",
                            )
                    elif resp.status_code != 200:
                        resp.read()
                        msg = resp.headers.get("X-Error-Message") or resp.reason_phrase
                        raise OperationFailed(f"GET {url} answered {resp.status_code}: {msg}")
                    for chunk in resp.iter_raw():
                        write_all(out, chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        fetched += len(chunk)
                        if have > size:
                            partial.unlink(missing_ok=True)
                            raise IntegrityError(
                                f"{label}: server sent more than the published {size} bytes; nothing installed"
                            )
                        if progress:
                            progress(have, size)
                if have < size:
                    raise _Transient(f"body ended at {have} of {size} bytes")
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OperationFailed(
                        f"disk full while writing {partial} ({have} of {size} bytes); partial download kept",
                        hint="free some space and run the same command again: it resumes",
                    ) from None
                raise
            except (httpx.TransportError, _Transient) as exc:
                failures += 1
                if failures > retries:
                    raise OperationFailed(
                        f"download of {label} broke off at {have} of {size} bytes: {exc or type(exc).__name__}",
                        hint="run the same command again: it resumes where it stopped",
                    ) from None
                if notice:
                    notice(f"connection lost at {have} of {size} bytes ({exc or type(exc).__name__}); resuming")
        try:
            os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OperationFailed(f"disk full while writing {partial}", hint="free some space and retry") from None
            raise
    actual = digest.hexdigest()
    for expected, what in ((sha256, "the Hub's"), (pinned, "the pinned")):
        if expected is not None and actual != expected:
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{label}: downloaded sha256 {actual} does not match {what} {expected}; "
                "nothing installed, partial download removed"
            )
    return Downloaded(partial, have, actual, resumed_from, fetched)
