"""Fixtures of the reliability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstream import Upstream


@pytest.fixture
def busy_upstream() -> Iterator[Upstream]:
    """tests/upstream.py's server with room for 50 clients connecting at once (its listen backlog is 5:
    beyond that, connections are reset and the proxy rightly answers 502)."""
    with Upstream() as up:
        up.server.socket.listen(256)
        yield up
