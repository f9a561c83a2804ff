"""Hub metadata: resolve (repo, file, revision) to a commit, a size and the SHA256 the Hub published.

Uses huggingface_hub's own client (`get_hf_file_metadata` for the resolve HEAD, `HfApi.get_paths_info`
when the HEAD carries no LFS hash), pointed at HF_ENDPOINT, with HF_TOKEN. HF_HUB_OFFLINE is
honoured by the caller (ops.pull) before anything here is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmctl.errors import LlmctlError, NotFound, OperationFailed
from llmctl.text import check_pattern, printable

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    token: str | None
    offline: bool


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_settings() -> HubSettings:
    """Read HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE now (not at import time)."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    token = os.environ.get("HF_TOKEN") or None
    if token is None:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # noqa: BLE001 - a broken token file must not stop public pulls
            token = None
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    return HubSettings(endpoint, token, offline)


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    file: str
    revision: str  # what the user asked for: branch, tag or commit
    commit: str  # what it resolved to
    size: int
    sha256: str | None  # None when the Hub publishes none (a non-LFS file)
    url: str  # the resolve URL pinned to the commit


def _server_message(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    msg = None
    if resp is not None:
        msg = resp.headers.get("X-Error-Message")
    if not msg:
        server = getattr(exc, "server_message", None)
        msg = server or None
    return f": {msg.strip()}" if msg else ""


def translate_hub_error(exc: Exception, repo: str, file: str, revision: str, endpoint: str) -> LlmctlError:
    """huggingface_hub's exceptions -> one clear line with the documented exit code."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    server = _server_message(exc)
    if isinstance(exc, GatedRepoError) or status in (401, 403):
        return OperationFailed(
            f"{endpoint} refused access to '{repo}' ({status}){server}",
            hint="set HF_TOKEN to a token that may read this repository",
        )
    if isinstance(exc, RevisionNotFoundError):
        return NotFound(f"revision '{revision}' of '{repo}' not found on {endpoint} (404){server}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return NotFound(
            f"file '{file}' not found in '{repo}' at revision '{revision}' on {endpoint} (404){server}",
            hint=f"list the repository's files at {endpoint}/{repo}/tree/{revision}",
        )
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return NotFound(
            f"repository '{repo}' not found on {endpoint} (404){server}",
            hint="check the spelling (owner/name); a private repository needs HF_TOKEN",
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return OperationFailed(f"offline mode is on (HF_HUB_OFFLINE); cannot reach {endpoint}")
    if isinstance(exc, HfHubHTTPError):
        return OperationFailed(f"{endpoint} answered {status} for '{repo}/{file}'{server}")
    return OperationFailed(
        f"cannot reach {endpoint}: {type(exc).__name__}: {exc}".splitlines()[0],
        hint="check the network, or HF_ENDPOINT",
    )


def resolve_remote(repo: str, file: str, revision: str, settings: HubSettings) -> RemoteFile:
    """HEAD the resolve URL: commit from X-Repo-Commit, size from X-Linked-Size, sha256 from X-Linked-Etag.

    When the ETag is not an LFS SHA256 (a file kept in git), ask the paths-info API for the LFS hash.
    """
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    try:
        url = hf_hub_url(repo, file, revision=revision, endpoint=settings.endpoint)
        meta = get_hf_file_metadata(
            url, token=settings.token or False, endpoint=settings.endpoint, retry_on_errors=False
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        if isinstance(exc, ValueError) and not hasattr(exc, "response"):
            from llmctl.errors import UsageError

            raise UsageError(f"bad repository or file name: {exc}") from None
        raise translate_hub_error(exc, repo, file, revision, settings.endpoint) from None
    if not meta.commit_hash:
        raise OperationFailed(
            f"{settings.endpoint} did not send X-Repo-Commit for '{repo}/{file}': is HF_ENDPOINT a Hub?"
        )
    commit = meta.commit_hash
    sha = (meta.etag or "").lower()
    sha256 = sha if check_pattern("sha256", sha) else None
    size = meta.size
    if sha256 is None or size is None:
        try:
            infos = HfApi(endpoint=settings.endpoint, token=settings.token or False).get_paths_info(
                repo, [file], revision=commit
            )
        except Exception as exc:  # noqa: BLE001
            raise translate_hub_error(exc, repo, file, revision, settings.endpoint) from None
        for info in infos:
            if getattr(info, "path", None) == file:
                lfs = getattr(info, "lfs", None)
                if lfs is not None and sha256 is None:
                    # It names the partial download's file (.partial/<sha256>.part): only hex digits.
                    sha256 = str(lfs.sha256).lower()
                    if not check_pattern("sha256", sha256):
                        raise OperationFailed(
                            f"{settings.endpoint} sent a malformed LFS sha256 for "
                            f"'{repo}/{file}': {printable(repr(sha256))[:80]}"
                        )
                if size is None:  # a folder of that name has no size: "published no size" below
                    found = lfs.size if lfs is not None else getattr(info, "size", None)
                    size = int(found) if found is not None else None
    if size is None:
        raise OperationFailed(f"{settings.endpoint} published no size for '{repo}/{file}'")
    pinned_url = hf_hub_url(repo, file, revision=commit, endpoint=settings.endpoint)
    return RemoteFile(repo, file, revision, commit, int(size), sha256, pinned_url)
