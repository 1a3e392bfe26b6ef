"""A WebSocket's lifetime: keepalive pings, and what it counts as while it is open.

The server pings, and a client that then sends nothing is closed; an open WebSocket is a
request in progress for --limit-concurrency and a request for --max-requests. serve() on a real
socket, mostly in virtual time (autojump_clock: the clock jumps when every task is blocked, so
minutes of pings take none), with wsproto as the client's frame codec.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)

from tests.asgiserver import RawClient, request
from trioserve import ConfigError, Notifier, ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._serve import serve

Clock = trio.testing.MockClock

HEARD: list[dict[str, Any]] = []  # what the app's receive() returned after the connect
CLIENTS: list[Client] = []  # closed when the server block ends


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Echo text; `?N` makes the app read nothing for N seconds first. HTTP gets "hello"."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    pause = float(scope["query_string"] or b"0")
    if pause:
        await trio.sleep(pause)
    while True:
        message = await receive()
        HEARD.append(dict(message))
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message["text"]})


@asynccontextmanager
async def serving(notifier: Notifier | None = None, **settings: Any) -> AsyncIterator[int]:
    config = ServerConfig(access_log=False, lifespan="off", **settings)
    HEARD.clear()
    with trio.fail_after(5000):  # virtual seconds: an hour of quiet plus a margin
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(serve, echo, ["127.0.0.1:0"], config=config, notifier=notifier)
            )
            try:
                yield listener.address[1]
            finally:
                for client in CLIENTS:
                    client.stream.socket.close()
                CLIENTS.clear()
            nursery.cancel_scope.cancel()


class Client:
    """A WebSocket client on a trio socket; it answers pings only if asked to."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pings = 0
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, port: int, query: str = "") -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="x", target="/" + query)))
        client = cls(stream, ws)
        CLIENTS.append(client)
        while not any(isinstance(e, AcceptConnection) for e in client.events):
            await client.read()
        return client

    async def read(self, *, answer_pings: bool = False) -> bool:
        """One read; False at EOF."""
        data = await self.stream.receive_some()
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            self.events.append(event)
            if isinstance(event, Ping):
                self.pings += 1
                if answer_pings:
                    await self.stream.send_all(self.ws.send(event.response()))
        return bool(data)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    def texts(self) -> list[str]:
        return [str(e.data) for e in self.events if isinstance(e, TextMessage)]

    def close_codes(self) -> list[int]:
        return [e.code for e in self.events if isinstance(e, CloseConnection)]


async def test_a_silent_client_is_closed_with_1011(autojump_clock: Clock) -> None:
    async with serving(websocket_ping_interval=20, websocket_ping_timeout=10) as port:
        client = await Client.connect(port)
        start = trio.current_time()
        # The client reads (so the frames are seen here) but answers nothing.
        while await client.read():
            pass
        ended = trio.current_time() - start
    assert client.pings == 1
    # The server's close frame, then (wsproto's name for it) the end of the stream.
    assert client.close_codes() == [1011, 1006]
    assert ended == pytest.approx(30, abs=1)  # one interval, then the timeout
    assert HEARD == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}
    ]


async def test_a_client_that_answers_pings_stays(autojump_clock: Clock) -> None:
    async with serving(websocket_ping_interval=20, websocket_ping_timeout=10) as port:
        client = await Client.connect(port)
        with trio.move_on_after(310):
            while await client.read(answer_pings=True):
                pass
        assert client.pings == 15  # at 20, 40, ... 300 s
        await client.send_text("still here")
        while not client.texts():
            await client.read(answer_pings=True)
    assert client.texts() == ["still here"]
    assert client.close_codes() == []


async def test_a_client_sending_to_an_app_that_does_not_read_is_alive(
    autojump_clock: Clock,
) -> None:
    """It answers no ping, but it is sending: the reader waits on the app, not the client."""
    async with serving(websocket_ping_interval=20, websocket_ping_timeout=10) as port:
        client = await Client.connect(port, "?200")  # the app reads nothing for 200 s
        for n in range(10):
            await client.send_text(f"message {n}")
        while len(client.texts()) < 10:
            assert await client.read()  # pings arrive meanwhile; no close
    assert client.texts() == [f"message {n}" for n in range(10)]
    assert client.close_codes() == []
    # Each unanswered ping waits out its timeout before the next interval: 20 s + 10 s.
    assert client.pings >= 6


async def test_no_pings_when_turned_off(autojump_clock: Clock) -> None:
    async with serving(websocket_ping_interval=None) as port:
        client = await Client.connect(port)
        with trio.move_on_after(3600) as quiet:
            await client.read()  # nothing comes: no ping in an hour
        assert quiet.cancelled_caught
        await client.send_text("an hour later")
        while not client.texts():
            await client.read()
    assert client.pings == 0
    assert client.texts() == ["an hour later"]


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_ping_interval_must_be_positive_or_none(interval: float) -> None:
    with pytest.raises(ConfigError, match="websocket_ping_interval"):
        ServerConfig(websocket_ping_interval=interval)


async def http_status(port: int) -> int:
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    try:
        await client.send(request("/"))
        reply = await client.response()
    finally:
        await client.aclose()
    assert reply is not None
    return reply.status


async def test_an_open_websocket_counts_against_limit_concurrency() -> None:
    with trio.fail_after(10):
        await _limit_concurrency()


async def _limit_concurrency() -> None:
    async with serving(limit_concurrency=1) as port:
        client = await Client.connect(port)  # accepted; the app waits in receive()
        assert await http_status(port) == 503
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await refused.send_all(ws.send(Request(host="x", target="/")))
        assert (await refused.receive_some()).startswith(b"HTTP/1.1 503 ")
        await refused.aclose()
        await client.stream.send_all(client.ws.send(CloseConnection(code=1000)))
        while await client.read():  # the server answers the close, then closes
            pass
        await trio.testing.wait_all_tasks_blocked()
        assert await http_status(port) == 200  # the WebSocket is over: room again


async def test_websockets_count_towards_max_requests(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(address)
    notifier = Notifier(address)
    try:
        with trio.fail_after(10):
            async with serving(notifier, max_requests=2) as port:
                assert (await receiver.recv(4096)).startswith(b"READY=1")
                await Client.connect(port)
                assert await http_status(port) == 200  # the second request of the two
                recycle = await receiver.recv(4096)
    finally:
        notifier.close()
        receiver.close()
    assert b"TRIOSERVE_RECYCLE=1" in recycle
