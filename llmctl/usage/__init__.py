"""The usage ledger: one SQLite row per request `llmctl serve` answered (ledger.py), and the
aggregations `llmctl usage` prints (report.py)."""
