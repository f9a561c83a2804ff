"""Where llmctl keeps its state.

Precedence: LLMCTL_HOME (everything under one directory, used by tests and portable installs),
else system mode (running as root, or --system): /etc/llmctl, /var/lib/llmctl, /var/cache/llmctl,
else the user's XDG directories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_CONFIG_DIR = Path("/etc/llmctl")
SYSTEM_DATA_DIR = Path("/var/lib/llmctl")
SYSTEM_CACHE_DIR = Path("/var/cache/llmctl")
# System mode: what `llmctl serve` writes (the usage ledger) has a directory of its own, the server
# units' StateDirectory=, because they run as a dynamic user while the health check's state
# directory belongs to the static user llmctl-health.
SYSTEM_SERVE_STATE_DIR = SYSTEM_DATA_DIR / "serve"


@dataclass(frozen=True)
class Paths:
    mode: str  # "home" | "system" | "user"
    config_dir: Path
    data_dir: Path
    state_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def serve_state_dir(self) -> Path:
        """Where `llmctl serve` writes (usage.db) and `llmctl usage` reads."""
        return SYSTEM_SERVE_STATE_DIR if self.mode == "system" else self.state_dir

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def lockfile(self) -> Path:
        return self.data_dir / "models.lock"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def is_system_mode(system: bool | None = None) -> bool:
    if system is not None:
        return system
    if os.environ.get("LLMCTL_SYSTEM", "").lower() in ("1", "true", "yes"):
        return True
    return hasattr(os, "geteuid") and os.geteuid() == 0


def resolve_paths(system: bool | None = None) -> Paths:
    home = os.environ.get("LLMCTL_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths("home", root, root, root / "state", root / "cache")
    if is_system_mode(system):
        return Paths(
            "system",
            SYSTEM_CONFIG_DIR,
            SYSTEM_DATA_DIR,
            SYSTEM_DATA_DIR / "state",
            SYSTEM_CACHE_DIR,
        )
    return Paths(
        "user",
        _xdg("XDG_CONFIG_HOME", ".config") / "llmctl",
        _xdg("XDG_DATA_HOME", ".local/share") / "llmctl",
        _xdg("XDG_STATE_HOME", ".local/state") / "llmctl",
        _xdg("XDG_CACHE_HOME", ".cache") / "llmctl",
    )
