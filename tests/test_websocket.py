"""WebSockets end to end: serve() on a real socket, the `websockets` client in a thread, and
Starlette WebSocket endpoints (plus a few raw frames for what a good client never sends)."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.lowlevel
import trustme
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from trioserve import ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._serve import serve

T = TypeVar("T")

SEEN: list[Any] = []
DISCONNECTED: list[trio.Event] = []  # set when the echo endpoint hears websocket.disconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept(
        subprotocol="chat" if "chat" in websocket.scope["subprotocols"] else None
    )
    SEEN.append(websocket.scope)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                SEEN.append(("disconnect", message["code"]))
                DISCONNECTED[0].set()
                return
            if message.get("text") == "close please":
                await websocket.close(code=4000, reason="bye")
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:
        SEEN.append(("disconnect", exc.code))
        DISCONNECTED[0].set()


async def refuse(websocket: WebSocket) -> None:
    await websocket.close()


async def deny_with_response(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"www-authenticate", b"Bearer")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"who are you?"})


async def app_routes(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] == "websocket" and scope["path"] == "/deny":
        await deny_with_response(scope, receive, send)
    else:
        await STARLETTE(scope, receive, send)


STARLETTE = Starlette(routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/refuse", refuse)])


@asynccontextmanager
async def serving(config: ServerConfig | None = None) -> AsyncIterator[tuple[str, trio.Nursery]]:
    config = (config or ServerConfig()).replace(access_log=False, lifespan="off")
    SEEN.clear()
    DISCONNECTED[:] = [trio.Event()]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(serve, app_routes, ["127.0.0.1:0"], config=config)
            )
            yield f"ws://127.0.0.1:{listener.address[1]}", nursery
            nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def open_ws(url: str, **kwargs: Any) -> ClientConnection:
    ws: ClientConnection = connect(url, open_timeout=5, close_timeout=5, **kwargs)
    return ws


def response_header(ws: ClientConnection, name: str) -> str | None:
    assert ws.response is not None
    return ws.response.headers.get(name)


async def test_echo_text_binary_fragments_ping_and_close_codes() -> None:
    async with serving() as (url, _):

        def talk() -> dict[str, Any]:
            with open_ws(url + "/echo?x=1", subprotocols=["chat"]) as ws:
                ws.send("héllo")
                text = ws.recv(timeout=5)
                ws.send(b"\x00\x01" * 1000)
                data = ws.recv(timeout=5)
                ws.send(["frag", "ment", "ed"])  # one message in three frames
                fragmented = ws.recv(timeout=5)
                pong = ws.ping(b"are you there").wait(timeout=5)
                ws.send("close please")
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=5)
                return {
                    "text": text,
                    "data": data,
                    "fragmented": fragmented,
                    "pong": pong,
                    "subprotocol": ws.subprotocol,
                    "extensions": response_header(ws, "Sec-WebSocket-Extensions"),
                    "close": (ws.close_code, ws.close_reason),
                }

        result = await in_thread(talk)
    assert result["text"] == "héllo"
    assert result["data"] == b"\x00\x01" * 1000
    assert result["fragmented"] == "fragmented"
    assert result["pong"] is True
    assert result["subprotocol"] == "chat"
    assert result["extensions"].startswith("permessage-deflate")
    assert result["close"] == (4000, "bye")
    scope = SEEN[0]
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert scope["path"] == "/echo" and scope["query_string"] == b"x=1"
    assert "method" not in scope and scope["subprotocols"] == ["chat"]


async def test_client_close_code_reaches_the_app() -> None:
    async with serving() as (url, _):

        def talk() -> None:
            with open_ws(url + "/echo") as ws:
                ws.send("x")
                ws.recv(timeout=5)
                ws.close(code=4321)

        await in_thread(talk)
        with trio.fail_after(5):
            await DISCONNECTED[0].wait()
    assert ("disconnect", 4321) in SEEN


async def test_deflate_off_by_config() -> None:
    async with serving(ServerConfig(websocket_per_message_deflate=False)) as (url, _):

        def talk() -> str | None:
            with open_ws(url + "/echo") as ws:
                ws.send("x" * 10_000)
                assert ws.recv(timeout=5) == "x" * 10_000
                return response_header(ws, "Sec-WebSocket-Extensions")

        assert await in_thread(talk) is None


async def test_refusals() -> None:
    async with serving() as (url, _):

        def status(path: str) -> tuple[int, bytes]:
            with pytest.raises(InvalidStatus) as info:
                open_ws(url + path)
            response = info.value.response
            return response.status_code, bytes(response.body or b"")

        assert (await in_thread(lambda: status("/refuse")))[0] == 403
        assert await in_thread(lambda: status("/deny")) == (401, b"who are you?")
        assert (await in_thread(lambda: status("/nowhere")))[0] == 403  # Starlette: no route


async def test_oversized_message_is_closed_with_1009() -> None:
    async with serving(ServerConfig(websocket_max_message_size=1024)) as (url, _):

        def talk() -> int | None:
            with open_ws(url + "/echo", compression=None) as ws:
                ws.send("a" * 1024)
                assert ws.recv(timeout=5) == "a" * 1024  # at the limit: fine
                # Over it, in fragments. The server's close may arrive while the client is
                # still sending (then send raises) or after (then recv does): both are right.
                with pytest.raises(ConnectionClosed):
                    ws.send(["b" * 600, "b" * 600])
                    ws.recv(timeout=5)
                return ws.close_code

        assert await in_thread(talk) == 1009


async def test_drain_sends_1001_going_away() -> None:
    config = ServerConfig(graceful_timeout=30)
    codes: list[int | None] = []
    with trio.fail_after(10):  # far less than graceful_timeout: the client's close ends it
        async with serving(config) as (url, nursery):

            def talk() -> None:
                with open_ws(url + "/echo") as ws:
                    ws.send("x")
                    assert ws.recv(timeout=5) == "x"
                    trio.from_thread.run_sync(nursery.cancel_scope.cancel)  # the drain starts
                    with pytest.raises(ConnectionClosed):
                        ws.recv(timeout=5)
                    codes.append(ws.close_code)

            with trio.CancelScope(shield=True):
                await in_thread(talk)
    assert codes == [1001]
    assert ("disconnect", 1001) in SEEN


def raw_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    return sock


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0xFE]) + len(payload).to_bytes(2, "big")
    )
    return bytes([(0x80 if fin else 0) | opcode]) + length + mask + body


def close_code_after(sock: socket.socket, frame: bytes) -> int:
    sock.sendall(frame)
    data = b""
    while len(data) < 4:
        chunk = sock.recv(1024)
        assert chunk, data
        data += chunk
    assert data[0] == 0x88, data  # a close frame
    return int.from_bytes(data[2:4], "big")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked_frame(0x1, b"\xff\xfe not utf-8"), 1007),  # invalid UTF-8 in a text message
        (masked_frame(0x3, b"x"), 1002),  # a reserved opcode
        (bytes([0x81, 0x01, ord("x")]), 1002),  # an unmasked client frame
        # Autobahn-style cases (sections 5, 6 and 7 of its test suite):
        (masked_frame(0x0, b"x"), 1002),  # a continuation with no message to continue
        (masked_frame(0x1, b"a", fin=False) + masked_frame(0x1, b"b"), 1002),  # text in text
        (masked_frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
        (masked_frame(0x9, b"x", fin=False), 1002),  # a fragmented control frame
        (masked_frame(0x8, (1005).to_bytes(2, "big")), 1002),  # a close code never sent
        (masked_frame(0x8, (999).to_bytes(2, "big")), 1002),  # a close code out of range
        (masked_frame(0x8, (1000).to_bytes(2, "big") + b"\xff"), 1007),  # bad UTF-8 reason
        # UTF-8 split across fragments is valid; the invalid byte after it is not.
        (
            masked_frame(0x1, "é".encode()[:1], fin=False)
            + masked_frame(0x0, "é".encode()[1:] + b"\xc0")
            + masked_frame(0x8, b""),
            1007,
        ),
    ],
)
async def test_protocol_errors_close_with_their_code(frame: bytes, code: int) -> None:
    async with serving() as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def talk() -> int:
            with raw_handshake(port) as sock:
                return close_code_after(sock, frame)

        assert await in_thread(talk) == code


async def test_ping_between_fragments_and_utf8_split_across_fragments() -> None:
    async with serving() as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def talk() -> bytes:
            with raw_handshake(port) as sock:
                text = "héllo wörld".encode()
                sock.sendall(
                    masked_frame(0x1, text[:2], fin=False)  # splits the é
                    + masked_frame(0x9, b"ping!")
                    + masked_frame(0x0, text[2:])
                )
                data = b""
                while len(data) < 2 + 5 + 2 + len(text):
                    chunk = sock.recv(1024)
                    assert chunk, data
                    data += chunk
                return data

        data = await in_thread(talk)
    # The pong first (control frames may come between fragments), then the echoed message.
    assert data[:7] == b"\x8a\x05ping!"
    assert data[7:] == bytes([0x81, len("héllo wörld".encode())]) + "héllo wörld".encode()


async def test_bad_handshakes_get_http_errors() -> None:
    async with serving() as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def ask(extra: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n" + extra + b"\r\n"
                )
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

        no_version = await in_thread(
            lambda: ask(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
        )
        assert no_version.startswith(b"HTTP/1.1 426 ")
        assert b"sec-websocket-version: 13" in no_version
        no_key = await in_thread(lambda: ask(b"Sec-WebSocket-Version: 13\r\n"))
        assert no_key.startswith(b"HTTP/1.1 400 ")


async def test_wss_on_a_tls_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    config = ServerConfig(certfile=str(certfile), access_log=False, lifespan="off")
    SEEN.clear()
    DISCONNECTED[:] = [trio.Event()]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(serve, app_routes, ["127.0.0.1:0?tls=1"], config=config)
            )
            url = f"wss://127.0.0.1:{listener.address[1]}/echo"

            def talk() -> str | bytes:
                with open_ws(url, ssl=client_context) as ws:
                    ws.send("over TLS")
                    return ws.recv(timeout=5)

            assert await in_thread(talk) == "over TLS"
            nursery.cancel_scope.cancel()
    assert SEEN[0]["scheme"] == "wss"
    assert SEEN[0]["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)


async def test_drain_then_a_ping_and_the_clients_close(caplog: pytest.LogCaptureFixture) -> None:
    """After our 1001 the client may still send a ping before its close: no pong, no error."""
    caplog.set_level("DEBUG", logger="trioserve.error")
    async with serving() as (url, nursery):
        port = int(url.rsplit(":", 1)[1])
        sock = await in_thread(lambda: raw_handshake(port))
        with sock:
            sock.sendall(masked_frame(0x1, b"hi"))
            assert await in_thread(lambda: sock.recv(4)) == b"\x81\x02hi"
            nursery.cancel_scope.cancel()  # the drain
            with trio.CancelScope(shield=True):
                close = await in_thread(lambda: sock.recv(1024))
                assert close[0] == 0x88 and close[2:4] == (1001).to_bytes(2, "big")
                sock.sendall(masked_frame(0x9, b"late") + masked_frame(0x8, close[2:4]))
                assert await in_thread(lambda: sock.recv(1024)) == b""  # closed, no pong
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert ("disconnect", 1001) in SEEN


async def test_one_huge_frame_is_refused_before_it_arrives() -> None:
    """A frame that announces 100 MB is closed with 1009 after its first few KiB."""
    async with serving(ServerConfig(websocket_max_message_size=1024)) as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def talk() -> bytes:
            with raw_handshake(port) as sock:
                header = bytes([0x82, 0xFF]) + (100_000_000).to_bytes(8, "big") + b"\0" * 4
                sock.sendall(header + b"x" * 4096)
                return sock.recv(100)

        close = await in_thread(talk)
    assert close[0] == 0x88 and close[2:4] == (1009).to_bytes(2, "big")
