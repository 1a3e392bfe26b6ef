"""WebSocket keepalive: the server pings, and a client that then sends nothing is closed.

serve() on a real socket in virtual time (autojump_clock: the clock jumps when every task is
blocked, so minutes of pings take none), with wsproto as the client's frame codec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
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

from trioserve import ConfigError, ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._serve import serve

Clock = trio.testing.MockClock

HEARD: list[dict[str, Any]] = []  # what the app's receive() returned after the connect
CLIENTS: list[Client] = []  # closed when the server block ends


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Echo text; a message "wait N" makes the app stop reading for N seconds first."""
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
async def serving(**settings: Any) -> AsyncIterator[int]:
    config = ServerConfig(access_log=False, lifespan="off", **settings)
    HEARD.clear()
    with trio.fail_after(5000):  # virtual seconds: an hour of quiet plus a margin
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(serve, echo, ["127.0.0.1:0"], config=config))
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
