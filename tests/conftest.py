"""Shared fixtures: no test may leave a server process behind, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import clitools


@pytest.fixture(autouse=True)
def _stop_leftover_servers() -> Iterator[None]:
    yield
    while clitools.STARTED:
        server = clitools.STARTED.pop()
        server.kill()  # its process group: what this test started, and nothing else
        server.process.communicate()
        server.notify.close()
