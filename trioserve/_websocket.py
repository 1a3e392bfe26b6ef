"""WebSockets: the ASGI ``websocket`` scope over an HTTP/1.1 upgrade, framed by wsproto.

The HTTP engine parses the upgrade request like any other; `_Connection` hands a GET with
``Connection: upgrade`` and ``Upgrade: websocket`` to `serve_websocket`, which owns the
connection from then on (it is never reused for HTTP). The handshake answer is ours (RFC 6455
4.2.2, with wsproto's accept token and extension negotiation); wsproto does the frames:
fragmentation, masking, UTF-8 validation of text, control frames, close codes and
permessage-deflate.

One task per connection reads (started by `websocket.accept`): it answers pings, reassembles
messages up to `websocket_max_message_size` (beyond it: close 1009) and queues them for the
app's `receive()`, a few at a time, so a client cannot send faster than the app reads. Writes
(the app's sends, pongs, close frames) share one lock. A keepalive task pings every
`websocket_ping_interval` and closes with 1011 a client that then sends nothing. When the
drain starts, a connected WebSocket gets a close frame 1001 (going away); the app hears the
client's answer as ``websocket.disconnect``, and the graceful deadline still applies.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token, split_comma_header

from ._errors import ASGIError, ClientDisconnected
from ._exchange import peer_name

if TYPE_CHECKING:
    from ._connection import _Connection

__all__ = ["serve_websocket"]

access_log: Final = logging.getLogger("trioserve.access")
error_log: Final = logging.getLogger("trioserve.error")

# Messages read ahead of the app: enough to keep the socket busy, few enough to push back.
_QUEUE: Final = 4
# After our close frame, how long we wait for the client's (RFC 6455 7.1.1: the server
# should close the TCP connection only after that).
_CLOSE_WAIT_SECONDS: Final = 2.0


async def serve_websocket(conn: _Connection, scope: dict[str, Any]) -> None:
    """Run the app for one WebSocket request on `conn`; the connection closes afterwards."""
    # Whatever happens, this connection carries no more HTTP: every refusal says so
    # (`connection: close`, RFC 9112 9.6).
    conn.core.keep_alive = False
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name, []).append(value)
    key = fields.get(b"sec-websocket-key", [b""])[0].strip()
    if fields.get(b"sec-websocket-version", [b""])[0].strip() != b"13":
        await _answer(conn, 426, [(b"sec-websocket-version", b"13")], b"WebSocket version 13\n")
        return
    if len(key) != 24:
        await _answer(conn, 400, [], b"missing or malformed Sec-WebSocket-Key\n")
        return
    subprotocols = [
        p for value in fields.get(b"sec-websocket-protocol", []) for p in split_comma_header(value)
    ]
    offers = [
        o
        for value in fields.get(b"sec-websocket-extensions", [])
        for o in split_comma_header(value)
    ]
    ws_scope = dict(scope)
    ws_scope.pop("method", None)
    ws_scope["type"] = "websocket"
    ws_scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    ws_scope["subprotocols"] = subprotocols
    ws_scope["extensions"] = {**scope["extensions"], "websocket.http.response": {}}
    await _WebSocket(conn, ws_scope, key, offers).run()


async def _answer(
    conn: _Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    core = conn.core
    await conn.write(
        core.send(
            {"type": "http.response.start", "status": status, "headers": headers}, time.time()
        )
        + core.send({"type": "http.response.body", "body": body}, time.time())
    )
    await conn.finish()


class _WebSocket:
    def __init__(
        self, conn: _Connection, scope: dict[str, Any], key: bytes, offers: list[str]
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.key = key
        self.offers = offers
        self.config = conn.config
        self.max_size = conn.config.websocket_max_message_size
        self.ws: Connection | None = None
        self.state = "connecting"  # connecting, connected, denying, closed
        self.connect_sent = False
        self.write_lock = trio.Lock()
        self.queue_in, self.queue_out = trio.open_memory_channel[dict[str, Any]](_QUEUE)
        self.disconnect: dict[str, Any] | None = None  # once the client is gone
        self.nursery: trio.Nursery | None = None
        self.start = trio.current_time()
        # For the keepalive: reads so far, an event the reader sets on its next read, and
        # whether the reader is waiting for the app to take a message (the client is alive).
        self.reads = 0
        self.read_event: trio.Event | None = None
        self.delivering = False

    async def run(self) -> None:
        ctx = self.conn.ctx
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._close_at_drain)
            try:
                await ctx.app(self.scope, self.receive, self.send)
            except Exception as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None and not isinstance(failure, ClientDisconnected):
            error_log.error(
                "Exception in ASGI application (WebSocket %s)",
                self.scope["path"],
                exc_info=failure,
            )
        if self.state == "connecting":
            # Never accepted nor denied: 403 (500 if the app failed), as uvicorn does.
            await self._deny(500 if failure is not None else 403)
        elif self.state == "denying":
            if not self.conn.core.response_complete:
                self.conn.broken = True  # part of a denial is out: only a close can end it
        elif self.state == "connected":
            code = (
                CloseReason.INTERNAL_ERROR if failure is not None else CloseReason.NORMAL_CLOSURE
            )
            await self._close(code, "")
        if self.ws is None:
            # Refused with an HTTP response: half-close and drain what the client sent after
            # its handshake, as the HTTP path does, so our close does not become a reset that
            # destroys the response.
            await self.conn.finish()
        await self._finish_close()

    # -- the app's side ---------------------------------------------------------------------

    async def receive(self) -> MutableMapping[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if self.state in ("connecting", "denying") or self.ws is None:
            if self.state == "connecting":
                raise ASGIError("receive() before websocket.accept or websocket.close")
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        try:
            return await self.queue_out.receive()
        except trio.EndOfChannel:
            assert self.disconnect is not None
            return self.disconnect

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            if self.state != "connecting":
                raise ASGIError(f"websocket.accept in state {self.state}")
            await self._accept(message)
        elif kind == "websocket.send":
            if self.state != "connected" or self.ws is None:
                if self.disconnect is not None or self.state == "closed":
                    raise ClientDisconnected("the WebSocket is closed")
                raise ASGIError(f"websocket.send in state {self.state}")
            text, data = message.get("text"), message.get("bytes")
            if (text is None) == (data is None):
                raise ASGIError("websocket.send needs exactly one of text and bytes")
            if self.ws.state is not ConnectionState.OPEN:
                raise ClientDisconnected("the WebSocket is closing")
            event: Message[Any]
            if text is not None:
                event = TextMessage(data=str(text))
            else:
                event = BytesMessage(data=bytes(data or b""))
            await self._write(self.ws.send(event))
        elif kind == "websocket.close":
            if self.state == "connecting":
                await self._deny(403)
            elif self.state == "connected":
                await self._close(int(message.get("code", 1000)), message.get("reason") or "")
            elif self.state == "closed":
                pass  # the client closed first: nothing to do
            else:
                raise ASGIError(f"websocket.close in state {self.state}")
        elif kind in ("websocket.http.response.start", "websocket.http.response.body"):
            if self.state not in ("connecting", "denying"):
                raise ASGIError(f"{kind} after the WebSocket was accepted or closed")
            self.state = "denying"
            http = dict(message, type=kind.replace("websocket.", ""))
            data = self.conn.core.send(http, time.time())
            if data and not await self.conn.write(data):
                raise ClientDisconnected("the client went away")
            if self.conn.core.response_complete:
                self._log(self.conn.core.status)
                self.state = "closed"
        else:
            raise ASGIError(f"unexpected message type in a WebSocket: {kind!r}")

    # -- our side ---------------------------------------------------------------------------

    async def _accept(self, message: MutableMapping[str, Any]) -> None:
        extensions: list[Extension] = []
        head = [
            b"HTTP/1.1 101 Switching Protocols",
            b"upgrade: websocket",
            b"connection: Upgrade",
            b"sec-websocket-accept: " + generate_accept_token(self.key),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if subprotocol not in self.scope["subprotocols"]:
                raise ASGIError(f"subprotocol {subprotocol!r} was not offered by the client")
            head.append(b"sec-websocket-protocol: " + subprotocol.encode("ascii"))
        if self.config.websocket_per_message_deflate and self.offers:
            deflate = PerMessageDeflate()
            agreed = server_extensions_handshake(self.offers, [deflate])
            if agreed is not None:
                extensions.append(deflate)
                head.append(b"sec-websocket-extensions: " + agreed)
        for name, value in message.get("headers") or []:
            if bytes(name).lower() in (b"sec-websocket-protocol", b"sec-websocket-accept"):
                continue
            head.append(bytes(name) + b": " + bytes(value))
        self.ws = Connection(ConnectionType.SERVER, extensions, self.conn.core.take_buffered())
        self.state = "connected"
        if not await self.conn.write(b"\r\n".join(head) + b"\r\n\r\n"):
            self._gone(1006)
            raise ClientDisconnected("the client went away")
        self._log(101)
        assert self.nursery is not None
        self.nursery.start_soon(self._read)
        if self.config.websocket_ping_interval is not None:
            self.nursery.start_soon(self._keepalive, self.config.websocket_ping_interval)

    async def _deny(self, status: int) -> None:
        self.state = "closed"
        body = b"WebSocket refused\n" if status == 403 else b"Internal Server Error\n"
        core = self.conn.core
        await self.conn.write(
            core.send(
                {"type": "http.response.start", "status": status, "headers": []}, time.time()
            )
            + core.send({"type": "http.response.body", "body": body}, time.time())
        )
        self._log(status)

    async def _close(self, code: int, reason: str) -> None:
        self.state = "closed"
        ws = self.ws
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            # Closing what the client already left: nothing more to do.
            with contextlib.suppress(ClientDisconnected):
                await self._write(ws.send(CloseConnection(code=code, reason=reason)))

    async def _close_at_drain(self) -> None:
        await self.conn.ctx.drain.wait()
        if self.state == "connected":
            await self._close(CloseReason.GOING_AWAY, "server shutting down")

    async def _finish_close(self) -> None:
        """After our close frame, give the client a little time to answer with its own."""
        ws = self.ws
        if ws is None or ws.state is not ConnectionState.LOCAL_CLOSING or self.conn.broken:
            return
        with trio.move_on_after(_CLOSE_WAIT_SECONDS):
            while ws.state is ConnectionState.LOCAL_CLOSING:
                data = await self.conn.read_for_app(None)
                ws.receive_data(data or None)
                for _ in ws.events():
                    pass

    async def _write(self, data: bytes) -> None:
        async with self.write_lock:
            if not await self.conn.write(data):
                self._gone(1006)
                raise ClientDisconnected("the client went away")

    def _gone(self, code: int, reason: str = "") -> None:
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.queue_in.close()

    async def _read(self) -> None:
        """Frames in, messages out to the app's queue, until either side closes."""
        ws = self.ws
        assert ws is not None
        parts: list[Any] = []
        size = 0
        try:
            while self.disconnect is None:
                data = await self.conn.read_for_app(None)
                self.reads += 1
                if self.read_event is not None:
                    self.read_event.set()
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        parts.append(event.data)
                        size += len(event.data)
                        if size > self.max_size:
                            error_log.info(
                                "WebSocket message from %s over %d bytes: closing with 1009",
                                peer_name(self.conn.client),
                                self.max_size,
                            )
                            await self._close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                            self._gone(CloseReason.MESSAGE_TOO_BIG, "message too big")
                            return
                        if event.message_finished:
                            message: dict[str, Any] = {"type": "websocket.receive"}
                            if isinstance(event, TextMessage):
                                message["text"] = "".join(parts)
                            else:
                                message["bytes"] = b"".join(parts)
                            parts, size = [], 0
                            self.delivering = True
                            try:
                                await self.queue_in.send(message)
                            finally:
                                self.delivering = False
                    elif isinstance(event, Ping):
                        if ws.state is ConnectionState.OPEN:  # not once a close is sent
                            await self._write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            # The client closed: answer with the same code; it is over.
                            self.state = "closed"
                            await self._write(ws.send(event.response()))
                        elif ws.state is ConnectionState.OPEN:
                            # The client broke the protocol (bad UTF-8, an unknown opcode, an
                            # unmasked frame...): wsproto's code says which; we close with it.
                            error_log.info(
                                "WebSocket protocol error from %s: %s",
                                peer_name(self.conn.client),
                                event.reason,
                            )
                            await self._close(event.code, event.reason or "")
                        self._gone(event.code, event.reason or "")
                        return
                if not data:
                    self._gone(CloseReason.ABNORMAL_CLOSURE)
                    return
        except (ClientDisconnected, trio.BrokenResourceError, trio.ClosedResourceError):
            self._gone(CloseReason.ABNORMAL_CLOSURE)

    async def _keepalive(self, interval: float) -> None:
        """Ping every `interval`; a client that then sends nothing within the timeout is gone.

        Anything the client sends counts, not only the pong, and so does a reader waiting for
        the app to take a message: that client is sending, the app is just not reading.
        """
        ws = self.ws
        assert ws is not None
        timeout = self.config.websocket_ping_timeout
        while True:
            await trio.sleep(interval)
            if ws.state is not ConnectionState.OPEN or self.disconnect is not None:
                return
            reads = self.reads
            self.read_event = heard = trio.Event()
            try:
                await self._write(ws.send(Ping(b"trioserve")))
            except ClientDisconnected:
                return
            with trio.move_on_after(timeout):
                await heard.wait()
            self.read_event = None
            if self.reads != reads or self.delivering:
                continue
            if ws.state is not ConnectionState.OPEN or self.disconnect is not None:
                return
            error_log.info(
                "WebSocket client %s sent nothing in %g s after a ping: closing with 1011",
                peer_name(self.conn.client),
                timeout,
            )
            # The close frame first: once the app hears of the disconnect it may return, and
            # that cancels this task.
            with trio.move_on_after(timeout):  # a gone client may not take the frame either
                await self._close(CloseReason.INTERNAL_ERROR, "keepalive ping timeout")
            self._gone(CloseReason.INTERNAL_ERROR, "keepalive ping timeout")
            # Whatever the close frame met, nothing more is read or written: wake the reader.
            self.conn.broken = True
            trio.lowlevel.notify_closing(self.conn.raw)
            return

    def _log(self, status: int) -> None:
        if self.config.access_log:
            access_log.info(
                '%s - "WebSocket %s" %d %.1fms',
                peer_name(self.scope.get("client")),
                self.scope["path"],
                status,
                (trio.current_time() - self.start) * 1000,
            )
