"""The engine over a TLS session: slow readers, big bodies, streaming and pipelining.

The server encrypts into memory and writes with non-blocking sends, so a socket that takes
only part of the ciphertext is the case to get right: here a client with a small receive
window reads megabytes, and every byte must arrive once and in order. The client is trio's
own SSLStream, a TLS implementation independent of the server's.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from tests.asgiserver import request
from trioserve import ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._serve import serve

SIZE = 4 * 1024 * 1024


def pattern(size: int) -> bytes:
    block = bytes(range(256)) * 256  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


BODY = pattern(SIZE)


async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """/whole: 4 MiB in one message; /stream: 4 MiB in 1 KiB chunks, no waits between;
    /echo: the SHA-256 of the request body; anything else: its path."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if path == "/whole":
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/stream":
        for start in range(0, SIZE, 1024):
            piece = BODY[start : start + 1024]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/fail":
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("cut short on purpose")
    elif path == "/echo":
        digest = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            digest.update(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})
    else:
        await send({"type": "http.response.body", "body": path.encode()})


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    certfile = tmp_path / "server.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    return authority, certfile


@asynccontextmanager
async def serving(certfile: Path) -> AsyncIterator[int]:
    config = ServerConfig(certfile=str(certfile), access_log=False, lifespan="off")
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            partial(serve, app, ["127.0.0.1:0?tls=1"], config=config)
        )
        yield listener.address[1]
        nursery.cancel_scope.cancel()


async def connect(
    port: int, authority: trustme.CA, *, receive_buffer: int | None = None
) -> trio.SSLStream[trio.SocketStream]:
    sock = trio.socket.socket()
    if receive_buffer is not None:  # before connect, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    stream = trio.SSLStream(trio.SocketStream(sock), context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def read_response(stream: trio.SSLStream[trio.SocketStream], piece: int = 65536) -> bytes:
    """One response's body (content-length or chunked), read `piece` bytes at a time."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(piece)
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
        while len(rest) < length:
            rest += await stream.receive_some(piece)
        assert len(rest) == length  # nothing after it: one response at a time here
        return rest
    assert fields[b"transfer-encoding"] == b"chunked"
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += await stream.receive_some(piece)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += await stream.receive_some(piece)
        body += rest[:size]
        rest = rest[size + 2 :]
        if size == 0:
            return body


@pytest.mark.parametrize("path", ["/whole", "/stream"])
async def test_a_slow_reader_gets_every_byte_once_and_in_order(
    ca: tuple[trustme.CA, Path], path: str
) -> None:
    """4 MiB through a 4 KiB window: the socket takes a part of the ciphertext at a time."""
    authority, certfile = ca
    with trio.fail_after(30):
        async with serving(certfile) as port:
            stream = await connect(port, authority, receive_buffer=4096)
            await stream.send_all(request(path))
            body = await read_response(stream, piece=4096)
            assert len(body) == SIZE
            assert body == BODY
            # The connection is still in step: a second request on it.
            await stream.send_all(request("/again"))
            assert await read_response(stream) == b"/again"
            await stream.aclose()


async def test_a_large_upload_over_tls(ca: tuple[trustme.CA, Path]) -> None:
    authority, certfile = ca
    with trio.fail_after(30):
        async with serving(certfile) as port:
            stream = await connect(port, authority)
            await stream.send_all(
                request("/echo", f"content-length: {len(BODY)}", method="POST", body=BODY)
            )
            assert await read_response(stream) == hashlib.sha256(BODY).hexdigest().encode()
            await stream.aclose()


async def test_pipelined_requests_in_one_record_and_in_many(ca: tuple[trustme.CA, Path]) -> None:
    """Decrypted bytes the engine has not asked for yet must not wait for the socket."""
    authority, certfile = ca
    with trio.fail_after(10):
        async with serving(certfile) as port:
            stream = await connect(port, authority)
            await stream.send_all(request("/1") + request("/2") + request("/3"))
            for answer in (b"/1", b"/2", b"/3"):
                assert await read_response(stream) == answer
            for path in ("/4", "/5", "/6"):  # one record each, likely one TCP segment
                await stream.send_all(request(path))
            for answer in (b"/4", b"/5", b"/6"):
                assert await read_response(stream) == answer
            await stream.aclose()


async def test_the_server_ends_with_close_notify(ca: tuple[trustme.CA, Path]) -> None:
    """After `Connection: close` the client sees a clean TLS end, not a cut."""
    authority, certfile = ca
    with trio.fail_after(10):
        async with serving(certfile) as port:
            stream = await connect(port, authority)
            await stream.send_all(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert await read_response(stream) == b"/last"
            # SSLStream raises BrokenResourceError on an end without close_notify.
            assert await stream.receive_some() == b""
            await stream.aclose()


async def test_bytes_after_the_last_request_do_not_reset_the_answer(
    ca: tuple[trustme.CA, Path],
) -> None:
    """The lingering close over TLS: what the client sends after a `Connection: close`
    request is drained, so our close does not become a reset that destroys the answer."""
    authority, certfile = ca
    with trio.fail_after(10):
        async with serving(certfile) as port:
            stream = await connect(port, authority)
            last = b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            await stream.send_all(last + request("/ignored") + b"x" * 300_000)
            assert await read_response(stream) == b"/last"
            assert await stream.receive_some() == b""
            await stream.aclose()


async def test_a_response_cut_short_ends_without_close_notify(
    ca: tuple[trustme.CA, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """To an HTTP/1.0 client the body ends where the connection does: a clean TLS end after
    an app failure would make a cut body look complete."""
    authority, certfile = ca
    with trio.fail_after(10):
        async with serving(certfile) as port:
            stream = await connect(port, authority)
            await stream.send_all(b"GET /fail HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            with pytest.raises(trio.BrokenResourceError):  # no close_notify: a cut
                while chunk := await stream.receive_some():
                    data += chunk
            assert data.endswith(b"\r\n\r\npartial")
            await trio.aclose_forcefully(stream)
    assert any("cut short on purpose" in (r.exc_text or "") for r in caplog.records)
