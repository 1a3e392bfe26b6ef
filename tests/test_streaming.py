"""Streamed responses: chunks an app sends without waiting go out together, never late.

What is checked is what a client and the kernel see: the bytes, their order, when they arrive
relative to what the app is waiting for, and how many TCP segments the server's socket sent
(from TCP_INFO, the kernel's own count).
"""

from __future__ import annotations

import logging
import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from tests.asgiserver import request, running
from trioserve import ServerConfig, serve
from trioserve._asgi_types import ASGIReceive, ASGISend, Message, Scope

Clock = trio.testing.MockClock

# struct tcp_info: tcpi_segs_out, a __u32 after 136 bytes (Linux 4.2 and later).
_SEGS_OUT_OFFSET = 136


def segments_sent(stream: trio.SocketStream) -> int:
    info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    count: int = struct.unpack_from("I", info, _SEGS_OUT_OFFSET)[0]
    return count


def system_task_names() -> list[str]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return [task.name for nursery in root.child_nurseries for task in nursery.child_tasks]


def chunk(body: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


START: Message = {"type": "http.response.start", "status": 200, "headers": []}


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


async def test_chunks_sent_without_waiting_leave_in_one_segment() -> None:
    """16 x 1 KiB with no wait between: one send, where a send per chunk made 17 segments."""
    pieces = [bytes([65 + i]) * 1024 for i in range(16)]

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        for piece in pieces:
            await send(chunk(piece))
        await send(chunk(b"", more=False))

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            reply = await client.response()
            assert reply is not None and reply.complete
            assert reply.body == b"".join(pieces)
            # The server's ACK of the request may go out on its own; the response is one.
            assert segments_sent(server.accepted[0]) <= 3


async def test_a_chunk_arrives_while_the_app_waits_for_something_else() -> None:
    """Kept bytes go out when the app's task yields, not at its next send (that would hang)."""
    seen = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        await send(chunk(b"first"))
        await send(chunk(b"second"))
        await seen.wait()  # set by the client only once it has both chunks
        await send(chunk(b"last", more=False))

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            expected = chunked(b"first", b"second")
            data = b""
            while not data.endswith(expected):
                data += await client.raw(1)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            seen.set()
            reply_tail = await client.raw(len(chunked(b"last")) + 5)
            assert reply_tail == chunked(b"last") + b"0\r\n\r\n"


async def test_a_slow_reader_gets_every_byte_in_order() -> None:
    """What the flusher cannot write at once is written by a task of its own, in order."""
    pieces = [b"%04d" % i * 256 for i in range(48)]  # 48 KiB: kept whole, then flushed
    waiting = trio.Event()
    go_on = trio.Event()
    tasks_while_waiting: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        for piece in pieces:
            await send(chunk(piece))
        # Every other task runs until it blocks: the flusher writes what the socket takes.
        await trio.testing.wait_all_tasks_blocked()
        tasks_while_waiting.extend(system_task_names())
        waiting.set()
        await go_on.wait()
        await send(chunk(b"end", more=False))

    with trio.fail_after(20):
        async with running(app, send_buffer=4096) as server:
            client = await server.connect(receive_buffer=4096)
            await client.send(request("/"))
            await waiting.wait()
            go_on.set()
            reply = await client.response()
            assert reply is not None and reply.complete
            assert reply.body == b"".join(pieces) + b"end"
    assert "trioserve streamed write" in tasks_while_waiting


async def test_past_the_keep_limit_the_app_waits_for_the_client() -> None:
    """1 MiB in 1 KiB chunks to a slow reader: written as it goes, with backpressure."""
    pieces = [b"%07d" % i * 128 for i in range(1024)]
    sent: list[int] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        for piece in pieces:
            await send(chunk(piece))
            sent.append(len(piece))
        await send(chunk(b"", more=False))

    with trio.fail_after(20):
        async with running(app, send_buffer=4096) as server:
            client = await server.connect(receive_buffer=4096)
            await client.send(request("/"))
            head = await client.raw(200)
            # The app cannot run ahead of the client by more than what is kept plus the
            # kernel's buffers: it is far from done when the client has read 200 bytes.
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert sum(sent) < 512 * 1024
            client.buffer = head + client.buffer
            reply = await client.response()
            assert reply is not None and reply.complete
            assert reply.body == b"".join(pieces)


async def test_write_timeout_applies_to_the_flushers_write(autojump_clock: Clock) -> None:
    outcome: list[str] = []
    failed = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        for _ in range(48):
            await send(chunk(b"x" * 1024))
        await trio.sleep(100)  # the client reads nothing meanwhile
        try:
            await send(chunk(b"y"))
        except OSError as exc:
            outcome.append(type(exc).__name__)
        failed.set()

    with trio.fail_after(300):
        async with running(app, ServerConfig(write_timeout=15), send_buffer=4096) as server:
            client = await server.connect(receive_buffer=4096)
            await client.send(request("/"))
            await failed.wait()
            assert outcome == ["ClientDisconnected"]
            await client.rest()  # the server closed its end


async def test_closing_while_the_flusher_writes_loses_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection cut off (here: the server cancelled) with a flusher write waiting."""
    waiting = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(START)
        for _ in range(48):
            await send(chunk(b"x" * 1024))
        await trio.testing.wait_all_tasks_blocked()
        waiting.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with running(app, send_buffer=4096) as server:
            client = await server.connect(receive_buffer=4096)
            await client.send(request("/"))
            await waiting.wait()
            assert "trioserve streamed write" in system_task_names()
        # The server is gone: its write task ended with it, without an error.
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        assert "trioserve streamed write" not in system_task_names()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_flusher_ends_with_serve() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await send(START)
        await send(chunk(b"a"))
        await send(chunk(b"b", more=False))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve, app, ["127.0.0.1:0"]))
            port = listeners[0].address[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request("/"))
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += await stream.receive_some()
            assert data.endswith(chunked(b"a", b"b") + b"0\r\n\r\n")
            await stream.aclose()
            assert "trioserve flusher" in system_task_names()
            nursery.cancel_scope.cancel()
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        assert "trioserve flusher" not in system_task_names()
