"""Run `serve_connection` behind a real 127.0.0.1 listener, and talk to it in raw bytes.

No serve(): the engine's tests accept connections themselves so that they test the engine
alone. Responses are read back with h11 as an independent client-side parser.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import trio

from trioserve._asgi_types import ASGIApp, ASGIReceive, ASGISend, Scope
from trioserve._config import ServerConfig
from trioserve._connection import ConnectionContext, serve_connection

LISTENER_INFO: dict[str, object] = {"kind": "tcp", "name": None}


@dataclass
class Running:
    port: int
    ctx: ConnectionContext
    url: str
    accepted: list[trio.SocketStream] = field(default_factory=list)
    clients: list[RawClient] = field(default_factory=list)

    def connect_and_send(self, data: bytes) -> RawClient:
        """Connect and send `data` without yielding: it is in the kernel before we accept."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(data)
        client = RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        self.clients.append(client)
        return client

    async def connect(self, *, receive_buffer: int | None = None) -> RawClient:
        """A raw client connection, closed when the server block ends."""
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client = RawClient(trio.SocketStream(sock))
        self.clients.append(client)
        await sock.connect(("127.0.0.1", self.port))
        return client


@asynccontextmanager
async def running(
    app: ASGIApp, config: ServerConfig | None = None, *, send_buffer: int | None = None
) -> AsyncIterator[Running]:
    """Serve `app` on an ephemeral port until the block ends (then cancel everything)."""
    ctx = ConnectionContext(
        app=app,
        config=config or ServerConfig(),
        state={"from": "lifespan"},
        drain=trio.Event(),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    info = Running(port, ctx, f"http://127.0.0.1:{port}")

    async def handler(stream: trio.SocketStream) -> None:
        if send_buffer is not None:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        info.accepted.append(stream)
        host, peer_port = stream.socket.getpeername()[:2]
        await serve_connection(
            stream,
            ctx,
            client=(host, peer_port),
            server=("127.0.0.1", port),
            listener=LISTENER_INFO,
        )

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            yield info
            nursery.cancel_scope.cancel()
    finally:
        for client in info.clients:
            client.stream.socket.close()
        for listener in listeners:
            listener.socket.close()


@dataclass
class Reply:
    status: int
    reason: bytes
    headers: dict[str, str]
    body: bytes
    complete: bool  # the message ended properly (not cut short by a close)


class RawClient:
    """One TCP connection; write raw bytes, read back whole responses one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if data:
            self.buffer += data
        else:
            self.eof = True

    async def raw(self, size: int) -> bytes:
        """Exactly `size` bytes (fewer at EOF)."""
        while len(self.buffer) < size and not self.eof:
            await self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def rest(self) -> bytes:
        """Everything until the server closes."""
        while not self.eof:
            await self._fill()
        data, self.buffer = self.buffer, b""
        return data

    async def response(self, method: str = "GET") -> Reply | None:
        """The next complete (or cut-short) response; None if the server closed first."""
        while True:
            parsed = _parse_one(self.buffer, method, self.eof)
            if parsed is not None:
                reply, self.buffer = parsed
                return reply
            if self.eof:
                return None
            await self._fill()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _parse_one(data: bytes, method: str, eof: bool) -> tuple[Reply, bytes] | None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    if data:
        client.receive_data(data)
    if eof:
        client.receive_data(b"")
    head: h11.Response | None = None
    body = b""
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            if head is None and eof and not data:
                return None
            if head is None or not eof:
                raise
            return _reply(head, body, False), b""
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return _reply(head, body, True), client.trailing_data[0]
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:
            raise AssertionError(f"unexpected {event!r}")


def _reply(head: h11.Response, body: bytes, complete: bool) -> Reply:
    headers = {k.decode(): v.decode("latin-1") for k, v in head.headers}
    return Reply(head.status_code, head.reason, headers, body, complete)


async def read_body(receive: ASGIReceive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += bytes(message["body"])
        if not message.get("more_body", False):
            return body


async def respond(
    send: ASGISend, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def hello(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await respond(send, 200, b"hello " + scope["raw_path"], [(b"content-type", b"text/plain")])


def request(path: str = "/", *fields: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
