"""Find the GGUF models a host already has: Ollama's store, the Hugging Face cache, plain directories.

What `llmctl models discover` lists and what `llmctl models import SOURCE` adopts. Each model has a
source id:

    ollama:<name>:<tag>            Ollama's store. The namespace is prefixed when it is not `library`,
                                   and the registry too when it is not registry.ollama.ai, the way
                                   Ollama itself shows names (`ollama:hf.co/<org>/<repo>:Q4_K_M`).
    hf-cache:<org>/<repo>/<file>   The Hugging Face cache, the file as the snapshot refs/main names
                                   (else the newest snapshot); `@<commit>` is added for other bytes
                                   under the same name in another snapshot.
    /abs/path/model.gguf           A plain file under a `discover.paths` directory.

and the SHA256 the other store names the bytes by: Ollama's blob digest, the HF cache's blob name
(the LFS sha256). A plain file, or a file the HF cache keeps as a git blob, has none.

Those stores belong to other programs and may be corrupt or hostile. Every name and digest read from
them is checked with re.fullmatch; every path is resolved and must stay inside its store (a symlink
that points out is refused); manifests are bounded in size and type-checked. A bad entry is a
CorruptEntry, an IntegrityError: `import` of that entry exits 3, `discover` shows it as one warning
line and goes on. Nothing here writes anything.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from llmctl.errors import IntegrityError, LlmctlError, NotFound, OperationFailed, UsageError
from llmctl.models.gguf import GgufInfo, read_gguf_info
from llmctl.models.ops import default_name
from llmctl.text import check_pattern, printable

OLLAMA, HF_CACHE, PLAIN = "ollama", "hf-cache", "path"
OLLAMA_PREFIX, HF_PREFIX = "ollama:", "hf-cache:"

# Ollama (server/images.go, types/model/name.go): the model layer's media type, the defaults a short
# name is filled with, and the characters each part of a name may hold.
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_HOST, OLLAMA_NAMESPACE, OLLAMA_TAG = "registry.ollama.ai", "library", "latest"
_OLLAMA_PARTS = (
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),  # host (may carry a :port)
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),  # namespace (no '.')
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),  # model
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),  # tag
)
_OLLAMA_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")  # as Ollama's GetBlobsPath accepts it
MANIFEST_MAX_BYTES = 1 << 20  # real manifests are about 1 KiB

# A Hugging Face repository id's two parts (the cache's directory is models--<org>--<repo>).
_HF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


class CorruptEntry(IntegrityError):
    """An entry of another program's store that is corrupt or points outside that store."""

    def __init__(self, source: str | None, where: Path | str | None, problem: str) -> None:
        label = source or ""
        if where is not None:
            label = f"{label} ({printable(where)})" if label else printable(where)
        super().__init__(f"{label}: {problem}" if label else problem)
        self.source = source


@dataclass(frozen=True)
class Found:
    """One GGUF file found on the host."""

    source: str  # the source id `llmctl models import` takes
    kind: str  # OLLAMA | HF_CACHE | PLAIN
    path: Path  # where it was found (the blob, the snapshot entry, the file)
    real_path: Path  # resolved, inside its store: what import reads
    size: int
    sha256: str | None  # the digest the other store names the bytes by; None: it names none
    digest_note: str  # where that digest comes from, or why there is none
    name: str  # the store name import gives it by default
    file: str  # the file name the lock records
    store: Path  # the store it was found in
    repo: str | None = None  # HF: org/repo
    revision: str | None = None  # HF: the snapshot's commit
    gguf: GgufInfo | None = None
    installed_as: tuple[str, ...] = ()  # names in llmctl's store holding the same bytes

    def to_json(self) -> dict:
        g = self.gguf
        return {
            "source": self.source,
            "kind": self.kind,
            "path": str(self.path),
            "real_path": str(self.real_path),
            "size": self.size,
            "sha256": self.sha256,
            "digest": self.digest_note,
            "name": self.name,
            "architecture": g.architecture if g else None,
            "quantization": g.quantization if g else None,
            "context_length": g.context_length if g else None,
            "model_name": g.name if g else None,
            "repo": self.repo,
            "revision": self.revision,
            "store": str(self.store),
            "installed_as": list(self.installed_as),
        }


Entry = Found | CorruptEntry


@dataclass(frozen=True)
class Searched:
    kind: str
    path: Path
    exists: bool

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "exists": self.exists}


@dataclass(frozen=True)
class Discovery:
    models: tuple[Found, ...]
    warnings: tuple[str, ...]
    searched: tuple[Searched, ...]


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _resolve(path: Path, root: Path, source: str | None, what: str) -> Path:
    """`path` resolved; a CorruptEntry unless it is a regular file inside `root` (already resolved)."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise CorruptEntry(source, path, f"{what} is missing") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission problem
        raise CorruptEntry(source, path, f"{what} cannot be resolved: {exc}") from None
    if not _inside(real, root):
        raise CorruptEntry(source, path, f"{what} points outside its store, to {printable(real)}")
    try:
        st = real.stat()
    except OSError as exc:
        raise CorruptEntry(source, path, f"{what} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptEntry(source, path, f"{what} is not a regular file")
    return real


# -- where the stores are ----------------------------------------------------------------------------


def ollama_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """$OLLAMA_MODELS, else ~/.ollama/models and /usr/share/ollama/.ollama/models (the Linux service's)."""
    env = os.environ if env is None else env
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def hf_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.

    The precedence of huggingface_hub.constants, read now (the constants are fixed when it is imported).
    """
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


# -- Ollama ------------------------------------------------------------------------------------------


def ollama_source(host: str, namespace: str, model: str, tag: str) -> str:
    """The source id, in Ollama's own short form: default registry and `library` left out."""
    if host.lower() != OLLAMA_HOST:
        return f"{OLLAMA_PREFIX}{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != OLLAMA_NAMESPACE:
        return f"{OLLAMA_PREFIX}{namespace}/{model}:{tag}"
    return f"{OLLAMA_PREFIX}{model}:{tag}"


def _normalize_ollama(source: str) -> str:
    """`ollama:gemma3` means `ollama:gemma3:latest`, as it does to Ollama; names compare without case."""
    last = source[len(OLLAMA_PREFIX) :].rsplit("/", 1)[-1]
    return (source if ":" in last else f"{source}:{OLLAMA_TAG}").casefold()


def _ollama_entries(root: Path) -> Iterator[Entry]:
    """Every manifest under root/manifests/<host>/<namespace>/<model>/<tag> that names a model layer."""
    manifests = root / "manifests"
    try:  # manifests/ and blobs/ may be symlinks an admin made to another disk: what is in them may not
        manifests_real = manifests.resolve(strict=True)
        blobs_real = (root / "blobs").resolve()
    except (OSError, RuntimeError):
        return
    for path in sorted(manifests.glob("*/*/*/*")):
        try:
            if path.is_dir():
                continue
        except OSError:
            pass
        parts = path.relative_to(manifests).parts
        if not all(rx.fullmatch(p) for rx, p in zip(_OLLAMA_PARTS, parts)):
            yield CorruptEntry(None, path, "not an Ollama model name (host/namespace/model/tag)")
            continue
        source = ollama_source(*parts)
        try:
            found = _ollama_entry(root, blobs_real, manifests_real, source, parts, path)
        except CorruptEntry as exc:
            yield exc
            continue
        if found is not None:
            yield found


def _ollama_entry(
    root: Path, blobs_real: Path, manifests_real: Path, source: str, parts: tuple[str, ...], path: Path
) -> Found | None:
    def bad(problem: str) -> CorruptEntry:
        return CorruptEntry(source, path, problem)

    real = _resolve(path, manifests_real, source, "the manifest")
    try:
        with open(real, "rb") as fh:
            raw = fh.read(MANIFEST_MAX_BYTES + 1)
    except OSError as exc:
        raise bad(f"cannot read the manifest: {exc.strerror or exc}") from None
    if len(raw) > MANIFEST_MAX_BYTES:
        raise bad(f"the manifest is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad(f"the manifest is not JSON ({str(exc)[:80]})") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise bad("the manifest has no list of layers")
    models = [la for la in layers if isinstance(la, dict) and la.get("mediaType") == OLLAMA_MODEL_LAYER]
    if not models:
        return None  # not a GGUF model (an adapter-only or a safetensors model): nothing to list
    if len(models) > 1:
        raise bad("the manifest names more than one model layer")
    digest, size = models[0].get("digest"), models[0].get("size")
    m = _OLLAMA_DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise bad(f"the model layer's digest {printable(repr(digest)[:90])} is not sha256:<64 hex digits>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad("the model layer's size is not a number of bytes")
    blob = root / "blobs" / f"sha256-{m.group(1)}"
    blob_real = _resolve(blob, blobs_real, source, "the model blob")
    actual = blob_real.stat().st_size
    if actual != size:
        raise bad(f"the model blob has {actual} bytes, the manifest says {size}")
    host, namespace, model, tag = parts
    name = default_name(model if tag.lower() == OLLAMA_TAG else f"{model}-{tag}")
    return Found(
        source=source,
        kind=OLLAMA,
        path=blob,
        real_path=blob_real,
        size=actual,
        sha256=m.group(1).lower(),
        digest_note="the blob's digest in Ollama's manifest",
        name=name,
        file=f"{name}.gguf",
        store=root,
    )


# -- the Hugging Face cache --------------------------------------------------------------------------


def _hf_entries(cache: Path) -> Iterator[Entry]:
    """GGUF files in the snapshots of the cache's model repositories (huggingface_hub's scanner)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return
    except (OSError, ValueError, RuntimeError) as exc:  # an unreadable ref, a file where the cache should be
        yield CorruptEntry(None, cache, f"the Hugging Face cache cannot be scanned: {exc}")
        return
    for warning in info.warnings:  # one corrupt repository each; datasets and spaces are not our business
        text = str(warning)
        if "datasets--" not in text and "spaces--" not in text:
            yield CorruptEntry(None, None, f"Hugging Face cache: {printable(text)}")
    root_real = Path(info.cache_dir or cache)
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        ggufs = [(rev, f) for rev in repo.revisions for f in rev.files if f.file_name.lower().endswith(".gguf")]
        if not ggufs:
            continue
        org_repo = repo.repo_id.split("/")
        if len(org_repo) != 2 or not all(_HF_PART.fullmatch(p) and ".." not in p for p in org_repo):
            yield CorruptEntry(
                None,
                repo.repo_path,
                "not a models--<org>--<repo> directory (a repository "
                "without an owner, or a name Hugging Face would refuse): not listed",
            )
            continue
        # The snapshot refs/main names comes first, then the newest: its files get the plain source id.
        order = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
        rank = {rev.commit_hash: i for i, rev in enumerate(order)}
        by_file: dict[str, list] = {}
        for rev, f in sorted(ggufs, key=lambda rf: rank[rf[0].commit_hash]):
            by_file.setdefault(f.file_path.relative_to(rev.snapshot_path).as_posix(), []).append((rev, f))
        for rel, found_in in sorted(by_file.items()):
            seen: set = set()
            for rev, f in found_in:
                base = f"{HF_PREFIX}{repo.repo_id}/{rel}"
                try:
                    entry = _hf_entry(root_real, repo, rev, f, rel, base)
                except CorruptEntry as exc:
                    yield exc
                    continue
                key = entry.sha256 or entry.real_path
                if key in seen:
                    continue  # the same bytes in an older snapshot
                if seen:
                    entry = replace(entry, source=f"{base}@{rev.commit_hash}")
                seen.add(key)
                yield entry


def _hf_entry(root_real: Path, repo, rev, f, rel: str, source: str) -> Found:
    if not rel.isprintable():
        raise CorruptEntry(None, f.file_path, "the file name holds control characters")
    if not check_pattern("commit", rev.commit_hash):  # a snapshot directory is named by its commit
        raise CorruptEntry(source, rev.snapshot_path, "the snapshot is not named by a commit")
    real = _resolve(f.file_path, root_real, source, "the snapshot file")
    blobs = Path(os.path.abspath(repo.repo_path / "blobs"))
    if f.file_path.is_symlink():
        hop = Path(f.blob_path)  # the symlink's own target, the first hop
        if hop.parent != blobs:
            raise CorruptEntry(source, f.file_path, "the snapshot file points outside the repository's blobs")
        if check_pattern("sha256", hop.name):
            sha256, note = hop.name, "the blob's name in the Hugging Face cache (the LFS sha256)"
        elif check_pattern("commit", hop.name):  # a non-LFS file's blob is named by its git SHA-1
            sha256, note = None, "none: the cache names this blob by its git SHA-1 (not an LFS file)"
        else:
            raise CorruptEntry(source, f.file_path, f"the blob name {printable(hop.name)!r} is not a hash")
    else:
        sha256, note = None, "none: a copy in the snapshot, not a link to a blob"
    return Found(
        source=source,
        kind=HF_CACHE,
        path=f.file_path,
        real_path=real,
        size=real.stat().st_size,
        sha256=sha256,
        digest_note=note,
        name=default_name(rel),
        file=rel,
        store=root_real,
        repo=repo.repo_id,
        revision=rev.commit_hash,
    )


# -- plain directories -------------------------------------------------------------------------------


def _plain_entries(directory: Path) -> Iterator[Entry]:
    """Every *.gguf under a configured directory (symlinked directories are not followed)."""
    try:
        root_real = directory.resolve(strict=True)
    except (OSError, RuntimeError):
        return
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.lower().endswith(".gguf"):
                continue
            path = Path(dirpath) / fn
            if not str(path).isprintable():
                yield CorruptEntry(None, path, "the file name holds control characters")
                continue
            try:
                real = _resolve(path, root_real, str(path), "the file")
            except CorruptEntry as exc:
                yield exc
                continue
            yield Found(
                source=str(path),
                kind=PLAIN,
                path=path,
                real_path=real,
                size=real.stat().st_size,
                sha256=None,
                digest_note="none: a plain file (import hashes it)",
                name=default_name(fn),
                file=fn,
                store=directory,
            )


# -- discover and lookup -----------------------------------------------------------------------------


def _with_header(found: Found) -> Found:
    try:
        return replace(found, gguf=read_gguf_info(found.real_path))
    except LlmctlError as exc:  # not GGUF, or a hostile header; the reader's messages name the file
        raise CorruptEntry(None if found.kind == PLAIN else found.source, None, printable(exc)) from None
    except OSError as exc:  # a file we may not read is not a corrupt one
        raise OperationFailed(
            f"{found.source}: cannot read {printable(found.real_path)}: {exc.strerror or exc}",
            hint="run as a user who may read that store, or copy the file",
        ) from None


def _stores(paths: list[Path], env: Mapping[str, str] | None) -> list[tuple[str, Path]]:
    stores = [(OLLAMA, r) for r in ollama_roots(env)] + [(HF_CACHE, hf_cache_root(env))]
    return stores + [(PLAIN, Path(p).expanduser()) for p in paths]


def _entries(kind: str, root: Path) -> Iterator[Entry]:
    return {OLLAMA: _ollama_entries, HF_CACHE: _hf_entries, PLAIN: _plain_entries}[kind](root)


def discover(
    paths: list[Path] | tuple = (),
    env: Mapping[str, str] | None = None,
    *,
    stores: list[tuple[str, Path]] | None = None,
) -> Discovery:
    """Every GGUF model in Ollama's store, the HF cache and `paths` (or in `stores`: (kind, root)
    pairs), with its GGUF header. Never raises for what it finds: a corrupt entry is a warning."""
    models: dict[str, Found] = {}
    warnings: list[str] = []
    searched: list[Searched] = []
    for kind, root in _stores(list(paths), env) if stores is None else stores:
        searched.append(Searched(kind, root, root.is_dir()))
        if not root.is_dir():
            continue
        for entry in _entries(kind, root):
            if isinstance(entry, CorruptEntry):
                warnings.append(entry.message)
                continue
            key = entry.source.casefold()
            if key in models:  # the same name in a second Ollama store: import takes the first
                first = models[key]
                if first.sha256 != entry.sha256:
                    warnings.append(
                        f"{entry.source} is in {printable(first.store)} and, with other bytes, in "
                        f"{printable(entry.store)}: import takes the first"
                    )
                continue
            try:
                models[key] = _with_header(entry)
            except LlmctlError as exc:
                warnings.append(exc.message)
    kinds = [OLLAMA, HF_CACHE, PLAIN]
    ordered = sorted(models.values(), key=lambda f: (kinds.index(f.kind), f.source.casefold()))
    return Discovery(tuple(ordered), tuple(warnings), tuple(searched))


def is_source_id(source: str) -> bool:
    return source.startswith((OLLAMA_PREFIX, HF_PREFIX))


def lookup(source: str, env: Mapping[str, str] | None = None) -> Found:
    """The model a source id names, with its GGUF header. NotFound (exit 2) when no store has it;
    CorruptEntry (exit 3) when its entry is corrupt or points outside its store."""
    if source.startswith(OLLAMA_PREFIX):
        rest = source[len(OLLAMA_PREFIX) :]
        if not rest or not rest.isprintable() or ".." in rest or rest.startswith("/"):
            raise UsageError(f"SOURCE {printable(source)!r}: not an Ollama model name (ollama:[namespace/]model[:tag])")
        kind, want = OLLAMA, _normalize_ollama(source)
    elif source.startswith(HF_PREFIX):
        if source.count("/") < 2 or not source.isprintable():
            raise UsageError(
                f"SOURCE {printable(source)!r}: not a Hugging Face cache file (hf-cache:org/repo/file.gguf[@commit])"
            )
        kind, want = HF_CACHE, source
    else:
        raise UsageError(f"SOURCE {printable(source)!r} is not a source id (ollama:... or hf-cache:...)")
    roots = [r for k, r in _stores([], env) if k == kind]
    for root in roots:
        if not root.is_dir():
            continue
        for entry in _entries(kind, root):
            if entry.source is None:
                continue
            if kind == OLLAMA:
                hit = entry.source.casefold() == want
            else:
                hit = want in (entry.source, f"{entry.source}@{entry.revision}" if isinstance(entry, Found) else None)
            if hit:
                if isinstance(entry, CorruptEntry):
                    raise entry
                return _with_header(entry)
    where = ", ".join(printable(r) for r in roots)
    raise NotFound(
        f"{printable(source)}: not found in {where}", hint="`llmctl models discover` lists the source ids on this host"
    )
