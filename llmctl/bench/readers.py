"""Reading benchmark results back: llmctl's own files and llama-bench's alike.

One reader for `--baseline` and `llmctl bench compare`. The format is told from the content, not the
file name: llama-bench's (and llmctl's) `-o json` array, `jsonl` lines, `csv`, the `-o sql` text, a
SQLite database made from it (`| sqlite3 llama-bench.sqlite`), and llmctl's `-o json-full` document
(rows under "results", with the host record).

These files may come from anywhere (a CI artifact, another host), so reading one never writes a
file: a database is opened read-only and immutable (no journal, no -wal or -shm beside it), and SQL
text runs in an in-memory database that may only create tables and insert rows, with a step budget
and a size cap. A file that cannot be read is a UsageError naming it.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.bench import llamabench as LB
from llmctl.errors import UsageError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQL_STEPS = 20_000_000  # SQLite VM steps for a file's SQL text (6000 llama-bench rows take a fraction)
_SQL_PAGES = 65_536  # pages of 4 KiB: 256 MiB of rows at most


@dataclass(frozen=True)
class ResultFile:
    """The rows of one file as read (JSON types, or strings from CSV and SQL), and what it says besides."""

    path: str
    format: str  # json, json-full, jsonl, csv, sql, sqlite
    rows: tuple[dict[str, Any], ...]
    host: dict[str, Any] | None = None  # json-full only
    mode: str = "engine"  # or "endpoint" (llmctl bench --url)


@dataclass(frozen=True)
class Run:
    """The engine rows of one benchmark run: one file, one build, one host (normalized rows)."""

    label: str
    source: str
    rows: tuple[dict[str, Any], ...]
    host: dict[str, Any] | None = field(default=None, compare=False)

    def value(self, prop: str) -> Any:
        """The value of a property that is the same in every row; None when it varies."""
        values = {r[prop] for r in self.rows}
        return next(iter(values)) if len(values) == 1 else None


def read_file(path: Path, flag: str) -> ResultFile:
    """Read one result file of any supported format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith(_SQLITE_MAGIC):
        return ResultFile(str(path), "sqlite", tuple(_sqlite_rows(path, flag)))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {path} is neither text (UTF-8) nor a SQLite database") from None
    head = text.lstrip()[:32].upper()
    if not head:
        raise UsageError(f"{flag}: {path} is empty")
    if head.startswith(("[", "{")):
        return _json_file(path, text, flag)
    if head.startswith(("CREATE TABLE", "INSERT INTO", "BEGIN", "PRAGMA")):
        return ResultFile(str(path), "sql", tuple(_sql_rows(path, text, flag)))
    return _csv_file(path, text, flag)


def _json_file(path: Path, text: str, flag: str) -> ResultFile:
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{flag}: {path} is not JSON or JSON lines ({exc.msg}, line {n})") from None
        return ResultFile(str(path), "jsonl", _dicts(rows, path, flag))
    if isinstance(doc, list):
        return ResultFile(str(path), "json", _dicts(doc, path, flag))
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):
        host = doc.get("host") if isinstance(doc.get("host"), dict) else None
        mode = "endpoint" if doc.get("mode") == "endpoint" else "engine"
        return ResultFile(str(path), "json-full", _dicts(doc["results"], path, flag), host, mode)
    if isinstance(doc, dict) and "avg_ts" in doc:  # one jsonl line
        return ResultFile(str(path), "jsonl", (doc,))
    raise UsageError(f"{flag}: {path} holds no list of results")


def _dicts(rows: list[Any], path: Path, flag: str) -> tuple[dict[str, Any], ...]:
    if not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{flag}: {path} holds no list of results")
    return tuple(rows)


def _csv_file(path: Path, text: str, flag: str) -> ResultFile:
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = [dict(r) for r in reader]
    except csv.Error as exc:
        raise UsageError(f"{flag}: {path} is not CSV ({exc})") from None
    if not reader.fieldnames or "avg_ts" not in reader.fieldnames:
        raise UsageError(
            f"{flag}: {path} is not a benchmark result (JSON, JSON lines, CSV with avg_ts, "
            "llama-bench's SQL or a SQLite database)"
        )
    if any(None in r for r in rows):
        raise UsageError(f"{flag}: {path}: a CSV line has more values than the header")
    return ResultFile(str(path), "csv", tuple(rows))


def _table_rows(conn: sqlite3.Connection, path: Path, flag: str) -> list[dict[str, Any]]:
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "llama_bench" not in names:
        raise UsageError(f"{flag}: {path} has no llama_bench table (tables: {', '.join(sorted(names)) or 'none'})")
    cur = conn.execute("SELECT * FROM llama_bench")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _sqlite_rows(path: Path, flag: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"{flag}: cannot open {path}: {exc}") from None
    try:
        return _table_rows(conn, path, flag)
    except sqlite3.Error as exc:
        raise UsageError(f"{flag}: {path}: {exc}") from None
    finally:
        conn.close()


_SQL_ALLOWED = {
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_TRANSACTION,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_FUNCTION,
}


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action not in _SQL_ALLOWED:
        return sqlite3.SQLITE_DENY
    if db not in (None, "main"):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in ("load_extension", "readfile", "writefile"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sql_rows(path: Path, text: str, flag: str) -> list[dict[str, Any]]:
    """llama-bench's `-o sql` text, run in a throw-away in-memory database."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA max_page_count = {_SQL_PAGES}")
        steps = [0]

        def budget() -> int:
            steps[0] += 1
            return 1 if steps[0] * 1000 > _SQL_STEPS else 0

        conn.set_progress_handler(budget, 1000)
        conn.set_authorizer(_authorize)
        try:
            conn.executescript(text)
            return _table_rows(conn, path, flag)
        except sqlite3.Error as exc:
            raise UsageError(f"{flag}: {path} is not llama-bench's SQL output ({exc})") from None
    finally:
        conn.close()


# -- runs ---------------------------------------------------------------------------------------------


def engine_rows(f: ResultFile, flag: str) -> list[dict[str, Any]]:
    """Every row of an engine result file, normalized (llamabench.normalize)."""
    if f.mode == "endpoint" or any("concurrency" in r for r in f.rows):
        raise UsageError(
            f"{flag}: {f.path} holds endpoint results (llmctl bench --url), not llama-bench rows",
            hint="compare endpoint runs with: llmctl bench --url ... --baseline FILE",
        )
    out = []
    for i, rec in enumerate(f.rows, 1):
        try:
            out.append(LB.normalize(rec))
        except ValueError as exc:
            raise UsageError(f"{flag}: {f.path}: result {i}: {exc}") from None
    if not out:
        raise UsageError(f"{flag}: {f.path} holds no results")
    return out


def split_runs(f: ResultFile, label: str, flag: str) -> list[Run]:
    """A file's rows as runs: one per build and host (a SQLite database gathers many)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in engine_rows(f, flag):
        groups.setdefault((row["build_commit"], *(row[h] for h in LB.HOST_FIELDS)), []).append(row)
    ordered = sorted(groups.items(), key=lambda kv: min(r["test_time"] for r in kv[1]))
    if len(ordered) == 1:
        return [Run(label, f.path, tuple(ordered[0][1]), f.host)]
    commits = {k[0] for k, _ in ordered}
    runs = []
    for i, (k, rows) in enumerate(ordered, 1):
        suffix = f"@{k[0]}" if len(commits) == len(ordered) else f"#{i}"
        runs.append(Run(label + suffix, f.path, tuple(rows), f.host))
    return runs


_SUFFIXES = {".json", ".jsonl", ".csv", ".sql", ".sqlite", ".sqlite3", ".db", ".txt"}


def load_runs(paths: list[Path], flag: str = "compare") -> list[Run]:
    """The runs of several files, in the order given; labels are the file names (without .json etc.),
    the whole path where two names are the same."""
    stems = [p.stem if p.suffix.lower() in _SUFFIXES else p.name for p in paths]
    runs: list[Run] = []
    for path, stem in zip(paths, stems):
        label = stem if stems.count(stem) == 1 else str(path)
        runs += split_runs(read_file(path, flag), label, flag)
    return runs
