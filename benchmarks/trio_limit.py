"""The trio limit: trio's streams answering hello world with a canned reply, and nothing else.

    python trio_limit.py apps:hello PORT

It exists as a reference line for the benchmark: the most req/s (and the least CPU per request)
that any HTTP server written on `trio.SocketStream` can reach on this machine. It accepts with
`trio.serve_tcp`, reads with `receive_some`, counts complete request heads by their blank-line
terminator and answers each with `send_all`: no HTTP parsing, no ASGI, no app, no timeouts.

It bounds servers built on trio's streams rather than trioserve as such: trioserve reads and
writes its sockets with trio's low-level calls (non-blocking `recv` and `send`, `wait_readable`),
which skip the scheduler pass that `SocketStream` takes after every successful `recv` and `send`,
so the gap between the two understates what HTTP and ASGI cost trioserve.

The reply is byte-for-byte what trioserve sends for `apps:hello` (the same status line and
headers, `server: trioserve` included, with the date refreshed once a second), so both put the
same bytes on the wire. Request bodies are not understood: wrk's GETs have none. Only `apps:hello`
is accepted, as that is the only app it can stand in for. It listens on 127.0.0.1 only, and
SIGTERM or SIGINT stops it with exit status 0.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from email.utils import formatdate

import trio

__all__ = ["TERMINATOR", "CannedReply", "count_heads", "main"]

TERMINATOR = b"\r\n\r\n"
APP = "apps:hello"
_BODY = b"Hello, world!"  # apps.HELLO_BODY
_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain\r\n"
    b"content-length: %d\r\n"
    b"date: %s\r\n"
    b"server: trioserve\r\n"
    b"\r\n"
)


class CannedReply:
    """The hello-world response, rebuilt only when the wall-clock second changes."""

    def __init__(self) -> None:
        self._second = -1
        self._reply = b""

    def current(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            date = formatdate(second, usegmt=True).encode("ascii")
            self._reply = _HEAD % (len(_BODY), date) + _BODY
            self._second = second
        return self._reply


def count_heads(tail: bytes, data: bytes) -> tuple[int, bytes]:
    """Request heads completed by `data`, and what to carry into the next read.

    `tail` is the carry from the previous read: up to the last three bytes after the last
    terminator seen, so that a terminator split across two reads is counted once, in the read
    that completes it, and the bytes of one terminator never count towards the next.
    """
    buffer = tail + data if tail else data
    heads = buffer.count(TERMINATOR)
    if heads:
        buffer = buffer[buffer.rindex(TERMINATOR) + len(TERMINATOR) :]
    return heads, buffer[-(len(TERMINATOR) - 1) :]


async def _answer(reply: CannedReply, stream: trio.SocketStream) -> None:
    tail = b""
    try:
        while data := await stream.receive_some():
            heads, tail = count_heads(tail, data)
            if heads:
                await stream.send_all(reply.current() * heads)
    except trio.BrokenResourceError:
        pass  # the client reset the connection; serve_tcp closes our end


async def _serve(port: int) -> None:
    handler = functools.partial(_answer, CannedReply())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.serve_tcp, handler, port, host="127.0.0.1"))
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != APP or not argv[1].isdigit():
        print(f"usage: trio_limit.py {APP} PORT (it serves nothing else)", file=sys.stderr)
        return 2
    trio.run(_serve, int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
