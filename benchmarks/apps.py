"""The ASGI apps the benchmark serves: one module that every server imports the same way.

Each server is started as `SERVER apps:NAME` with this folder on `PYTHONPATH`, so trioserve and
its peers run byte-for-byte the same application code. The apps are deliberately tiny: what the
benchmark measures is the server, so an app does no work beyond what its scenario names.

- `hello`: a 13-byte `text/plain` response with a `Content-Length`. It never calls `receive()`,
  as a minimal hello-world app does not.
- `stream`: 16 body messages of 1 KiB each and no `Content-Length`, so HTTP/1.1 servers send it
  chunked; it measures the per-chunk cost of `http.response.body` with `more_body`.
- `big`: one 64 KiB body with a `Content-Length`.
- `upload`: reads the whole request body (the upload scenario sends 1 MiB) and answers its length
  in decimal.

All four answer the lifespan protocol, so servers that run lifespan by default start cleanly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "BIG_SIZE",
    "HELLO_BODY",
    "STREAM_CHUNK",
    "STREAM_CHUNKS",
    "big",
    "hello",
    "stream",
    "upload",
]

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY = b"Hello, world!"
STREAM_CHUNK = b"x" * 1024
STREAM_CHUNKS = 16
BIG_SIZE = 64 * 1024

_BIG_BODY = b"x" * BIG_SIZE
_TEXT = (b"content-type", b"text/plain")
_HELLO_HEADERS = [_TEXT, (b"content-length", b"%d" % len(HELLO_BODY))]
_STREAM_HEADERS = [_TEXT]
_BIG_HEADERS = [_TEXT, (b"content-length", b"%d" % BIG_SIZE)]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
    await send({"type": "http.response.body", "body": HELLO_BODY})


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def big(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _BIG_HEADERS})
    await send({"type": "http.response.body", "body": _BIG_BODY})


async def upload(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: nobody to answer
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"%d" % size
    headers = [_TEXT, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
