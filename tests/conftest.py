"""Shared fixtures: no test may leave a server process behind, pass or fail."""

from __future__ import annotations

import os
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


# .ci/run runs the suite a second time against the mypyc-compiled HTTP core (setup.py) and sets
# this, so that a build that silently fell back to the pure-Python modules cannot pass as one.
COMPILED_MODULES = ("trioserve._request", "trioserve._response", "trioserve._protocol")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("TRIOSERVE_EXPECT_COMPILED") != "1":
        return
    import importlib

    pure = [
        name
        for name in COMPILED_MODULES
        if not str(importlib.import_module(name).__file__).endswith(".so")
    ]
    if pure:
        pytest.exit(f"TRIOSERVE_EXPECT_COMPILED=1 but not compiled: {', '.join(pure)}", 1)
