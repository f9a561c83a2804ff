"""The usage ledger (write-behind, counted drops) and its aggregations."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time

import pytest

from llmctl.errors import UsageError
from llmctl.usage.ledger import FILENAME, Ledger
from llmctl.usage.report import parse_since, percentile, summarize


def row(**kw) -> dict:
    base = {
        "ts": time.time(),
        "key_id": "key-aaa",
        "client": "127.0.0.1",
        "route": "local",
        "model": "smoke",
        "endpoint": "chat",
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 100.0,
        "status": 200,
        "error": None,
        "cost": 0.0,
    }
    base.update(kw)
    return base


def test_rows_are_written_behind_and_read_back(tmp_path):
    ledger = Ledger(tmp_path / FILENAME)
    for i in range(50):
        ledger.record(row(latency_ms=float(i + 1)))
    assert ledger.flush(10)
    ledger.close()
    assert ledger.written == 50 and ledger.dropped == 0
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        assert conn.execute("SELECT count(*), sum(prompt_tokens) FROM requests").fetchone() == (50, 500)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    assert not any("secret" in c or c == "api_key" for c in cols)


def test_a_full_queue_is_a_counted_drop_and_never_blocks(tmp_path):
    ledger = Ledger(tmp_path / FILENAME, maxsize=3, start=False)  # the writer is not running
    for _ in range(5):
        ledger.record(row())  # returns at once
    assert ledger.dropped == 2
    ledger.start()
    assert ledger.flush(10)
    ledger.close()
    assert ledger.written == 3


def test_a_full_database_is_a_counted_drop(tmp_path):
    """SQLITE_FULL, as on a full disk: max_page_count caps the file."""
    errors = []
    ledger = Ledger(tmp_path / FILENAME, max_pages=8, on_error=errors.append)
    for _ in range(20):
        for _ in range(200):
            ledger.record(row(model="m" * 200))
        ledger.flush(10)
    ledger.close()
    assert ledger.dropped > 0 and ledger.written + ledger.dropped == 4000
    assert "full" in (ledger.last_error or "")
    assert errors and isinstance(errors[0], sqlite3.Error)


def test_an_unwritable_row_is_dropped_not_raised(tmp_path):
    ledger = Ledger(tmp_path / FILENAME)
    ledger.record(row(status=None))  # NOT NULL: the batch fails
    ledger.record(object())  # not a mapping at all
    ledger.flush(10)
    ledger.record(row())
    ledger.flush(10)
    ledger.close()
    assert ledger.written == 1 and ledger.dropped == 2


def test_a_bad_row_does_not_take_its_batch_with_it(tmp_path):
    ledger = Ledger(tmp_path / FILENAME, start=False)  # all five rows land in one batch
    for i in range(5):
        ledger.record(row(status=None) if i == 2 else row())
    ledger.start()
    assert ledger.flush(10)
    ledger.close()
    assert (ledger.written, ledger.dropped) == (4, 1)
    assert "NOT NULL" in (ledger.last_error or "")


def test_a_locked_database_drops_the_batch_once_not_row_by_row(tmp_path):
    """A lock held past SQLite's 5 s busy timeout fails the whole batch: one wait, a counted drop
    (retrying each row would wait 5 s per row)."""
    ledger = Ledger(tmp_path / FILENAME, start=False)
    holder = sqlite3.connect(tmp_path / FILENAME)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(4):
            ledger.record(row())
        ledger.start()
        assert ledger.flush(15)
    finally:
        holder.rollback()
        holder.close()
    assert (ledger.written, ledger.dropped) == (0, 4) and "locked" in (ledger.last_error or "")
    ledger.record(row())  # the lock is gone: writing resumes
    assert ledger.flush(10)
    ledger.close()
    assert ledger.written == 1


def _waits_on(thread: threading.Thread, event: threading.Event) -> bool:
    """True while `thread` is blocked in `event.wait()` (its stack, read from outside)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_locals.get("self") is event:
            return True
        frame = frame.f_back
    return False


def test_close_writes_what_is_buffered(tmp_path):
    ledger = Ledger(tmp_path / FILENAME, interval=30)  # the writer would wait 30 s for more rows
    for _ in range(7):
        ledger.record(row())
    deadline = time.monotonic() + 10  # the case under test: the writer inside its 30 s wait
    while not _waits_on(ledger._thread, ledger._hurry):
        assert time.monotonic() < deadline, "the writer never reached its wait for more rows"
        time.sleep(0.005)
    ledger.close()  # joins the writer for at most 5 s: nothing written unless close cut the wait short
    assert ledger.written == 7


def test_summary_counts_tokens_latency_cost_and_savings(tmp_path):
    now = time.time()
    ledger = Ledger(tmp_path / FILENAME)
    for i in range(10):  # local: 10 requests, one failed
        ledger.record(
            row(
                ts=now - 60,
                latency_ms=float(10 * (i + 1)),
                status=503 if i == 9 else 200,
                prompt_tokens=0 if i == 9 else 100,
                completion_tokens=0 if i == 9 else 50,
            )
        )
    for _ in range(3):  # a cloud upstream: 1000 in, 500 out at $0.5 / $1.5 per 1K
        ledger.record(
            row(
                ts=now - 30,
                route="upstream:cloud",
                model="gpt-x",
                key_id="key-bbb",
                prompt_tokens=1000,
                completion_tokens=500,
                cost=1000 / 1000 * 0.5 + 500 / 1000 * 1.5,
            )
        )
    ledger.record(row(ts=now - 10 * 86400))  # outside a 7-day window
    ledger.close()

    report = summarize(
        tmp_path, since=now - 7 * 86400, by="provider", reference_in_per_1k=1.0, reference_out_per_1k=2.0
    )
    by = {r.group: r for r in report.rows}
    assert set(by) == {"local", "upstream:cloud"}
    local, cloud = by["local"], by["upstream:cloud"]
    assert (local.requests, local.succeeded, local.prompt_tokens, local.completion_tokens) == (10, 9, 900, 450)
    assert local.p50_ms == 50.0 and local.p95_ms == 100.0 and local.cost == 0.0
    assert local.reference_cost == pytest.approx(0.9 + 0.9)
    assert round(cloud.cost, 2) == 3.75 and round(cloud.savings, 2) == round(3 * (1.0 + 1.0) - 3.75, 2)
    total = report.total
    assert total.requests == 13 and round(total.cost, 2) == 3.75
    assert total.success_rate == pytest.approx(12 / 13)

    everything = summarize(tmp_path, since=None, by=None)
    assert everything.rows == () and everything.total.requests == 14
    keys = {r.group for r in summarize(tmp_path, since=None, by="key").rows}
    assert keys == {"key-aaa", "key-bbb"}
    models = {r.group: r.requests for r in summarize(tmp_path, since=None, by="model").rows}
    assert models == {"smoke": 11, "gpt-x": 3}
    days = summarize(tmp_path, since=None, by="day").rows
    assert sum(r.requests for r in days) == 14 and all(len(r.group) == 10 for r in days)


def test_no_ledger_is_an_empty_report(tmp_path):
    report = summarize(tmp_path, since=None, by="day")
    assert report.rows == () and report.total.requests == 0 and report.total.success_rate is None


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("all", now) is None
    assert parse_since("1970-01-02", now) == 86400.0
    with pytest.raises(UsageError, match="--since"):
        parse_since("yesterday", now)
    with pytest.raises(UsageError, match="--by"):
        summarize(__import__("pathlib").Path("/nonexistent"), since=None, by="week")


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([1.0], 95) == 1.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the ledger to another user")


def _give_away(directory, uid: int = 4242) -> None:
    for p in directory.iterdir():
        os.chown(p, uid, uid)


@needs_root
def test_root_reading_a_closed_ledger_creates_no_file(tmp_path):
    """`sudo llmctl usage` against a server unit's ledger (owned by its dynamic user): a -wal or
    -shm file left by root would lock the server out of its own ledger."""
    tmp_path = tmp_path / "serve"  # the server unit's StateDirectory=
    ledger = Ledger(tmp_path / FILENAME)
    for _ in range(4):
        ledger.record(row())
    ledger.close()
    _give_away(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    report = summarize(tmp_path, since=None, by=None)
    assert report.total.requests == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


@needs_root
def test_root_reads_what_a_running_writer_has_only_in_its_wal(tmp_path):
    tmp_path = tmp_path / "serve"
    ledger = Ledger(tmp_path / FILENAME)
    try:
        for _ in range(3):
            ledger.record(row())
        assert ledger.flush(10)
        _give_away(tmp_path)
        before = sorted(p.name for p in tmp_path.iterdir())
        assert before == [FILENAME, FILENAME + "-shm", FILENAME + "-wal"]
        assert summarize(tmp_path, since=None, by=None).total.requests == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        assert all(p.stat().st_uid == 4242 for p in tmp_path.iterdir())
    finally:
        ledger.close()
