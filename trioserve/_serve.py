"""`serve()`: run an ASGI app on a set of listeners until cancelled, then drain gracefully.

The nursery tree (see docs/design.md):

    serve
    ├── lifespan task          startup before the first accept, shutdown after the drain
    ├── connections (shielded) one task per connection; a deadline once the drain starts
    └── accept nursery         one loop per listener; cancelled first, by the caller

Cancelling the scope around `serve()` is the one way to stop it. The accept loops die with the
cancellation at once; the connections live under a shielded scope, so they are not cancelled but
told (`ConnectionContext.drain`) to finish what they are doing, and cut off at
`config.graceful_timeout`. Then lifespan shutdown runs and the cancellation carries on outwards.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

import trio

from ._asgi_types import ASGIApp, ASGIReceive, ASGISend, Scope
from ._config import ServerConfig
from ._connection import ConnectionContext, serve_connection
from ._errors import LifespanError
from ._exchange import peer_name
from ._lifespan import Lifespan
from ._listeners import Listener, default_listen_specs, open_listeners
from ._notify import Notifier
from ._proxy import proxy_headers_app
from ._spec import ListenSpec, parse_listen
from ._tls import (
    PLAIN_HTTP_REASON,
    TLSContext,
    answer_plain_http,
    handshake_error,
    tls_extension,
)

__all__ = ["serve"]

log = logging.getLogger("trioserve.error")

# Transient resource shortages on accept: the kernel keeps the connection queued, so wait a
# little and try again instead of failing (trio's serve_listeners does the same, for 100 ms).
_ACCEPT_BACKOFF_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF_SECONDS = 0.1
# The connection died between the kernel queueing it and our accept(): nothing to serve.
_ACCEPT_SKIP_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH}
)


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


async def serve(
    app: ASGIApp,
    listeners: Sequence[Listener | str | ListenSpec] | None = None,
    *,
    config: ServerConfig | None = None,
    notifier: Notifier | None = None,
    force_stop: trio.Event | None = None,
    tls: TLSContext | None = None,
    task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until cancelled, then drain.

    `listeners` mixes Listener objects (the caller owns them; they are not closed) and spec
    strings or values (opened here and closed on the way out). None means the default: every
    socket-activated fd, else 127.0.0.1:8000. `task_status.started()` reports every Listener once
    all accept loops run and lifespan startup is done. `notifier` (off by default, the CLI turns
    it on) sends sd_notify messages. Setting `force_stop` ends a drain at once. Listeners with
    `tls` set serve TLS with `tls`, or if None with a TLSContext built here from `config`
    (pass your own to `reload()` it, as the CLI does on SIGHUP).
    """
    config = ServerConfig() if config is None else config
    given: list[Listener] = []
    specs: list[str | ListenSpec] = []
    for item in default_listen_specs() if listeners is None else listeners:
        (given if isinstance(item, Listener) else specs).append(item)  # type: ignore[arg-type]
    if tls is None and any(
        item.tls for item in given + [parse_listen(s) if isinstance(s, str) else s for s in specs]
    ):
        tls = TLSContext(config)  # before opening anything: a bad certificate fails first
    owned = await open_listeners(specs) if specs else []
    try:
        server = _Server(
            app, given + owned, owned, config, notifier or Notifier(None), force_stop, tls
        )
        await server.run(task_status)
    finally:
        for listener in owned:
            listener.close()


class _Server:
    def __init__(
        self,
        app: ASGIApp,
        listeners: list[Listener],
        owned: list[Listener],
        config: ServerConfig,
        notifier: Notifier,
        force_stop: trio.Event | None,
        tls: TLSContext | None = None,
    ) -> None:
        self.listeners = listeners
        self.tls = tls
        self.owned = owned
        self.config = config
        self.notifier = notifier
        self.force_stop = force_stop
        self.state: dict[str, Any] = {}
        if config.max_requests is not None:
            app = self._count_requests(app, config.max_requests)
        if config.proxy_headers:
            # Only when on: the usual request path does not even look at the headers.
            app = proxy_headers_app(app, config.trusted_peers)
        self.ctx = ConnectionContext(app=app, config=config, state=self.state, drain=trio.Event())
        self.open_connections = 0
        self.connections_done = trio.Event()
        self.connections_scope = trio.CancelScope(shield=True)
        # With nothing but Accept=yes connections to serve, the server ends when they do.
        self.only_connections = bool(listeners) and all(
            listener.kind == "connection" for listener in listeners
        )

    async def run(self, task_status: trio.TaskStatus[list[Listener]]) -> None:
        lifespan = Lifespan(self.ctx.app, self.config.lifespan, self.state)
        async with trio.open_nursery() as outer:
            try:
                failure = await lifespan.startup(outer)
                if failure is None:
                    await self._serve(outer, lifespan, task_status)
            finally:
                lifespan.close()
                self.ctx.flusher.close()
                outer.cancel_scope.cancel()
        if failure is not None:
            # Raised out here, not inside the nursery, so callers get it bare, not in a group.
            raise LifespanError(f"application startup failed: {failure}")

    async def _serve(
        self,
        outer: trio.Nursery,
        lifespan: Lifespan,
        task_status: trio.TaskStatus[list[Listener]],
    ) -> None:
        conn_nursery: trio.Nursery = await outer.start(self._run_connections)
        try:
            async with trio.open_nursery() as accept_nursery:
                for listener in self.listeners:
                    if listener.kind == "connection":
                        self._spawn(conn_nursery, listener.socket, listener)
                    else:
                        accept_nursery.start_soon(self._accept_loop, listener, conn_nursery)
                if self.notifier.watchdog_usec is not None:
                    outer.start_soon(self.notifier.run_watchdog)
                for listener in self.listeners:
                    log.info("listening on %s", listener)
                summary = ", ".join(str(listener) for listener in self.listeners)
                self.notifier.notify(READY=1, STATUS=f"serving on {summary}")
                task_status.started(list(self.listeners))
                if self.only_connections:
                    await self.connections_done.wait()
                else:
                    await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(lifespan)

    async def _stop(self, lifespan: Lifespan) -> None:
        """Drain, then lifespan shutdown, each bounded; `force_stop` cuts both short."""
        async with trio.open_nursery() as nursery:
            if self.force_stop is not None:
                nursery.start_soon(_cancel_when_set, self.force_stop, nursery.cancel_scope)
            await self._drain()
            with trio.move_on_after(self.config.graceful_timeout) as scope:
                await lifespan.shutdown()
            if scope.cancelled_caught:
                log.warning(
                    "lifespan shutdown did not finish in %g s", self.config.graceful_timeout
                )
            nursery.cancel_scope.cancel()
        # Whatever cut the above short, no connection outlives serve().
        self.connections_scope.cancel()

    def _count_requests(self, app: ASGIApp, limit: int) -> ASGIApp:
        """Wrap `app` to ask for a replacement (sd_notify) once `limit` requests have started.

        Only when max_requests is set, so the usual request path pays nothing for it. The
        worker keeps serving until the supervisor's replacement is ready and drains it.
        """
        started = 0

        async def counting(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
            nonlocal started
            if scope["type"] != "lifespan":  # http and websocket
                started += 1
                if started == limit:
                    log.info("%d requests served (--max-requests): asking to be replaced", limit)
                    self.notifier.notify(TRIOSERVE_RECYCLE=1, STATUS="max requests reached")
            await app(scope, receive, send)

        return counting

    async def _run_connections(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with self.connections_scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await self.ctx.drain.wait()

    async def _drain(self) -> None:
        """Stop accepting, let connections finish within the graceful timeout, cut off the rest."""
        self.ctx.drain.set()
        for listener in self.owned:
            if listener.kind == "connection":
                continue  # an Accept=yes connection: its own stream closes it when done
            # Closing refuses new connections to a socket we bound. Of an inherited socket it
            # closes our copy only: the process that handed it over keeps it open, and what
            # arrives waits in its backlog for the next server. A caller's own Listeners are
            # not closed at all: nothing accepts on them any more, and they keep their queue.
            listener.close()
        timeout = self.config.graceful_timeout
        log.info("draining %d connection(s), up to %g s", self.open_connections, timeout)
        self.notifier.notify(
            STOPPING=1,
            STATUS=f"draining {self.open_connections} connection(s)",
            EXTEND_TIMEOUT_USEC=math.ceil(timeout * 1_000_000) + 5_000_000,
        )
        if self.open_connections == 0:
            self.connections_done.set()
        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_drain)
                await self.connections_done.wait()
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            log.warning("graceful timeout: closing %d connection(s)", self.open_connections)
        self.connections_scope.cancel()

    async def _report_drain(self) -> None:
        while True:
            await trio.sleep(1)
            self.notifier.notify(STATUS=f"draining {self.open_connections} connection(s)")

    def _spawn(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        listener: Listener,
        peer: Any = None,
    ) -> None:
        client: tuple[str, int] | None = None
        server: tuple[str, int | None] | None
        if sock.family == socket.AF_UNIX:
            # ASGI: a unix server is (path, None) and its client is None.
            server = (str(listener.address), None)
        else:
            try:
                # A listener bound to one address already knows it; a wildcard one must ask.
                local = listener.address
                if not isinstance(local, tuple) or local[0] in _WILDCARDS:
                    local = sock.getsockname()
                server = _host_port(local)
                client = _host_port(sock.getpeername() if peer is None else peer)
            except OSError:
                # Reset before we looked: nothing left to serve.
                sock.close()
                return
        self.open_connections += 1
        nursery.start_soon(self._connection, sock, client, server, listener)

    async def _connection(
        self,
        sock: trio.socket.SocketType,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        listener: Listener,
    ) -> None:
        try:
            if listener.tls and self.tls is not None:
                await self._tls_connection(sock, client, server, listener, self.tls)
            else:
                await serve_connection(
                    trio.SocketStream(sock),
                    self.ctx,
                    client=client,
                    server=server,
                    listener=listener.info(),
                )
        except Exception:
            # serve_connection answers for peers and apps; this is our own bug. One connection
            # is lost, the server stays up.
            log.exception("internal error serving a connection on %s", listener)
        finally:
            self.open_connections -= 1
            if self.open_connections == 0 and (self.ctx.drain.is_set() or self.only_connections):
                self.connections_done.set()

    async def _tls_connection(
        self,
        sock: trio.socket.SocketType,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        listener: Listener,
        tls: TLSContext,
    ) -> None:
        """Handshake within its timeout, then serve the engine over the TLS session."""
        stream = trio.SocketStream(sock)
        session = tls.session()
        failure = None
        with trio.move_on_after(self.config.tls_handshake_timeout) as scope:
            try:
                failure = await session.handshake(sock)
            except OSError as exc:
                failure = handshake_error(exc)
        if scope.cancelled_caught:
            failure = f"no handshake in {self.config.tls_handshake_timeout:g} s"
        if failure is not None:
            # A peer problem (a scanner, a client that distrusts our certificate, one without
            # a required certificate): one line, and the server carries on.
            log.info(
                "TLS handshake from %s on %s failed: %s", peer_name(client), listener, failure
            )
            if failure == PLAIN_HTTP_REASON:
                await answer_plain_http(stream)
            await trio.aclose_forcefully(stream)
            return
        await serve_connection(
            stream,
            self.ctx,
            client=client,
            server=server,
            listener=listener.info(),
            tls=tls_extension(session.ssl_object, session.loaded),
            session=session,
        )

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery) -> None:
        """Accept every queued connection before yielding, then wait for the socket to be readable.

        trio's own accept yields to the scheduler after each connection, so under load a queue
        of new connections drains one per scheduler pass while established ones get all the
        time; taking the whole queue at once bounds how long a connection waits in the kernel.
        We accept on a dup of the listening fd (same open file description, so the same queue
        and the same O_NONBLOCK) because trio's socket has no accept that does not yield.
        """
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as sock:
            sock.setblocking(False)
            while True:
                await trio.lowlevel.wait_readable(sock)
                while True:
                    try:
                        raw, peer = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _ACCEPT_BACKOFF_ERRNOS:
                            log.error(
                                "accept on %s: %s; retrying in %g s",
                                listener,
                                exc.strerror,
                                _ACCEPT_BACKOFF_SECONDS,
                            )
                            await trio.sleep(_ACCEPT_BACKOFF_SECONDS)
                            continue
                        if exc.errno in _ACCEPT_SKIP_ERRNOS:
                            continue
                        raise
                    self._spawn(nursery, trio.socket.from_stdlib_socket(raw), listener, peer)
                await trio.lowlevel.checkpoint()


def _host_port(addr: Any) -> tuple[str, int]:
    # IPv6 addresses come as (host, port, flowinfo, scope_id); ASGI wants (host, port).
    return (addr[0], addr[1])


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
