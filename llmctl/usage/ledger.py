"""A write-behind usage ledger in SQLite (the state dir's usage.db).

`record()` never blocks and never raises: it puts the row on a bounded queue and returns. One
writer thread drains the queue in batches, one transaction per batch. A full queue, or a batch the
database refuses (a full disk: SQLITE_FULL, a locked or broken file), becomes a counted drop
(`dropped`), never an error for the request that produced it.

Rows hold no prompt, no output and no API key: the client's key *id* (serve's hash), the route,
the model, token counts, latency, status, cost.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

FILENAME = "usage.db"
COLUMNS = ("ts", "key_id", "client", "route", "model", "endpoint", "stream", "prompt_tokens",
           "completion_tokens", "latency_ms", "status", "error", "cost")
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,                -- unix time the request finished
    key_id TEXT,                     -- the client's API key id (a hash), never the key
    client TEXT,                     -- the client's address
    route TEXT NOT NULL,             -- local | upstream:<name> | none (refused before routing)
    model TEXT,
    endpoint TEXT,                   -- chat | completion | embedding
    stream INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    status INTEGER NOT NULL,
    error TEXT,
    cost REAL NOT NULL DEFAULT 0     -- USD, from the route's price table when it was served
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""
_STOP = object()
BATCH = 2048


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # `llmctl usage` reads while serve writes
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    return conn


class Ledger:
    def __init__(self, path: Path, *, maxsize: int = 10_000, start: bool = True,
                 max_pages: int | None = None, on_error: Callable[[Exception], None] | None = None,
                 interval: float = 0.1) -> None:
        """`max_pages` caps the database (SQLite's max_page_count): past it, writes fail as on a full
        disk. `start=False` leaves the writer stopped (tests fill the queue with it)."""
        self.path = Path(path)
        self.interval = interval  # the writer gathers rows this long before a transaction
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._on_error = on_error
        self._drop_lock = threading.Lock()
        self._conn = connect(self.path)
        if max_pages is not None:
            self._conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
        self._thread = threading.Thread(target=self._run, name="llmctl-usage-ledger", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    # -- the request's side: never blocks, never raises ---------------------------------------------

    def record(self, row: dict) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._drop(1)
        except Exception:  # noqa: BLE001 - a ledger must never fail a request
            self._drop(1)

    def _drop(self, n: int) -> None:
        with self._drop_lock:
            self.dropped += n

    # -- the writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch = []
            if item is _STOP:
                stop = True
            else:
                batch.append(item)
                if self._queue.qsize() < BATCH:
                    # Let rows gather: one transaction (and one wake-up) per interval, not per request.
                    time.sleep(self.interval)
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)
            for _ in range(len(batch) + (1 if stop else 0)):
                self._queue.task_done()
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass

    def _write(self, batch: list[dict]) -> None:
        sql = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        try:
            with self._conn:
                self._conn.executemany(sql, [tuple(row.get(c) for c in COLUMNS) for row in batch])
            self.written += len(batch)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error (full disk), bad row: a counted drop
            self._drop(len(batch))
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._on_error is not None:
                try:
                    self._on_error(exc)
                except Exception:  # noqa: BLE001
                    pass

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or dropped)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        else:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
