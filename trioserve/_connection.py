"""The trio driver of one HTTP/1.1 connection: one stream, one `HTTPCore`, one app call at a time.

Design: the app runs in the connection's own task, and `receive()` reads from the socket only
when the app asks for more body, so there is no reader task per connection or per request and
backpressure is free: a client can send no faster than the app consumes. An app that wants to
hear about a disconnect while it works calls `receive()` from a task of its own (Starlette
does); that call then reads ahead into the core's buffer until EOF, a full buffer, or the end
of the response. `send()` on a connection the client has left raises `ClientDisconnected`, an
`OSError`, as ASGI spec 2.4 asks.

Reads and writes are plain non-blocking calls on the stream's fd; only a call that would block
waits, under a cancel scope with its deadline (head, body, write). Writes, and streamed chunks
kept until the app's task yields, are _writer.py's. Idle keep-alive waits have no
scope at all (a scope with a deadline costs 15-20 us per request here): one reaper task per
context wakes them at their deadline, or all at once when the drain starts.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from ._asgi_types import ASGIApp
from ._config import ServerConfig
from ._exchange import ClientDisconnected, Exchange, peer_name
from ._protocol import CLOSED, NEED_DATA, HTTPCore, HTTPError, Phase
from ._writer import Flusher, Writer

if TYPE_CHECKING:
    from ._tls import TLSSession

__all__ = ["ClientDisconnected", "ConnectionContext", "serve_connection"]

access_log: Final = logging.getLogger("trioserve.access")
error_log: Final = logging.getLogger("trioserve.error")

# trio's default read size; a head or a body piece rarely needs more than one read.
_RECEIVE_SIZE: Final = 64 * 1024
# After our last response on a connection we half-close and read until the client closes,
# at most this long, so that request bytes it had already sent do not turn our close into a
# reset that destroys the response in flight (nginx's lingering_close, which uses 5 s).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024
# How often the idle reaper looks when no connection is idle; with some idle it sleeps until the
# oldest one's deadline exactly.
_REAP_TICK: Final = 1.0


@dataclass(eq=False)
class ConnectionContext:
    """What every connection of one `serve()` call shares."""

    app: ASGIApp
    config: ServerConfig
    state: dict[str, Any]  # lifespan state; each request gets a shallow copy
    drain: trio.Event  # set once, when the drain starts
    in_flight: int = 0  # app calls running now, for limit_concurrency
    requests: int = 0  # requests answered since start (app calls and our own refusals)
    # Connections waiting for their next request, with their keep-alive deadlines. Every
    # connection of a context has the same timeout, so insertion order is deadline order.
    _idle: dict[_Connection, float] = field(default_factory=dict, init=False, repr=False)
    _reaper: bool = field(default=False, init=False, repr=False)
    # Writes streamed chunks once their connection's task yields (see _writer.py).
    flusher: Flusher = field(default_factory=Flusher, init=False, repr=False)


async def serve_connection(
    stream: trio.SocketStream,
    ctx: ConnectionContext,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    listener: dict[str, object] | None = None,
    tls: dict[str, object] | None = None,
    session: TLSSession | None = None,
) -> None:
    """Serve HTTP/1.1 requests on `stream` until either side is done, then close it.

    `session`, a TLS session whose handshake is done, makes it HTTPS over that session; `tls`
    is then the ASGI TLS extension for the scope.

    Never raises for what a peer or an app does: those are answered, logged and closed.
    Cancellation propagates (after the stream is closed).
    """
    # A second Python socket object on the stream's fd, for plain non-blocking recv and send
    # calls; detached (never closed) when the connection ends, since the fd is the stream's.
    try:
        raw = socket.socket(fileno=stream.socket.fileno())
    except OSError as exc:  # closed or reset before we got here
        error_log.debug("connection from %s lost before it started: %s", peer_name(client), exc)
        await trio.aclose_forcefully(stream)
        return
    if session is None:
        connection = _Connection(stream, raw, ctx, client, server, listener, tls)
    else:
        connection = _TLSConnection(stream, raw, ctx, client, server, listener, tls)
        connection.session = session
    try:
        raw.setblocking(False)
        await connection.run()
    except Exception:
        # Our own bug: lose this connection, not the server.
        error_log.exception("internal error on the connection from %s", peer_name(client))
    finally:
        connection.drop()
        connection.last_words()
        raw.detach()
        await trio.aclose_forcefully(stream)


async def _reap_idle(ctx: ConnectionContext) -> None:
    """Close idle connections at their keep-alive deadline, and all of them when the drain starts.

    One task per context instead of a cancel scope per wait: a scope with a deadline costs
    15-20 us of CPU per request at load here (measured), a third of all we spend. The task
    sleeps until the oldest idle connection's deadline (or a tick when none is idle) and wakes
    a connection with `notify_closing`, which makes its `wait_readable` raise.
    """
    idle = ctx._idle
    tick = min(_REAP_TICK, ctx.config.keep_alive_timeout)
    try:
        while not ctx.drain.is_set():
            now = trio.current_time()
            wake = now + tick
            while idle:  # oldest first; stop at the first one still in time
                connection, deadline = next(iter(idle.items()))
                if deadline > now:
                    wake = deadline
                    break
                _reap(connection)
            with trio.move_on_at(wake):
                await ctx.drain.wait()
        while idle:
            _reap(next(iter(idle)))
    finally:
        ctx._reaper = False


def _reap(connection: _Connection) -> None:
    # This runs in a system task, where an exception would crash the whole trio run.
    try:
        connection.reap()
    except Exception:
        connection.ctx._idle.pop(connection, None)
        error_log.exception("internal error closing an idle connection")


class _Connection(Writer):
    __slots__ = (
        "_head_deadline",
        "_read_free",
        "_reading",
        "_reaped",
        "_yielded",
        "aborted",
        "config",
        "core",
        "ctx",
        "stream",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        raw: socket.socket,
        ctx: ConnectionContext,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        listener: dict[str, object] | None,
        tls: dict[str, object] | None = None,
    ) -> None:
        super().__init__(raw, ctx.flusher, ctx.config.write_timeout, client)
        self.stream = stream
        self._yielded = False
        self._reaped = False
        self.ctx = ctx
        self.config = ctx.config
        self.core = HTTPCore(
            ctx.config, client=client, server=server, state=ctx.state, listener=listener, tls=tls
        )
        self.aborted = False  # we answered for the app (408, 413, bad body): it is cut off
        self._head_deadline: float | None = None
        self._reading = False
        self._read_free: trio.Event | None = None

    # -- the request loop ---------------------------------------------------------------------

    async def run(self) -> None:
        core = self.core
        while True:
            event = core.next_request()
            if type(event) is dict:
                self._head_deadline = None
                if not self._yielded:
                    # Pipelined requests read without waiting: let other connections run.
                    await trio.lowlevel.checkpoint()
                self._yielded = False
                if core.upgrade and _is_websocket_request(event["headers"]):
                    # Imported on first use: wsproto (and the h11 it imports) is a fifth of
                    # our import time, and most servers never see a WebSocket.
                    from ._websocket import serve_websocket

                    if self._at_limit():
                        await self._refuse_busy(event)
                        return
                    # A WebSocket is a request in progress for as long as it is open.
                    self.ctx.in_flight += 1
                    try:
                        await serve_websocket(self, event)
                    finally:
                        self.ctx.in_flight -= 1
                    return
                if not await self._exchange(event):
                    return
            elif event is NEED_DATA:
                if not await self._read_more():
                    return
            elif event is CLOSED:
                return
            else:
                assert isinstance(event, HTTPError)
                error_log.debug("refused a request from %s: %s", peer_name(self.client), event)
                await self._refuse(event.status, event.detail)
                return

    async def _read_more(self) -> bool:
        """Read for the next head (or skipped body); False when the connection should close."""
        core = self.core
        phase = core.phase
        if phase is Phase.IDLE:
            data = await self._read_idle()
            if data is None:
                return False
        else:
            if phase is Phase.BODY:
                deadline = trio.current_time() + self.config.body_timeout
            else:
                if self._head_deadline is None:
                    self._head_deadline = trio.current_time() + self.config.header_timeout
                deadline = self._head_deadline
            data = await self._receive(deadline)
            if data is None:
                if phase is Phase.HEAD:
                    error_log.debug(
                        "header timeout on the connection from %s", peer_name(self.client)
                    )
                    await self._refuse(408, "request head not received in time")
                return False
        core.receive_data(data)
        return True

    async def _read_idle(self) -> bytes | None:
        """Wait for the next request; None to close (keep-alive timeout, or the drain)."""
        # Request bytes the kernel already holds count as a request in progress, even during
        # the drain.
        data = self._recv_now()
        if data is not None:
            return data
        ctx = self.ctx
        if ctx.drain.is_set():
            return None
        if not ctx._reaper:
            ctx._reaper = True
            trio.lowlevel.spawn_system_task(_reap_idle, ctx, name="trioserve idle reaper")
        self._reaped = False
        ctx._idle[self] = trio.current_time() + self.config.keep_alive_timeout
        try:
            while True:
                try:
                    await trio.lowlevel.wait_readable(self.raw)
                except trio.ClosedResourceError:
                    if not self._reaped:
                        return b""
                self._yielded = True
                data = self._recv_now()
                if data is not None:
                    return data
                if self._reaped:
                    return None
        finally:
            ctx._idle.pop(self, None)

    def last_words(self) -> None:
        """Anything to send without waiting as the connection closes (TLS: close_notify)."""

    def reap(self) -> None:
        """Wake this idle connection to close (from the reaper task)."""
        del self.ctx._idle[self]
        self._reaped = True
        trio.lowlevel.notify_closing(self.raw)

    async def _receive(self, deadline: float) -> bytes | None:
        """Read once before `deadline`: bytes, b"" at EOF or reset, None at the deadline."""
        data = self._recv_now()
        if data is not None:
            return data
        with trio.CancelScope(deadline=deadline):
            return await self._receive_some()
        return None

    def _recv_now(self) -> bytes | None:
        """What the kernel holds (b"" at EOF or reset), or None if nothing yet; never waits.

        Reading without waiting does not yield to other tasks: `run()` makes up for it with
        one checkpoint per request.
        """
        try:
            return self.raw.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def _receive_some(self) -> bytes:
        """Read, waiting for data if there is none yet; b"" means EOF or a reset."""
        while True:
            data = self._recv_now()
            if data is not None:
                return data
            try:
                await trio.lowlevel.wait_readable(self.raw)
            except trio.ClosedResourceError:
                return b""
            self._yielded = True

    async def _refuse(
        self, status: int, detail: str, scope: dict[str, Any] | None = None, start: float = 0.0
    ) -> None:
        """Answer a request the app never sees, then close."""
        self.ctx.requests += 1
        await self.write(self.core.error_response(status, time.time(), detail))
        if self.config.access_log:
            self._log_access(scope, start or trio.current_time())
        await self.finish()

    async def finish(self) -> None:
        """Half-close and read until the client closes, so our last response is not reset."""
        if self.broken or self.core.eof:
            return
        try:
            self.raw.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with trio.move_on_after(_LINGER_SECONDS):
            drained = 0
            while drained < _LINGER_BYTES:
                data = await self._receive_some()
                if not data:
                    return
                drained += len(data)

    # -- one request --------------------------------------------------------------------------

    async def _exchange(self, scope: dict[str, Any]) -> bool:
        """Run the app for one request; True if the connection may carry another."""
        ctx = self.ctx
        core = self.core
        log = self.config.access_log
        start = trio.current_time() if log else 0.0
        if self._at_limit():
            await self._refuse_busy(scope, start)
            return False
        exchange = Exchange(self)
        ctx.in_flight += 1
        try:
            await ctx.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            ctx.in_flight -= 1
            exchange.end()
        ctx.requests += 1
        if self.broken or self.aborted:
            if failure is not None:
                error_log.debug("application error after the client left", exc_info=failure)
        elif failure is not None:
            error_log.error(
                "Exception in ASGI application (%s %s)",
                scope["method"],
                _target(scope),
                exc_info=failure,
            )
        elif exchange.error is not None:  # raised into the app, which carried on
            error_log.error(
                "ASGI application error (%s %s): %s",
                scope["method"],
                _target(scope),
                exchange.error,
            )
        elif not core.response_complete:
            error_log.error(
                "ASGI application returned without completing the response (%s %s)",
                scope["method"],
                _target(scope),
            )
        if failure is not None or not core.response_complete:
            return await self._after_failure(scope, start)
        if log:
            self._log_access(scope, start)
        if self.broken:
            return False
        if core.end_request():
            return True
        await self.finish()
        return False

    def _at_limit(self) -> bool:
        limit = self.config.limit_concurrency
        return limit is not None and self.ctx.in_flight >= limit

    async def _refuse_busy(self, scope: dict[str, Any], start: float = 0.0) -> None:
        """limit_concurrency requests are in progress: 503, and close."""
        error_log.debug("concurrency limit: 503 to %s", peer_name(self.client))
        await self._refuse(503, "too many requests in progress", scope, start)

    async def _after_failure(self, scope: dict[str, Any], start: float) -> bool:
        """The app failed: answer 500 if nothing is on the wire yet; always close."""
        core = self.core
        if self.broken:
            return False
        if core.response_complete:
            # A complete response went out (or we answered for the app) before the failure.
            if self.config.access_log:
                self._log_access(scope, start)
        elif core.response_started:
            # Part of the response is on the wire: closing without its end is the only way
            # left to tell the client it is incomplete. What the app sent goes out first.
            await self.flush()
            return False
        else:
            await self.write(core.error_response(500, time.time()))
            if self.config.access_log:
                self._log_access(scope, start)
        await self.finish()
        return False

    def _log_access(self, scope: dict[str, Any] | None, start: float) -> None:
        core = self.core
        if scope is None:
            request = "-"
        else:
            request = f"{scope['method']} {_target(scope)} HTTP/{scope['http_version']}"
        access_log.info(
            '%s - "%s" %d %d %.1fms',
            # The scope's client: the one --proxy-headers believed, if any.
            peer_name(self.client if scope is None else scope["client"]),
            request,
            core.status,
            core.body_bytes,
            (trio.current_time() - start) * 1000,
        )

    # -- reads on behalf of the app (see Exchange.receive) ---------------------------------

    async def read_for_app(self, deadline: float | None) -> bytes | None:
        """One read while the app runs; only one task reads at a time. None at the deadline."""
        while self._reading:
            if self._read_free is None:
                self._read_free = trio.Event()
            await self._read_free.wait()
        self._reading = True
        try:
            if deadline is None:
                return await self._receive_some()
            return await self._receive(deadline)
        finally:
            self._reading = False
            if self._read_free is not None:
                self._read_free.set()
                self._read_free = None


class _TLSConnection(_Connection):
    """The same connection over a TLS session: reads decrypt, writes encrypt (see _tls.py)."""

    __slots__ = ("session",)

    session: TLSSession

    def _recv_now(self) -> bytes | None:
        try:
            return self.session.recv(self.raw, _RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError:  # ssl.SSLError too: a broken session is an end of the stream
            return b""

    def _send_now(self, data: bytes | memoryview) -> int:
        try:
            return self.session.send(self.raw, data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True
            return -1

    async def finish(self) -> None:
        """close_notify, so the client knows the end is ours and not a cut, then half-close."""
        if not self.broken:
            self.session.close_notify()
            with trio.move_on_after(self.config.write_timeout):
                while self.session.pending and self._send_now(b"") >= 0:
                    if self.session.pending:
                        await trio.lowlevel.wait_writable(self.raw)
        await super().finish()

    def last_words(self) -> None:
        # Not after a response cut short: close_notify says "this is the end", and to an
        # HTTP/1.0 client reading a close-delimited body, a cut must not look like one.
        core = self.core
        if not self.broken and (core.response_complete or not core.response_started):
            self.session.close_notify()
            self._send_now(b"")


def _is_websocket_request(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n == b"upgrade" and v.strip().lower() == b"websocket" for n, v in headers)


def _target(scope: dict[str, Any]) -> str:
    """The request target as received (raw, so control bytes cannot reach a log line)."""
    target = scope["raw_path"].decode("ascii", "replace")
    query = scope["query_string"]
    return f"{target}?{query.decode('ascii', 'replace')}" if query else target
