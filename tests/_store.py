"""Put the session's assembled smoke model into a test's LLMCTL_HOME without copying it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def link_smoke_store(smoke_store: Path, home: Path) -> dict:
    """Hard-link every model (and its verify stamp) of `smoke_store` into `home`; copy the lock."""
    lock = json.loads((smoke_store / "models.lock").read_text())
    for entry in lock["models"].values():
        src = smoke_store / "models" / entry["path"]
        dst = home / "models" / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        for s, d in ((src, dst), (src.with_name(f".{src.name}.verified"), dst.with_name(f".{dst.name}.verified"))):
            if s.exists() and not d.exists():
                try:
                    os.link(s, d)
                except OSError:
                    shutil.copy2(s, d)
    (home / "models.lock").write_text(json.dumps(lock, indent=2))
    return lock
