"""ASGI lifespan, driven directly: startup, shutdown, failure, and apps without support."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._config import LifespanMode
from trioserve._lifespan import Lifespan


class RecordingApp:
    """A lifespan app whose answers are set by the test."""

    def __init__(self, startup: str = "complete", shutdown: str = "complete") -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert scope["type"] == "lifespan"
        assert scope["asgi"]["version"] == "3.0"
        message = await receive()
        self.events.append(message["type"])
        scope["state"]["db"] = "connected"
        if self.startup == "raise":
            raise RuntimeError("cannot reach the database")
        if self.startup == "return":
            return
        await send({"type": f"lifespan.startup.{self.startup}", "message": "no db"})
        message = await receive()
        self.events.append(message["type"])
        await send({"type": f"lifespan.shutdown.{self.shutdown}", "message": "flush failed"})


async def run(app: Any, mode: LifespanMode) -> tuple[str | None, bool, dict[str, Any]]:
    state: dict[str, Any] = {}
    lifespan = Lifespan(app, mode, state)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            failure = await lifespan.startup(nursery)
            if failure is None:
                await lifespan.shutdown()
            else:
                nursery.cancel_scope.cancel()
    return failure, lifespan.supported, state


async def test_startup_and_shutdown_share_state() -> None:
    app = RecordingApp()
    failure, supported, state = await run(app, "auto")
    assert (failure, supported) == (None, True)
    assert state == {"db": "connected"}
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_startup_failed_message_fails_in_every_mode(mode: LifespanMode) -> None:
    failure, _, _ = await run(RecordingApp(startup="failed"), mode)
    assert failure == "no db"


@pytest.mark.parametrize("behaviour", ["raise", "return"])
async def test_auto_tolerates_apps_without_lifespan(behaviour: str) -> None:
    failure, supported, _ = await run(RecordingApp(startup=behaviour), "auto")
    assert (failure, supported) == (None, False)


async def test_on_requires_lifespan() -> None:
    failure, _, _ = await run(RecordingApp(startup="raise"), "on")
    assert failure == "RuntimeError: cannot reach the database"
    failure, _, _ = await run(RecordingApp(startup="return"), "on")
    assert failure == "the lifespan task returned without answering startup"


async def test_off_never_calls_the_app() -> None:
    app = RecordingApp()
    failure, supported, _ = await run(app, "off")
    assert (failure, supported, app.events) == (None, False, [])


async def test_shutdown_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    app = RecordingApp(shutdown="failed")
    failure, _, _ = await run(app, "on")
    assert failure is None
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]
    assert "application shutdown failed: flush failed" in caplog.text
