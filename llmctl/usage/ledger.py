"""A write-behind usage ledger in SQLite (usage.db in serve's state dir, Paths.serve_state_dir).

`record()` never blocks and never raises: it appends the row to a bounded buffer and returns. One
writer thread drains the buffer in batches, one transaction per batch. A full buffer, or a row the
database refuses (a full disk: SQLITE_FULL, a locked or broken file, a malformed row), becomes a
counted drop (`dropped`), never an error for the request that produced it.

Rows hold no prompt, no output and no API key: the client's key *id* (serve's hash), the route,
the model, token counts, latency, status, cost.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import chain
from pathlib import Path

FILENAME = "usage.db"
COLUMNS = (
    "ts",
    "key_id",
    "client",
    "route",
    "model",
    "endpoint",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
    "error",
    "cost",
)
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
_VALUES = f"({', '.join('?' * len(COLUMNS))})"
_DEFAULTS = {"stream": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0.0, "cost": 0.0}
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES {_VALUES}"
CHUNK = 32  # rows per INSERT statement: one sqlite3_step, so one release of the GIL, per 32 rows
INSERT_CHUNK = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES {', '.join([_VALUES] * CHUNK)}"
BATCH = 2048  # rows per transaction at most


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return sqlite3.connect(_reader_uri(Path(path)), uri=True, timeout=5.0)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # `llmctl usage` reads while serve writes
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    return conn


def _reader_uri(path: Path) -> str:
    """How a reader (`llmctl usage`) opens the ledger without creating a file beside it.

    A read-only open of a WAL database creates its -wal and -shm files when they are missing. A
    reader that is not the ledger's owner (root reading the ledger of a server unit, which runs
    as a dynamic user) would leave files the server can no longer open. So a reader that does not
    own the file opens it read-only only while both files exist (a writer is running, or died:
    nothing is created), and otherwise as immutable (no locks, no -shm): without a -wal file,
    everything written is in the database file itself (SQLite checkpoints and deletes the -wal
    when the last writer closes)."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        owner = path.stat().st_uid
    except OSError:
        return uri  # sqlite3 reports the error
    if owner == os.geteuid():
        return uri
    if all(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-shm")):
        return uri
    return uri + "&immutable=1"


def _row_error(exc: Exception) -> bool:
    """An error of one row (a NULL in a NOT NULL column, a value sqlite3 cannot bind), not of the
    database (full, locked, read-only, broken): only then is the batch retried row by row."""
    return isinstance(
        exc,
        (
            sqlite3.IntegrityError,
            sqlite3.InterfaceError,
            sqlite3.ProgrammingError,
            TypeError,
            ValueError,
            OverflowError,
        ),
    )


class Ledger:
    def __init__(
        self,
        path: Path,
        *,
        maxsize: int = 10_000,
        start: bool = True,
        max_pages: int | None = None,
        on_error: Callable[[Exception], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        """`max_pages` caps the database (SQLite's max_page_count): past it, writes fail as on a full
        disk. `start=False` leaves the writer stopped (tests fill the buffer with it)."""
        self.path = Path(path)
        self.interval = interval  # the writer lets rows gather this long before a transaction
        self.maxsize = maxsize
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        # A deque, not a queue.Queue: append and popleft are atomic under the GIL, so recording a
        # request takes no lock and wakes no thread. Only the first row after the writer went idle
        # sets `_wake` (`_armed` says it is set already): one wake-up per batch, not per request.
        self._rows: deque = deque()
        self._wake = threading.Event()
        self._armed = False
        self._closing = threading.Event()
        self._hurry = threading.Event()  # flush() and close(): write now, do not wait for more rows
        self._idle = threading.Event()  # set by the writer each time it has emptied the buffer
        self._busy = False  # the writer holds rows taken off the deque and not yet written or dropped
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

    def record(self, row: dict | tuple) -> None:
        """A row: a mapping of COLUMNS, or (cheaper, what serve's router sends) a tuple in their order."""
        try:
            if len(self._rows) >= self.maxsize:
                self._drop(1)
                return
            self._rows.append(row)
            if not self._armed:
                self._armed = True
                self._wake.set()
        except Exception:  # noqa: BLE001 - a ledger must never fail a request
            self._drop(1)

    def _drop(self, n: int) -> None:
        with self._drop_lock:
            self.dropped += n

    # -- the writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if len(self._rows) < BATCH:
                self._hurry.wait(self.interval)  # let rows gather: one transaction per interval
            self._wake.clear()
            self._hurry.clear()
            self._armed = False  # before draining: any row appended from here on wakes the writer again
            stopping = self._closing.is_set()  # after clear(): a close() from here on leaves `_wake` set
            while self._rows:
                self._busy = True
                batch = [self._rows.popleft() for _ in range(min(BATCH, len(self._rows)))]
                self._write(batch)
                self._busy = False
            self._idle.set()
            if stopping:
                break
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass

    def _write(self, batch: list) -> None:
        rows = []
        for row in batch:
            if type(row) is not tuple:
                try:
                    row = tuple(row.get(c, _DEFAULTS.get(c)) for c in COLUMNS)
                except Exception as exc:  # noqa: BLE001 - not a mapping: a malformed row
                    self._failed(1, exc)
                    continue
            rows.append(row)
        try:
            with self._conn:
                full = len(rows) - len(rows) % CHUNK
                for i in range(0, full, CHUNK):
                    self._conn.execute(INSERT_CHUNK, list(chain.from_iterable(rows[i : i + CHUNK])))
                if full < len(rows):
                    self._conn.executemany(INSERT, rows[full:])
            self.written += len(rows)
            return
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error (a full disk), a malformed row
            error = exc
        if len(rows) > 1 and _row_error(error):
            for row in rows:  # one bad row must not take the rest of its batch with it
                self._write([row])
            return
        self._failed(len(rows), error)

    def _failed(self, n: int, error: Exception) -> None:
        if not n:
            return
        self._drop(n)
        self.last_error = f"{type(error).__name__}: {error}"
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:  # noqa: BLE001
                pass

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything recorded so far now, and wait until it is written (or dropped)."""
        deadline = time.monotonic() + timeout
        while self._rows or self._busy:
            remaining = deadline - time.monotonic()
            if not self._thread.is_alive() or remaining <= 0:
                return False
            self._idle.clear()
            if not (self._rows or self._busy):  # emptied between the test above and clear()
                break
            self._hurry.set()
            self._wake.set()
            self._idle.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered, then stop the writer."""
        if self._thread.is_alive():
            self._closing.set()
            self._hurry.set()
            self._wake.set()
            self._thread.join(timeout)
        else:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
