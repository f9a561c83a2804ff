"""llmctl bench writes llama-bench's formats byte for byte.

The fixtures in tests/data/llama_bench_0c1e570/ are the output of llama.cpp's own llama-bench (built
by benchmarks/llamacpp_build.py from the llama.cpp that llama-cpp-python 0.3.36 vendors) on the smoke
model, three runs with `-p 16 -n 4 -pg 8,2 -d 0,8 -r 2 -t 2 --repack 0 -fa 0 -ngl 0`, each written in
two formats at once (`-o X -oe Y`): run1 json + jsonl, run2 csv + sql, run3 md + json.

From a run's samples, llmctl's EngineResult computes the same statistics and its writers the same text.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from llmctl.bench import llamabench as LB
from llmctl.bench.readers import engine_rows, read_file
from llmctl.bench.results import EngineResult

DATA = Path(__file__).resolve().parent.parent / "data" / "llama_bench_0c1e570"


def results_from(json_file: Path) -> list[EngineResult]:
    """EngineResults holding what llmctl measures (the samples) and knows (the model, the settings)."""
    out = []
    for rec in json.loads(json_file.read_text()):
        out.append(
            EngineResult(
                build_commit=rec["build_commit"],
                build_number=rec["build_number"],
                cpu_info=rec["cpu_info"],
                gpu_info=rec["gpu_info"],
                backends=rec["backends"],
                model_filename=rec["model_filename"],
                model_type=rec["model_type"],
                model_size=rec["model_size"],
                model_n_params=rec["model_n_params"],
                n_batch=rec["n_batch"],
                n_ubatch=rec["n_ubatch"],
                n_threads=rec["n_threads"],
                type_k=rec["type_k"],
                type_v=rec["type_v"],
                n_gpu_layers=rec["n_gpu_layers"],
                flash_attn=rec["flash_attn"],
                n_ctx=rec["n_prompt"] + rec["n_gen"] + rec["n_depth"],
                n_prompt=rec["n_prompt"],
                n_gen=rec["n_gen"],
                n_depth=rec["n_depth"],
                repack=rec["repack"],
                test_time=rec["test_time"],
                samples_ns=tuple(rec["samples_ns"]),
                split_mode=rec["split_mode"],
                load_mode=rec["load_mode"],
                lazy_mode=rec["lazy_mode"],
            )
        )
    return out


@pytest.mark.parametrize(
    ("source", "fmt", "writer"),
    [
        ("run1.json", "run1.json", LB.to_json),
        ("run1.json", "run1.jsonl", LB.to_jsonl),
        ("run3.json", "run3.json", LB.to_json),
        ("run3.json", "run3.md", lambda rows: LB.to_markdown(rows)),
    ],
)
def test_same_text_as_llama_bench_from_the_same_samples(source, fmt, writer):
    results = results_from(DATA / source)
    assert [r.test for r in results] == ["pp16", "tg4", "pp8+tg2", "pp16 @ d8", "tg4 @ d8", "pp8+tg2 @ d8"]
    assert writer([r.row() for r in results]) == (DATA / fmt).read_text()


@pytest.mark.parametrize(("fmt", "writer"), [("csv", LB.to_csv), ("sql", LB.to_sql)])
def test_csv_and_sql_text_as_llama_bench(fmt, writer):
    """run2 has no samples in these formats: its rows, read back, are written out the same."""
    rows = engine_rows(read_file(DATA / "run2.csv", "test"), "test")
    assert writer(rows) == (DATA / f"run2.{fmt}").read_text()


def test_every_format_reads_back_the_same_rows(tmp_path):
    by_format = {}
    for name in ("run2.csv", "run2.sql"):
        f = read_file(DATA / name, "test")
        by_format[f.format] = engine_rows(f, "test")
    db = tmp_path / "llama-bench.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript((DATA / "run2.sql").read_text())
    conn.close()
    f = read_file(db, "test")
    assert f.format == "sqlite"
    by_format["sqlite"] = engine_rows(f, "test")
    assert by_format["csv"] == by_format["sql"] == by_format["sqlite"]
    assert len(by_format["csv"]) == 6
    row = by_format["csv"][3]
    assert (row["n_prompt"], row["n_gen"], row["n_depth"], row["repack"], row["flash_attn"]) == (16, 0, 8, False, 0)
    # json and jsonl of the same run agree too
    assert engine_rows(read_file(DATA / "run1.json", "t"), "t") == engine_rows(read_file(DATA / "run1.jsonl", "t"), "t")
    assert not any(p.name.startswith("llama-bench.sqlite-") for p in tmp_path.iterdir())  # nothing written beside


def test_statistics_are_llama_benchs():
    for rec, r in zip(json.loads((DATA / "run1.json").read_text()), results_from(DATA / "run1.json")):
        assert (r.avg_ns, r.stddev_ns) == (rec["avg_ns"], rec["stddev_ns"])
        assert f"{r.avg_ts:f}" == f"{rec['avg_ts']:f}" and f"{r.stddev_ts:f}" == f"{rec['stddev_ts']:f}"


def test_hostile_strings_stay_valid():
    """Quotes, control characters and non-ASCII in a path: JSON stays JSON, CSV stays CSV, SQL stays one
    INSERT per row (llama-bench itself does not double the SQL quote)."""
    r = results_from(DATA / "run1.json")[0]
    row = {**r.row(), "model_filename": '/m/it\'s "x"\n\u00e9.gguf'}
    assert json.loads(LB.to_json([row]))[0]["model_filename"] == row["model_filename"]
    assert json.loads(LB.to_jsonl([row]))["model_filename"] == row["model_filename"]
    conn = sqlite3.connect(":memory:")
    conn.executescript(LB.to_sql([row]))
    assert conn.execute("SELECT model_filename FROM llama_bench").fetchall() == [(row["model_filename"],)]
    import csv
    import io

    got = list(csv.DictReader(io.StringIO(LB.to_csv([row]))))
    assert got[0]["model_filename"] == row["model_filename"]


def test_normalize_names_the_bad_field():
    with pytest.raises(ValueError, match="n_threads"):
        LB.normalize({"avg_ts": 1.0, "n_prompt": 1, "n_gen": 0, "n_threads": "many"})
    with pytest.raises(ValueError, match="avg_ts"):
        LB.normalize({"n_prompt": 1, "n_gen": 0})
    row = LB.normalize({"avg_ts": "2.5", "n_prompt": "16", "n_gen": "0", "flash_attn": True, "repack": "false"})
    assert (row["avg_ts"], row["n_prompt"], row["flash_attn"], row["repack"], row["n_ubatch"]) == (
        2.5,
        16,
        1,
        False,
        512,
    )
