"""Reading result files of every format back, and comparing runs: builds, hosts (a fleet), models."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from llmctl.bench import compare as C
from llmctl.bench import llamabench as LB
from llmctl.bench.readers import load_runs, read_file
from llmctl.bench.report import compare_by_run, compare_by_test, compare_csv, difference_lines, render_compare
from llmctl.errors import UsageError

DATA = Path(__file__).resolve().parent.parent / "data" / "llama_bench_0c1e570"


def native_rows(name: str = "run1.json") -> list[dict]:
    return json.loads((DATA / name).read_text())


def write_json(path: Path, rows: list[dict], **change) -> Path:
    path.write_text(json.dumps([{**r, **change} for r in rows]))
    return path


def scaled(rows: list[dict], factor: float, **change) -> list[dict]:
    return [{**r, "avg_ts": r["avg_ts"] * factor, **change} for r in rows]


def full_doc(path: Path, rows: list[dict], hostname: str) -> Path:
    """llmctl's -o json-full shape, as a fleet gathers one per host."""
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "kind": "bench",
                "mode": "engine",
                "host": {"hostname": hostname, "cpu_model": "x"},
                "results": rows,
                "gates": [],
            }
        )
    )
    return path


def test_two_builds_side_by_side(tmp_path):
    rows = native_rows()
    a = write_json(tmp_path / "master.json", rows)
    b = write_json(tmp_path / "branch.json", scaled(rows, 1.25), build_commit="abc1234")
    c = C.compare(load_runs([a, b]))
    assert c.labels == ["master", "branch"]
    assert [r.test for r in c.rows] == ["pp16", "tg4", "pp8+tg2", "pp16 @ d8", "tg4 @ d8", "pp8+tg2 @ d8"]
    assert all(r.speedup(1, 0) == pytest.approx(1.25) for r in c.rows)
    assert dict(c.differences) == {"build_commit": ("0c1e570", "abc1234")}
    head, table, _ = compare_by_test(c)
    assert head == ["Model", "Test", "t/s master", "t/s branch", "Speedup"]  # compare-llama-bench's columns
    assert table[0][:2] == ["gemma3 270M Q4_K_M", "pp16"] and table[0][-1] == "1.25"
    assert difference_lines(c) == ["runs differ in Build: master: 0c1e570, branch: abc1234"]
    assert not [o for o in C.check(c, max_regression=10, min_pp=None, min_tg=None) if not o.passed]


def test_a_regression_fails_the_gate_and_names_the_row(tmp_path):
    rows = native_rows()
    a = write_json(tmp_path / "base.json", rows)
    b = write_json(
        tmp_path / "new.json", [{**r, "avg_ts": r["avg_ts"] * (0.8 if r["n_gen"] == 0 else 1.0)} for r in rows]
    )
    out = C.check(C.compare(load_runs([a, b])), max_regression=10, min_pp=None, min_tg=1e9)
    failed = [o for o in out if not o.passed]
    assert {o.gate for o in failed} == {"--max-regression", "--min-tg"}
    reg = [o for o in failed if o.gate == "--max-regression"]
    assert [o.test for o in reg] == ["pp16", "pp16 @ d8"]
    assert "pp16 on new:" in reg[0].detail and "(-20.0%, allowed -10%)" in reg[0].detail
    assert "vs baseline base " in reg[0].detail
    # --min-tg applies to every run's tg rows, the baseline's too
    assert {o.detail.split(":")[0] for o in failed if o.gate == "--min-tg"} >= {"tg4 on base", "tg4 on new"}


def test_fleet_one_row_per_host(tmp_path):
    """One json-full per host, each run with its own core count: a table with one row per host."""
    rows = native_rows()
    files = [
        full_doc(tmp_path / "web1.json", rows, "web1"),
        full_doc(tmp_path / "web2.json", scaled(rows, 2.0, n_threads=4, cpu_info="Big CPU"), "web2"),
        full_doc(tmp_path / "web3.json", scaled(rows, 0.5, n_threads=1, cpu_info="Small CPU"), "web3"),
    ]
    c = C.compare(load_runs(files))
    assert c.shown == ()  # nothing swept inside a run: threads is what differs between them
    diffs = dict(c.differences)
    assert diffs["n_threads"] == (2, 4, 1) and diffs["cpu_info"] == (
        "Intel(R) Xeon(R) Processor",
        "Big CPU",
        "Small CPU",
    )
    head, table, _ = compare_by_run(c)
    assert head[:4] == ["Run", "Host", "CPU", "Threads"]
    assert head[4:] == ["pp16 t/s", "tg4 t/s", "pp8+tg2 t/s", "pp16 @ d8 t/s", "tg4 @ d8 t/s", "pp8+tg2 @ d8 t/s"]
    assert [r[:4] for r in table] == [
        ["web1", "web1", "Intel(R) Xeon(R) Processor", "2"],
        ["web2", "web2", "Big CPU", "4"],
        ["web3", "web3", "Small CPU", "1"],
    ]
    assert table[1][4].endswith("(2.00x)") and table[2][4].endswith("(0.50x)") and "(" not in table[0][4]
    # strict: the settings must match, so the hosts have nothing in common
    out = C.check(C.compare(load_runs(files), strict=True), max_regression=10, min_pp=None, min_tg=None)
    assert [o.passed for o in out] == [False] and "no row of web2, web3 matches" in out[0].detail
    md = render_compare(c, "md", "run")
    assert md.splitlines()[0].startswith("| Run ") and len(md.splitlines()) == 5
    doc = json.loads(render_compare(c, "json", "run"))
    assert doc["kind"] == "bench-compare" and doc["baseline"] == "web1"
    assert doc["rows"][0]["avg_ts"]["web2"] == pytest.approx(2 * rows[0]["avg_ts"])
    assert doc["rows"][0]["speedup"] == {"web2": pytest.approx(2.0), "web3": pytest.approx(0.5)}
    assert len(compare_csv(c).splitlines()) == 1 + 3 * 6


def test_swept_settings_are_matched_and_shown(tmp_path):
    rows = native_rows()[:2]
    both = rows + [{**r, "n_threads": 1} for r in rows]
    a = write_json(tmp_path / "a.json", both)
    b = write_json(tmp_path / "b.json", scaled(both, 1.1))
    c = C.compare(load_runs([a, b]))
    assert c.shown == ("n_threads",)
    head, table, _ = compare_by_test(c)
    assert head[0] == "Threads" and [r[0] for r in table] == ["2", "2", "1", "1"]
    assert [r.label() for r in c.rows][:2] == ["pp16 (n_threads=2)", "tg4 (n_threads=2)"]


def test_one_database_with_two_builds(tmp_path):
    """`llama-bench -o sql | sqlite3 llama-bench.sqlite`, run for two builds: the usual way."""
    work = tmp_path / "w"
    work.mkdir()
    db = work / "llama-bench.sqlite"
    sql = (DATA / "run2.sql").read_text()
    with sqlite3.connect(db) as conn:
        conn.executescript(sql)
        conn.executescript(
            sql.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE IF NOT EXISTS")
            .replace("'0c1e570'", "'fff0000'")
            .replace("'2026-", "'2027-")
        )
    conn.close()
    runs = load_runs([db])
    assert [r.label for r in runs] == ["llama-bench@0c1e570", "llama-bench@fff0000"]  # oldest first: the baseline
    c = C.compare(runs)
    assert len(c.rows) == 6 and all(r.speedup(1, 0) == pytest.approx(1.0) for r in c.rows)
    assert sorted(p.name for p in work.iterdir()) == ["llama-bench.sqlite"]  # no journal, -wal or -shm


def test_one_run_is_not_a_comparison(tmp_path):
    with pytest.raises(UsageError, match="holds one run"):
        C.compare(load_runs([write_json(tmp_path / "a.json", native_rows())]))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"\xff\xfe\x00garbage", "neither text"),
        (b"hello,world\n1,2\n", "not a benchmark result"),
        (b"[1, 2]", "holds no list of results"),
        (b'{"a": 1}', "holds no list of results"),
        (b'[{"n_prompt": 1, "n_gen": 0}]', "result 1: no avg_ts"),
        (b'[{"n_prompt": 1, "n_gen": 0, "avg_ts": "fast"}]', "avg_ts: 'fast' is not float"),
        (b'{"avg_ts": 1}\n{nope\n', "line 2"),
        (b"CREATE TABLE x (a INT);", "no llama_bench table"),
        (b"SQLite format 3\x00" + b"\x00" * 100, "test.json"),
        (json.dumps({"mode": "endpoint", "results": [{"concurrency": 1, "avg_ts": 1.0}]}).encode(), "endpoint results"),
    ],
)
def test_bad_files_are_usage_errors(tmp_path, content, needle):
    f = tmp_path / "test.json"
    f.write_bytes(content)
    with pytest.raises(UsageError, match=needle):
        load_runs([f])


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE '{dir}/evil.db' AS evil; CREATE TABLE evil.t (a);",
        "VACUUM INTO '{dir}/evil.db';",
        "PRAGMA writable_schema = 1;",
        "CREATE TEMP TABLE llama_bench (avg_ts);",
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) INSERT INTO llama_bench SELECT i FROM r;",
        "INSERT INTO llama_bench VALUES " + ",".join(["(1)"] * 1000) + "; INSERT INTO llama_bench SELECT count(*) "
        "FROM llama_bench a, llama_bench b, llama_bench c;",  # 10^9 rows to count: the step budget ends it
    ],
)
def test_hostile_sql_text_writes_nothing_and_ends(tmp_path, sql):
    work = tmp_path / "w"
    work.mkdir()
    f = work / "evil.sql"
    f.write_text("CREATE TABLE IF NOT EXISTS llama_bench (avg_ts REAL);\n" + sql.format(dir=work))
    with pytest.raises(
        UsageError,
        match=r"evil.sql is not llama-bench's SQL output \((not authorized|authorization denied|interrupted)",
    ):
        read_file(f, "compare")
    assert sorted(p.name for p in work.iterdir()) == ["evil.sql"]


def test_labels_keep_dotted_host_names_and_tell_equal_names_apart(tmp_path):
    rows = native_rows()[:1]
    (tmp_path / "x").mkdir()
    a = write_json(tmp_path / "gpu1.example.com.json", rows)
    b = write_json(tmp_path / "x" / "gpu1.example.com.json", rows)
    assert [r.label for r in load_runs([a, b])] == [str(a), str(b)]
    assert load_runs([a])[0].label == "gpu1.example.com"


def test_fields_stay_in_step_with_the_vendored_compare_script():
    """compare-llama-bench.py's required keys are all in what llmctl writes."""
    from tests.vendor_compare import LLAMA_BENCH_DB_FIELDS, required_keys

    assert set(required_keys()) <= set(LB.FIELDS)
    assert set(LLAMA_BENCH_DB_FIELDS) <= set(LB.FIELDS)
