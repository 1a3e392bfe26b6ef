"""ASGI lifespan: run the app's startup before the first accept and its shutdown after the drain.

The app's lifespan coroutine lives for the whole server in its own task. It talks to us through
`receive` (we hand it `startup`, later `shutdown`) and `send` (it answers `.complete` or
`.failed`). With `lifespan="auto"` an app that raises or returns before answering `startup` is
taken not to support lifespan, which is how most plain ASGI apps behave.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ._asgi_types import ASGIApp, Message
from ._config import LifespanMode

__all__ = ["Lifespan"]

log = logging.getLogger("trioserve.error")

_ASGI = {"version": "3.0", "spec_version": "2.0"}


class Lifespan:
    """One app's lifespan conversation; `startup()` then, later, `shutdown()`."""

    def __init__(self, app: ASGIApp, mode: LifespanMode, state: dict[str, Any]) -> None:
        self._app = app
        self._mode = mode
        self._state = state
        self._supported = mode != "off"
        self._phase = "startup"
        self._shutdown_requested = trio.Event()
        self._answered = trio.Event()
        self._failure: str | None = None
        # Shielded: the caller's cancellation starts the drain, and the app must still be
        # running afterwards to hear "lifespan.shutdown". close() ends it.
        self._scope = trio.CancelScope(shield=True)

    @property
    def supported(self) -> bool:
        return self._supported

    async def startup(self, nursery: trio.Nursery) -> str | None:
        """Start the app's lifespan task in `nursery`; wait for its answer; return any failure.

        A failure is returned, not raised, so that serve() can leave its nursery first and
        raise a bare LifespanError rather than one wrapped in an exception group.
        """
        if not self._supported:
            return None
        nursery.start_soon(self._run)
        await self._answered.wait()
        return self._failure

    async def shutdown(self) -> None:
        """Ask the app to shut down and wait for its answer; errors are logged, not raised."""
        if not self._supported or self._phase != "startup-done":
            return
        self._phase = "shutdown"
        self._answered = trio.Event()
        self._shutdown_requested.set()
        await self._answered.wait()
        if self._failure is not None:
            log.error("application shutdown failed: %s", self._failure)

    def close(self) -> None:
        """End the app's lifespan task, wherever it is; safe to call more than once."""
        self._scope.cancel()

    async def _run(self) -> None:
        scope: dict[str, Any] = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        with self._scope:
            try:
                await self._app(scope, self._receive, self._send)
            except Exception as exc:
                self._app_stopped(exc)
            else:
                self._app_stopped(None)

    def _app_stopped(self, exc: Exception | None) -> None:
        """The lifespan coroutine ended; decide what that means for the phase we are in."""
        if self._answered.is_set():
            if exc is not None:
                log.error("lifespan task raised after %s", self._phase, exc_info=exc)
            return
        if self._phase == "startup" and self._mode == "auto":
            # The common case for apps without lifespan support: they raise on the unknown
            # scope type or return at once. Serve them anyway.
            self._supported = False
            log.debug("application does not support lifespan; continuing without it", exc_info=exc)
        elif exc is not None:
            self._failure = f"{type(exc).__name__}: {exc}"
            log.error("lifespan %s raised", self._phase, exc_info=exc)
        else:
            self._failure = f"the lifespan task returned without answering {self._phase}"
        self._answered.set()

    async def _receive(self) -> Message:
        if self._phase == "startup":
            return {"type": "lifespan.startup"}
        await self._shutdown_requested.wait()
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if self._answered.is_set():
            raise RuntimeError(f"{kind!r} sent after {self._phase} was already answered")
        expected = "lifespan.startup" if self._phase == "startup" else "lifespan.shutdown"
        if kind == f"{expected}.complete":
            self._failure = None
        elif kind == f"{expected}.failed":
            self._failure = str(message.get("message") or "(no message given)")
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r} during {self._phase}")
        if self._phase == "startup" and self._failure is None:
            self._phase = "startup-done"
        self._answered.set()
        await trio.lowlevel.checkpoint()
