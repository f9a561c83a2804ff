"""llmctl bench beside llama.cpp's own llama-bench, built from the llama.cpp that the installed
llama-cpp-python vendors and linked against its libraries (benchmarks/llamacpp_build.py; cached in
~/.cache/llmctl-bench, the first build takes a few minutes on two cores).

Same model, same settings: the rows must agree on every setting and on the build, so that llama.cpp's
compare-llama-bench.py joins them, and `llmctl bench compare --strict` matches every row. (The
figures themselves are compared in benchmarks/bench_engine.py --llama-bench, not here.)
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from llmctl.bench import llamabench as LB
from tests.vendor_compare import LLAMA_BENCH_KEY_PROPERTIES, run_compare

pytestmark = [pytest.mark.model, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARGS = ["-p", "8", "-n", "2", "-pg", "4,2", "-d", "0,4", "-r", "1", "-t", "2"]


def _load_builder():
    spec = importlib.util.spec_from_file_location("llamacpp_build", REPO / "benchmarks" / "llamacpp_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_bench() -> tuple[Path, list[str]]:
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler to build llama-bench")
    builder = _load_builder()
    return builder.build_llama_bench(), builder.llama_bench_repack_args()


def _sqlite(db: Path, sql: str) -> None:
    """`... -o sql | sqlite3 db`, as llama.cpp documents it."""
    if shutil.which("sqlite3"):
        subprocess.run(["sqlite3", str(db)], input=sql, text=True, check=True)
    else:
        with sqlite3.connect(db) as conn:
            conn.executescript(sql)
        conn.close()


def test_native_llama_bench_and_llmctl_rows_agree(llama_bench, llmctl, smoke_model, tmp_path):
    binary, repack = llama_bench
    native: dict[str, str] = {}
    ours: dict[str, str] = {}
    for fmt in ("json", "sql"):
        n = subprocess.run(
            [str(binary), "-m", str(smoke_model), *ARGS, "-ngl", "0", "-fa", "0", *repack, "-o", fmt],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert n.returncode == 0, n.stderr
        native[fmt] = n.stdout
        r = llmctl("bench", str(smoke_model), *ARGS, "-o", fmt, "-q", timeout=600)
        assert r.returncode == 0, r.stderr
        ours[fmt] = r.stdout

    theirs_rows, our_rows = json.loads(native["json"]), json.loads(ours["json"])
    assert [list(x) for x in our_rows] == [list(x) for x in theirs_rows]  # the same keys, in the same order
    assert len(our_rows) == 6
    timing = {"test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts"}
    for a, b in zip(our_rows, theirs_rows):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert set(LLAMA_BENCH_KEY_PROPERTIES) <= set(LB.FIELDS)

    # compare-llama-bench joins the two on every key property: give llmctl's rows a build of their own
    commit = theirs_rows[0]["build_commit"]
    marker = "llmctl0"[: len(commit)].ljust(len(commit), "0")
    (tmp_path / "native.json").write_text(native["json"])
    (tmp_path / "llmctl.json").write_text(
        ours["json"].replace(f'"build_commit": "{commit}"', f'"build_commit": "{marker}"')
    )
    db = tmp_path / "llama-bench.sqlite"
    _sqlite(db, native["sql"])
    _sqlite(db, ours["sql"].replace(f"VALUES ('{commit}'", f"VALUES ('{marker}'"))
    for inputs in ([tmp_path / "native.json", tmp_path / "llmctl.json"], [db]):
        out = run_compare(inputs, commit, marker, tmp_path)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert f"t/s {commit}" in lines[0] and f"t/s {marker}" in lines[0]
        tests = sorted(line.split("|")[-5].strip() for line in lines[2:])
        assert tests == sorted(["pp8", "tg2", "pp4+tg2", "pp8@d4", "tg2@d4", "pp4+tg2@d4"]), out.stdout

    # llmctl's own compare, strict: every row of one has its twin in the other
    (tmp_path / "native.sql").write_text(native["sql"])
    (tmp_path / "ours.json").write_text(ours["json"])
    c = llmctl(
        "bench",
        "compare",
        str(tmp_path / "native.sql"),
        str(tmp_path / "ours.json"),
        "--strict",
        "--max-regression",
        "100",
        "--json",
    )
    assert c.returncode == 0, c.stderr
    doc = json.loads(c.stdout)
    assert len(doc["rows"]) == 6 and all(len(row["speedup"]) == 1 and row["speedup"]["ours"] for row in doc["rows"])
    assert doc["differences"] == {}
