from __future__ import annotations

import pytest


@pytest.fixture
def fakes():
    """The fake upstreams on 127.0.0.1: one that fails (500), one that hangs, one that answers and streams."""
    from tests import fake_upstreams

    started = {k: fake_upstreams.start(k) for k in ("fail", "hang", "ok")}
    yield started
    for f in started.values():
        f.stop()
