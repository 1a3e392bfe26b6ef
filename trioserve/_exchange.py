"""The ASGI `receive` and `send` callables of one request, over the connection's core and socket.

`receive()` reads the socket only when the app asks for body, so there is no reader task: the
client sends no faster than the app consumes. Once the body is consumed, `receive()` reads
ahead (keeping what it gets for the next pipelined request) until the client leaves or the
response is complete, then returns `http.disconnect`. `send()` hands messages to the core and
writes what it returns (a chunk with more to come may wait for the app's task to yield, see
_writer.py); on a connection the client has left it raises `ClientDisconnected`, an `OSError`,
as ASGI spec 2.4 asks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import trio

from ._asgi_types import Message
from ._errors import ClientDisconnected
from ._protocol import CONTINUE_RESPONSE, NEED_DATA, PEER_GONE, ASGIError, HTTPError

if TYPE_CHECKING:
    from ._connection import _Connection

__all__ = ["ClientDisconnected", "Exchange", "peer_name"]

error_log: Final = logging.getLogger("trioserve.error")

# Bytes read ahead (the next pipelined request) while the app waits for a disconnect.
_READ_AHEAD_LIMIT: Final = 64 * 1024


def peer_name(client: tuple[str, int] | None) -> str:
    """`host:port` for logs; `-` for a unix socket peer."""
    return "-" if client is None else f"{client[0]}:{client[1]}"


class Exchange:
    """The receive and send callables of one request; inert once the request is over."""

    __slots__ = ("_watchers", "conn", "done", "error")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.done = False
        self.error: ASGIError | None = None
        self._watchers: list[trio.CancelScope] | None = None

    def end(self) -> None:
        self.done = True
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        if self._watchers:
            for scope in self._watchers:
                scope.cancel()

    async def receive(self) -> Message:
        conn = self.conn
        core = conn.core
        while not (self.done or conn.broken or conn.aborted):
            if core.body_done:
                if core.eof or core.response_complete:
                    break
                await self._wait_for_disconnect()
                continue
            if core.take_continue() and not await conn.write(CONTINUE_RESPONSE):
                break
            result = core.read_body()
            if type(result) is tuple:
                return {"type": "http.request", "body": result[0], "more_body": result[1]}
            if result is NEED_DATA:
                deadline = trio.current_time() + conn.config.body_timeout
                data = await conn.read_for_app(deadline)
                if data is None:
                    error_log.debug(
                        "body timeout on the connection from %s", peer_name(conn.client)
                    )
                    await self._abort(408, "request body not received in time")
                    break
                core.receive_data(data)
            elif result is PEER_GONE:
                break
            else:
                assert isinstance(result, HTTPError)
                error_log.debug(
                    "refused a request body from %s: %s", peer_name(conn.client), result
                )
                await self._abort(result.status, result.detail)
                break
        return {"type": "http.disconnect"}

    async def _wait_for_disconnect(self) -> None:
        """Read ahead until the client leaves or the response is complete."""
        conn = self.conn
        core = conn.core
        if self._watchers is None:
            self._watchers = []
        with trio.CancelScope() as scope:
            self._watchers.append(scope)
            try:
                while core.buffered < _READ_AHEAD_LIMIT:
                    data = await conn.read_for_app(None)
                    if not data or self.done or core.response_complete:
                        core.receive_data(data or b"")
                        return
                    core.receive_data(data)
                await trio.sleep_forever()
            finally:
                self._watchers.remove(scope)

    async def _abort(self, status: int, detail: str) -> None:
        """The server gives up on this request: answer it if the app has not, then close."""
        conn = self.conn
        if not conn.core.response_started:
            await conn.write(conn.core.error_response(status, time.time(), detail))
        conn.aborted = True

    async def send(self, message: Message) -> None:
        conn = self.conn
        if self.done or conn.broken or conn.aborted:
            raise ClientDisconnected("the client is gone or the response is over")
        core = conn.core
        if conn.ctx.drain.is_set():
            core.keep_alive = False
        try:
            data = core.send(message, time.time())
        except ASGIError as exc:
            self.error = exc
            raise
        if core.response_complete:
            if data and not await conn.write(data):
                raise ClientDisconnected("the client is gone")
            if self._watchers:
                self._wake_watchers()
        elif data and not await conn.write_soon(data):
            raise ClientDisconnected("the client is gone")
