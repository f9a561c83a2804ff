"""`llmctl usage`: --json, --csv, --by, --since, against a ledger written by the real Ledger."""

from __future__ import annotations

import csv
import io
import json
import time

from llmctl.usage.ledger import FILENAME, Ledger


def fill(home, now: float) -> None:
    ledger = Ledger(home / "state" / FILENAME)
    for i in range(4):
        ledger.record(
            {
                "ts": now - 100,
                "key_id": "key-one",
                "client": "127.0.0.1",
                "route": "local",
                "model": "smoke",
                "endpoint": "chat",
                "stream": False,
                "prompt_tokens": 20,
                "completion_tokens": 10,
                "latency_ms": 50.0 + i,
                "status": 200,
                "error": None,
                "cost": 0.0,
            }
        )
    for _ in range(2):
        ledger.record(
            {
                "ts": now - 50,
                "key_id": None,
                "client": "10.0.0.9",
                "route": "upstream:cloud",
                "model": "gpt-x",
                "endpoint": "chat",
                "stream": True,
                "prompt_tokens": 1000,
                "completion_tokens": 1000,
                "latency_ms": 300.0,
                "status": 200,
                "error": None,
                "cost": 0.002 + 0.006,
            }
        )
    ledger.record(
        {
            "ts": now - 30 * 86400,
            "key_id": "key-old",
            "client": "127.0.0.1",
            "route": "local",
            "model": "smoke",
            "endpoint": "chat",
            "stream": False,
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "latency_ms": 1.0,
            "status": 200,
            "error": None,
            "cost": 0.0,
        }
    )
    ledger.close()


def test_json_by_provider_with_savings(home, write_config, llmctl):
    write_config("routing:\n  reference_price_in_per_1k: 0.01\n  reference_price_out_per_1k: 0.03\n")
    fill(home, time.time())
    r = llmctl("usage", "--by", "provider", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "usage" and doc["schema_version"] == 1 and doc["by"] == "provider"
    rows = {row["group"]: row for row in doc["rows"]}
    assert rows["local"]["requests"] == 4 and rows["local"]["prompt_tokens"] == 80
    assert rows["upstream:cloud"]["cost_usd"] == 0.016
    total = doc["total"]
    assert total["requests"] == 6 and total["success_rate"] == 1.0
    reference = (80 + 2000) / 1000 * 0.01 + (40 + 2000) / 1000 * 0.03
    assert total["reference_cost_usd"] == round(reference, 6)
    assert round(total["savings_usd"], 2) == round(reference - 0.016, 2)


def test_csv_by_key_and_since_all(home, llmctl):
    fill(home, time.time())
    r = llmctl("usage", "--by", "key", "--since", "all", "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["group"] for row in rows] == ["ip:10.0.0.9", "key-old", "key-one", "total"]
    assert rows[-1]["requests"] == "7"


def test_table_by_day_and_model(home, llmctl):
    fill(home, time.time())
    r = llmctl("usage", "--by", "model")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["model", "requests"]
    assert any(line.startswith("gpt-x") and " 2 " in line for line in lines)
    assert lines[-1].startswith("total")
    r = llmctl("usage", "--by", "day", "--json")
    assert sum(row["requests"] for row in json.loads(r.stdout)["rows"]) == 6


def test_no_ledger_yet_and_bad_flags(llmctl):
    r = llmctl("usage", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["total"]["requests"] == 0
    r = llmctl("usage")
    assert r.returncode == 0 and "no usage recorded yet" in r.stderr
    r = llmctl("usage", "--by", "week")
    assert r.returncode == 2 and "Error: --by" in r.stderr
    r = llmctl("usage", "--since", "soon")
    assert r.returncode == 2 and "Error: --since" in r.stderr
    r = llmctl("usage", "--json", "--csv")
    assert r.returncode == 2
