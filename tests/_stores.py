"""Stand-ins for the stores other programs keep on a host, built under their real layouts.

- Ollama (server/manifest.go, server/images.go): `<root>/manifests/<host>/<namespace>/<model>/<tag>`,
  a JSON manifest whose layer of mediaType `application/vnd.ollama.image.model` names the GGUF by
  `sha256:<hex>`; the bytes in `<root>/blobs/sha256-<hex>`.
- The Hugging Face cache (huggingface_hub's file_download.py): `<cache>/models--<org>--<repo>/` with
  `blobs/<sha256>` (the LFS sha256; a git SHA-1 for non-LFS files), `refs/main` holding a commit, and
  `snapshots/<commit>/<file>` a relative symlink to `../../blobs/<sha256>`.

The GGUF goes in as a hard link when it can (the smoke model is 253 MB): never write to a blob these
build, it may be the session's smoke model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.hubserver import sha256_of


def place(src: Path, dst: Path, *, link: bool = True) -> Path:
    if dst.exists():  # a blob two names share
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return dst


def ollama_manifest(digest: str, size: int, *, media_type: str = "application/vnd.ollama.image.model") -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 485,
        },
        "layers": [
            {"mediaType": media_type, "digest": digest, "size": size},
            {"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:" + "d" * 64, "size": 8},
        ],
    }


def add_ollama_model(
    root: Path,
    gguf: Path,
    model: str,
    tag: str = "latest",
    *,
    namespace: str = "library",
    host: str = "registry.ollama.ai",
    digest: str | None = None,
    link: bool = True,
) -> Path:
    """Put `gguf` into an Ollama store as model:tag; `digest` overrides the hex it is named by."""
    hexdigest = digest or sha256_of(gguf)
    place(gguf, root / "blobs" / f"sha256-{hexdigest}", link=link)
    manifest = root / "manifests" / host / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(ollama_manifest(f"sha256:{hexdigest}", gguf.stat().st_size)))
    return manifest


def add_hf_file(
    cache: Path,
    gguf: Path,
    repo: str,
    file: str,
    commit: str,
    *,
    main: bool = True,
    blob: str | None = None,
    link: bool = True,
) -> Path:
    """Put `gguf` into a Hugging Face cache as repo/file at commit; `blob` overrides its blob name."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    name = blob or sha256_of(gguf)
    target = place(gguf, repo_dir / "blobs" / name, link=link)
    snap = repo_dir / "snapshots" / commit / file
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(target, snap.parent))
    if main:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
    return snap
