"""A local HTTP server that answers like the Hugging Face Hub, for tests and benchmarks.

Real sockets on 127.0.0.1, so the real huggingface_hub client (and `hf download`) talk to it through
HF_ENDPOINT. It serves what the Hub serves for model repos:

    HEAD/GET /{repo}/resolve/{revision}/{file}   X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size,
                                                 Accept-Ranges, Range -> 206 + Content-Range
    GET      /api/models/{repo}[/revision/{rev}] model info: sha, siblings
    POST     /api/models/{repo}/paths-info/{rev} file entries with lfs {oid, size, pointerSize}

and the Hub's error shape (X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound, and
X-Error-Message). Fault switches on `FakeHub.faults` make it misbehave on purpose:

    flip_byte_at   flip one byte of the body at this file offset (headers keep the true hash)
    cut_after      close the connection after this many body bytes of a GET (cut_times GETs, then fine)
    stall_after    stop after this many body bytes of a GET until `release()` (or shutdown)
    require_token  answer 401 unless `Authorization: Bearer <token>`
    ignore_range   answer 200 with the whole file to a Range request
    linked_etag    False: send the LFS hash only through paths-info (ETag is a git blob id)
    bad_content_range  answer a Range request with a 206 whose Content-Range does not match it
    redirect       resolve answers 302 to /cdn/<sha256> (served there, with Range), as the Hub does for LFS

Usage:
    with FakeHub() as hub:
        hub.add("owner/repo", "model.gguf", data_or_path)
        env = {"HF_ENDPOINT": hub.url}
    python -m tests.hubserver FILE [--repo R] [--port P]   # serve one file until Ctrl-C
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    flip_byte_at: int | None = None
    cut_after: int | None = None
    cut_times: int = 1
    stall_after: int | None = None
    require_token: str | None = None
    ignore_range: bool = False
    linked_etag: bool = True
    bad_content_range: bool = False  # a 206 whose Content-Range starts one byte early (body is right)
    redirect: bool = False  # resolve answers 302 to /cdn/<sha256> like the Hub does for LFS files


@dataclass
class HubFile:
    data: bytes | None
    path: Path | None
    size: int
    sha256: str
    git_oid: str

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    files: dict[str, dict[str, HubFile]] = field(default_factory=dict)  # commit -> filename -> file


def _commit_for(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def sha256_of(data_or_path: bytes | Path) -> str:
    if isinstance(data_or_path, (bytes, bytearray)):
        return hashlib.sha256(data_or_path).hexdigest()
    h = hashlib.sha256()
    with open(data_or_path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[dict] = []  # method, path, range, status (for assertions)
        self._stall = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None

    # -- content ------------------------------------------------------------------------------

    def add(
        self, repo: str, filename: str, content: bytes | Path | str, revision: str = "main", sha256: str | None = None
    ) -> str:
        """Publish a file; returns the commit the revision resolves to."""
        r = self.repos.setdefault(repo, Repo())
        commit = r.branches.get(revision) or _commit_for(repo, revision)
        r.branches[revision] = commit
        if isinstance(content, (bytes, bytearray)):
            f = HubFile(bytes(content), None, len(content), sha256 or sha256_of(content), "")
        else:
            p = Path(content)
            f = HubFile(None, p, p.stat().st_size, sha256 or sha256_of(p), "")
        f.git_oid = hashlib.sha1(f"blob {f.sha256}".encode()).hexdigest()  # an LFS pointer's blob id stand-in
        r.files.setdefault(commit, {})[filename] = f
        return commit

    def commit(self, repo: str, revision: str = "main") -> str:
        return self.repos[repo].branches[revision]

    def release(self) -> None:
        self._stall.set()

    def count(self, method: str | None = None, kind: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r["method"] == method) and (kind is None or r["kind"] == kind)
            )

    # -- server -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        # Two listeners: the Hub, and a "CDN" on another port (another origin) that LFS redirects point to.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        for srv in (self._server, self._cdn):
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, name="fake-hub", daemon=True).start()
        return self

    @property
    def cdn_url(self) -> str:
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stall.set()
        for srv in (self._server, self._cdn):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        self._server = self._cdn = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lookups --------------------------------------------------------------------------------

    def lookup(self, repo: str, revision: str) -> tuple[str | None, str | None]:
        """(error code, commit)"""
        r = self.repos.get(repo)
        if r is None:
            return "RepoNotFound", None
        if revision in r.branches:
            return None, r.branches[revision]
        if revision in r.files:
            return None, revision
        return "RevisionNotFound", None


RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
PATHS_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
CDN_RE = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def _record(self, kind: str, status: int) -> None:
        with self.hub._lock:
            self.hub.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "kind": kind,
                    "status": status,
                    "range": self.headers.get("Range"),
                    "auth": self.headers.get("Authorization") is not None,
                }
            )

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, kind: str = "other") -> None:
        self._record(kind, status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, kind: str, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, kind)

    def _authorized(self, kind: str) -> bool:
        token = self.hub.faults.require_token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._error(401, None, "Invalid username or password.", kind)
        return False

    # -- verbs ----------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if (m := RESOLVE_RE.match(path)) and self.command in ("GET", "HEAD"):
                return self._resolve(
                    urllib.parse.unquote(m["repo"]), urllib.parse.unquote(m["rev"]), urllib.parse.unquote(m["file"])
                )
            if (m := CDN_RE.match(path)) and self.command in ("GET", "HEAD"):
                return self._cdn(m["sha"])
            if (m := PATHS_RE.match(path)) and self.command == "POST":
                return self._paths_info(m["repo"], urllib.parse.unquote(m["rev"]))
            if (m := API_RE.match(path)) and self.command == "GET":
                return self._model_info(m["repo"], urllib.parse.unquote(m["rev"] or "main"))
            self._error(404, None, "Not Found", "other")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _model_info(self, repo: str, rev: str) -> None:
        if not self._authorized("api"):
            return
        code, commit = self.hub.lookup(repo, rev)
        if code:
            return self._error(404, code, f"{'Repository' if code == 'RepoNotFound' else 'Revision'} not found", "api")
        files = self.hub.repos[repo].files[commit]
        doc = {
            "_id": commit[:24],
            "id": repo,
            "modelId": repo,
            "sha": commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, "api")

    def _paths_info(self, repo: str, rev: str) -> None:
        if not self._authorized("paths-info"):
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        if "json" in (self.headers.get("Content-Type") or ""):
            paths = json.loads(raw or "{}").get("paths", [])
        else:
            paths = urllib.parse.parse_qs(raw).get("paths", [])
        code, commit = self.hub.lookup(repo, rev)
        if code:
            return self._error(
                404, code, "Repository not found" if code == "RepoNotFound" else "Invalid rev id", "paths-info"
            )
        files = self.hub.repos[repo].files[commit]
        out = []
        for p in paths:
            f = files.get(p)
            if f is not None:
                out.append(
                    {
                        "type": "file",
                        "path": p,
                        "size": f.size,
                        "oid": f.git_oid,
                        "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
                    }
                )
        self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"}, "paths-info")

    def _resolve(self, repo: str, rev: str, filename: str) -> None:
        hub, faults = self.hub, self.hub.faults
        if not self._authorized("resolve"):
            return
        code, commit = hub.lookup(repo, rev)
        if code == "RepoNotFound":
            return self._error(404, code, "Repository not found", "resolve")
        if code == "RevisionNotFound":
            return self._error(404, code, "Invalid rev id: " + rev, "resolve")
        f = hub.repos[repo].files[commit].get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", f'{filename} does not exist on "{rev}"', "resolve", commit)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{f.sha256}"' if faults.linked_etag else f'"{f.git_oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{Path(filename).name}"',
        }
        if faults.linked_etag:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        if faults.redirect:
            headers["Location"] = f"{self.hub.cdn_url}/cdn/{f.sha256}"
            for k in ("Accept-Ranges", "Content-Type", "Content-Disposition"):
                headers.pop(k)
            return self._send(302, b"", headers, "resolve")
        self._serve(f, headers, "resolve")

    def _cdn(self, sha: str) -> None:
        for repo in self.hub.repos.values():
            for files in repo.files.values():
                for f in files.values():
                    if f.sha256 == sha:
                        return self._serve(
                            f,
                            {"ETag": f'"{sha}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"},
                            "cdn",
                        )
        self._error(404, None, "NoSuchKey", "cdn")

    def _serve(self, f: HubFile, headers: dict, kind: str) -> None:
        faults = self.hub.faults
        start, end, status = 0, f.size, 200
        rng = self.headers.get("Range")
        if rng and not faults.ignore_range:
            m = RANGE_RE.match(rng.strip())
            if not m or int(m[1]) >= f.size:
                headers["Content-Range"] = f"bytes */{f.size}"
                return self._error(416, None, "Range Not Satisfiable", kind)
            start = int(m[1])
            end = min(int(m[2]) + 1, f.size) if m[2] else f.size
            status = 206
            shown = start - 1 if faults.bad_content_range and start > 0 else start
            headers["Content-Range"] = f"bytes {shown}-{end - 1}/{f.size}"
        self._record(kind, status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        self._body(f, start, end)

    def _body(self, f: HubFile, start: int, end: int) -> None:
        faults = self.hub.faults
        limit = end  # send [start, limit)
        cut = False
        if faults.cut_after is not None and faults.cut_times > 0:
            with self.hub._lock:
                if faults.cut_times > 0:
                    faults.cut_times -= 1
                    limit = min(end, start + faults.cut_after)
                    cut = True
        stall = faults.stall_after is not None and not self.hub._stall.is_set()
        if stall:
            limit = min(limit, start + faults.stall_after)
        flip = faults.flip_byte_at
        self.wfile.flush()
        if f.path is not None and flip is None:
            with open(f.path, "rb") as fh:
                self._sendfile(fh, start, limit - start)
        else:
            pos = start
            while pos < limit:
                block = bytearray(f.read(pos, min(limit, pos + (4 << 20))))
                if flip is not None and pos <= flip < pos + len(block):
                    block[flip - pos] ^= 0xFF
                self.wfile.write(block)
                pos += len(block)
        if stall:
            self.hub._stall.wait()
            if limit < end and not cut:
                # Released: finish the body (a test kills the client before this, usually).
                with open(f.path, "rb") if f.path else _BytesCtx(f.data) as fh:
                    self._sendfile(fh, limit, end - limit)
                return
        if cut or limit < end:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _sendfile(self, fh, offset: int, count: int) -> None:
        if hasattr(fh, "fileno") and not isinstance(fh, _BytesCtx):
            sock = self.connection
            while count > 0:
                sent = os.sendfile(sock.fileno(), fh.fileno(), offset, min(count, 1 << 30))
                if sent == 0:
                    break
                offset += sent
                count -= sent
        else:
            self.wfile.write(fh.data[offset : offset + count])


class _BytesCtx:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def main() -> None:
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Serve files like the Hugging Face Hub on 127.0.0.1.")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--repo", default="local/models")
    args = ap.parse_args()
    with FakeHub() as hub:
        for p in args.files:
            hub.add(args.repo, p.name, p)
        print(f"HF_ENDPOINT={hub.url}  repo={args.repo}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
