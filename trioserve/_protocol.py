"""The sans-I/O HTTP/1.1 server core of one connection: bytes and ASGI messages in, bytes out.

Theory of operation. The driver feeds whatever the socket gave with `receive_data` (`b""`
means EOF) and asks `next_request()` for the next thing to do:

- a `dict`: the ASGI scope of a request whose head is complete; run the app with it;
- `NEED_DATA`: read more (`phase` says which timeout applies: IDLE, HEAD or BODY);
- `CLOSED`: nothing more will come; close;
- an `HTTPError`: answer `error_response(err.status, ...)` and close; the app is not called.

While the app runs, `read_body()` turns buffered bytes into `(body, more_body)` (or
`NEED_DATA`, `PEER_GONE`, `HTTPError`), `take_continue()` says when to write
`100 Continue`, and `send(message, now)` turns the app's messages into the bytes to write,
raising `ASGIError` for anything the ASGI spec forbids. `end_request()` closes the cycle and
says whether the connection may carry another request.

The response head is held back until the first body message (the ASGI spec asks for that),
so a one-message response is one write, gets a Content-Length even if the app gave none, and
an app that fails before its first body message still gets a clean 500.

This module never imports trio; time comes in as an argument.
"""

from __future__ import annotations

import enum
from typing import Any, Final, Literal
from urllib.parse import unquote

from ._asgi_types import Message
from ._config import ServerConfig
from ._request import ChunkedDecoder, HTTPError, RequestHead, parse_head
from ._response import (
    ASGIError,
    ResponseHead,
    date_line,
    error_response,
    parse_response_headers,
    status_line,
)

__all__ = [
    "CLOSED",
    "CONTINUE_RESPONSE",
    "NEED_DATA",
    "PEER_GONE",
    "ASGIError",
    "HTTPCore",
    "HTTPError",
    "Phase",
    "Signal",
]


class Signal(enum.Enum):
    NEED_DATA = "need data"
    CLOSED = "closed"
    PEER_GONE = "peer gone"


NEED_DATA: Final = Signal.NEED_DATA
CLOSED: Final = Signal.CLOSED
PEER_GONE: Final = Signal.PEER_GONE


class Phase(enum.Enum):
    """What the connection waits for when it needs data; each has its own timeout."""

    IDLE = "idle"  # nothing buffered between requests: keep_alive_timeout
    HEAD = "head"  # part of a head buffered: header_timeout, then 408
    BODY = "body"  # skipping an unread request body: body_timeout


CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# 64 KiB of request body the app did not read is skipped to keep the connection; more than
# that costs more than a new connection, so the response closes it instead (nginx's
# lingering_close makes the same trade).
DISCARD_LIMIT: Final = 64 * 1024

# What a request can start with: a method's token byte, or CR/LF of an empty line before it.
_HEAD_START: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789\r\n" + bytes(range(65, 91)) + bytes(range(97, 123))
)

# Response states.
_NONE, _STARTED, _SENDING, _COMPLETE = range(4)
# Response framings.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NO_BODY = range(4)


def _body_bytes(message: Message) -> tuple[bytes, bool]:
    body = message.get("body", b"")
    if type(body) is not bytes:
        if not isinstance(body, (bytearray, memoryview)):
            raise ASGIError(f"http.response.body with a non-bytes body {type(body).__name__}")
        body = bytes(body)
    return body, bool(message.get("more_body", False))


class HTTPCore:
    """Protocol state of one HTTP/1.1 connection, one request at a time."""

    __slots__ = (
        "_buf",
        "_checked",
        "_chunked",
        "_client",
        "_continue",
        "_discarded",
        "_discarding",
        "_eof",
        "_framing",
        "_head",
        "_head_request",
        "_http10",
        "_length",
        "_listener",
        "_max_body",
        "_max_fields",
        "_max_head",
        "_remaining",
        "_response",
        "_root_path",
        "_root_path_b",
        "_scanned",
        "_server",
        "_server_line",
        "_state",
        "_tls",
        "body_bytes",
        "body_done",
        "keep_alive",
        "status",
        "upgrade",
    )

    def __init__(
        self,
        config: ServerConfig,
        *,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        state: dict[str, Any],
        listener: dict[str, object] | None = None,
        tls: dict[str, object] | None = None,
    ) -> None:
        self._max_head = config.max_header_size
        self._max_fields = config.max_header_count
        self._max_body = config.max_body_size
        self._root_path = config.root_path
        self._root_path_b = config.root_path.encode("utf-8")
        self._server_line = (
            b""
            if config.server_header is None
            else b"server: %s\r\n" % config.server_header.encode("ascii")
        )
        self._client = client
        self._server = server
        self._state = state
        self._listener = listener
        self._tls = tls  # the ASGI TLS extension, on a TLS connection
        self._buf = b""
        self._scanned = 0
        self._checked = 0
        self._eof = False
        self._discarding = False
        self._discarded = 0
        # The current request.
        self._http10 = False
        self._head_request = False
        self._remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self._continue = False
        self.keep_alive = True
        self.upgrade = False  # the current request asks to upgrade (GET, Connection: upgrade)
        self.body_done = True  # the app has been given the last http.request
        # The current response.
        self._response = _NONE
        self._head: ResponseHead | None = None
        self._framing = _LENGTH
        self._length = 0
        self.status = 0
        self.body_bytes = 0

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer; `b""` means the peer will send nothing more."""
        if data:
            self._buf = self._buf + data if self._buf else data
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def phase(self) -> Phase:
        if self._discarding:
            return Phase.BODY
        return Phase.HEAD if self._buf else Phase.IDLE

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Hand over the bytes after the current head, for a protocol switch (WebSocket)."""
        data, self._buf = self._buf, b""
        return data

    # -- request head -------------------------------------------------------------------------

    def next_request(
        self,
    ) -> dict[str, Any] | HTTPError | Literal[Signal.NEED_DATA, Signal.CLOSED]:
        """Parse the next request head from the buffer: see the module docstring."""
        if self._discarding:
            signal = self._discard()
            if signal is not None:
                return signal
        while True:
            buf = self._buf
            if not buf:
                return CLOSED if self._eof else NEED_DATA
            end = buf.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                if len(buf) > self._max_head:
                    return self._reject(431, "request head too large")
                # Only what arrived since the last look is checked: scanning the whole buffer
                # per read made a 16 KiB head sent a byte at a time cost 240 ms of CPU. A CR
                # that ended the last part is looked at again with what follows it.
                checked = self._checked
                if checked and buf[checked - 1] == 0x0D:
                    checked -= 1
                crlf = buf.count(b"\r\n", checked)
                if buf.count(b"\n", checked) != crlf:
                    # A bare LF would otherwise leave us waiting for a CRLFCRLF never sent.
                    return self._reject(400, "bare LF in the head")
                if buf.count(b"\r", checked) != crlf + (buf[-1] == 0x0D):
                    # So would a bare CR (a trailing CR may be half of a CRLF still to come).
                    return self._reject(400, "bare CR in the head")
                if buf[0] not in _HEAD_START:
                    # Not HTTP/1 at all (a TLS handshake, binary junk): no need to wait.
                    return self._reject(400, "not an HTTP/1 request")
                if self._eof:
                    return CLOSED
                self._scanned = max(0, len(buf) - 3)
                self._checked = len(buf)
                return NEED_DATA
            self._scanned = 0
            self._checked = 0
            if end + 4 > self._max_head:
                return self._reject(431, "request head too large")
            head = buf[:end]
            self._buf = buf[end + 4 :]
            # The rules an incomplete head is held to above, applied first here too: the answer
            # must not depend on how the bytes were split (a fuzzer found a bare LF answered
            # 400 in pieces but 505 whole, when the request line also had a bad version).
            crlf = head.count(b"\r\n")
            if head.count(b"\n") != crlf:
                return self._reject(400, "bare LF in the head")
            if head.count(b"\r") != crlf:
                return self._reject(400, "bare CR in the head")
            # RFC 9112 2.2: ignore empty lines before a request line (some clients send a
            # CRLF after a POST body).
            while head.startswith(b"\r\n"):
                head = head[2:]
            if head:
                break
        try:
            request = parse_head(head, self._max_fields)
        except HTTPError as exc:
            self.keep_alive = False
            return exc
        return self._begin(request)

    def _begin(self, request: RequestHead) -> dict[str, Any] | HTTPError:
        method = request.method
        self._head_request = method == "HEAD"
        self._http10 = request.http_version == "1.0"
        self.keep_alive = request.keep_alive
        self.upgrade = request.upgrade and method == "GET"
        self._response = _NONE
        self._head = None
        self.status = 0
        self.body_bytes = 0
        if method == "CONNECT":
            return self._reject(501, "CONNECT is not supported")
        self.body_done = False
        if request.chunked:
            self._chunked = ChunkedDecoder(self._max_head, self._max_fields, self._max_body)
            self._remaining = 0
            self._continue = request.expect_continue
        else:
            self._chunked = None
            length = request.content_length
            if self._max_body is not None and length > self._max_body:
                return self._reject(413, "request body larger than the server accepts")
            self._remaining = length
            self._continue = request.expect_continue and length > 0
        raw_path = request.raw_path
        path = unquote(raw_path.decode("ascii")) if b"%" in raw_path else raw_path.decode("ascii")
        if self._root_path and raw_path != b"*":
            path = self._root_path + path
            raw_path = self._root_path_b + raw_path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version,
            "method": method,
            "scheme": "http" if self._tls is None else "https",
            "path": path,
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": self._root_path,
            "headers": request.headers,
            "client": self._client,
            "server": self._server,
            "state": self._state.copy(),
            "extensions": self._tls_extensions()
            if self._tls is not None
            else {"trioserve.listener": self._listener}
            if self._listener
            else {},
        }

    def _tls_extensions(self) -> dict[str, Any]:
        extensions: dict[str, Any] = {"tls": self._tls}
        if self._listener:
            extensions["trioserve.listener"] = self._listener
        return extensions

    def _reject(self, status: int, detail: str) -> HTTPError:
        self.keep_alive = False
        return HTTPError(status, detail)

    # -- request body -------------------------------------------------------------------------

    def take_continue(self) -> bool:
        """True once if `100 Continue` must be written now (the app asked for the body)."""
        if self._continue:
            self._continue = False
            return not self._wire_done()
        return False

    def _wire_done(self) -> bool:
        decoder = self._chunked
        return self._remaining == 0 if decoder is None else decoder.done

    def read_body(
        self,
    ) -> tuple[bytes, bool] | HTTPError | Literal[Signal.NEED_DATA, Signal.PEER_GONE]:
        """The next `http.request` (body, more_body) from the buffer, or what to do instead."""
        self._continue = False
        decoder = self._chunked
        buf = self._buf
        if decoder is None:
            remaining = self._remaining
            if remaining == 0:
                self.body_done = True
                return b"", False
            if not buf:
                return PEER_GONE if self._eof else NEED_DATA
            if len(buf) <= remaining:
                data = buf
                self._buf = b""
            else:
                data = buf[:remaining]
                self._buf = buf[remaining:]
            remaining -= len(data)
            self._remaining = remaining
            if remaining:
                return data, True
            self.body_done = True
            return data, False
        try:
            pieces, used = decoder.decode(buf)
        except HTTPError as exc:
            self.keep_alive = False
            return exc
        if used:
            self._buf = buf[used:]
        done = decoder.done
        if pieces or done:
            self.body_done = done
            return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), not done
        return PEER_GONE if self._eof else NEED_DATA

    def _discard(self) -> Literal[Signal.NEED_DATA, Signal.CLOSED] | None:
        """Skip what is left of a body the app did not read; None once it is all gone."""
        while True:
            result = self.read_body()
            if type(result) is tuple:
                self._discarded += len(result[0])
                if self._discarded > DISCARD_LIMIT:
                    return CLOSED
                if not result[1]:
                    self._discarding = False
                    return None
            elif result is NEED_DATA:
                return NEED_DATA
            else:  # the peer went away, or the body was malformed: nothing to answer now
                return CLOSED

    # -- response -----------------------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        """True once response bytes have been handed out: a 500 can no longer replace them."""
        return self._response >= _SENDING

    @property
    def response_complete(self) -> bool:
        return self._response == _COMPLETE

    def send(self, message: Message, now: float) -> bytes:
        """Take one ASGI message from the app; return the bytes to write (maybe none)."""
        try:
            kind = message["type"]
        except (KeyError, TypeError):
            raise ASGIError(f"ASGI message without a type: {message!r}") from None
        state = self._response
        if kind == "http.response.body":
            if state == _SENDING:
                return self._more_body(message)
            if state == _STARTED:
                return self._first_body(message, now)
            if state == _NONE:
                raise ASGIError("http.response.body sent before http.response.start")
            raise ASGIError("http.response.body sent after the response was complete")
        if kind == "http.response.start":
            if state != _NONE:
                raise ASGIError("http.response.start sent twice")
            self._head = parse_response_headers(message)
            self.status = self._head.status
            self._response = _STARTED
            return b""
        raise ASGIError(f"unexpected ASGI message type {kind!r} for an http connection")

    def _first_body(self, message: Message, now: float) -> bytes:
        body, more = _body_bytes(message)
        head = self._head
        assert head is not None
        status = head.status
        length = head.content_length
        parts = [status_line(status), *head.lines]
        if self._head_request or status == 204 or status == 304:
            framing = _NO_BODY
            # 204 never carries a Content-Length (RFC 9110 8.6); HEAD and 304 may echo the
            # length a GET would have had.
            if length is None and body and not more and self._head_request:
                length = len(body)  # the body a GET would get, sent along and dropped here
            if length is not None and status != 204:
                parts.append(b"content-length: %d\r\n" % length)
            body = b""  # the app's body messages are read and dropped until more_body=False
        elif length is not None:
            framing = _LENGTH
            if len(body) > length or (not more and len(body) != length):
                raise ASGIError(f"response body does not match content-length {length}")
            parts.append(b"content-length: %d\r\n" % length)
        elif not more:
            # The whole body is in hand: a Content-Length beats chunked framing.
            framing = _LENGTH
            length = len(body)
            parts.append(b"content-length: %d\r\n" % length)
        elif not self._http10:
            framing = _CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            framing = _UNTIL_CLOSE
            self.keep_alive = False
        if head.close:
            self.keep_alive = False
        # The app answered without reading all of the body: skip the rest later only when it
        # is known to be small and the client is not still waiting for a 100 Continue.
        if (
            self.keep_alive
            and not self._wire_done()
            and (self._continue or self._chunked is not None or self._remaining > DISCARD_LIMIT)
        ):
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif self._http10:
            parts.append(b"connection: keep-alive\r\n")
        if not head.has_date:
            parts.append(date_line(now))
        if not head.has_server:
            parts.append(self._server_line)
        parts.append(b"\r\n")
        self._framing = framing
        self._length = length or 0
        self._response = _SENDING
        self._head = None
        if body:
            self._frame(parts, body, more)
        elif framing == _CHUNKED and not more:
            parts.append(b"0\r\n\r\n")
        if not more:
            self._response = _COMPLETE
        return b"".join(parts)

    def _more_body(self, message: Message) -> bytes:
        body, more = _body_bytes(message)
        framing = self._framing
        if framing == _LENGTH:
            sent = self.body_bytes + len(body)
            if sent > self._length or (not more and sent != self._length):
                raise ASGIError(f"response body does not match content-length {self._length}")
        if not more:
            self._response = _COMPLETE
        if framing == _NO_BODY:
            return b""
        if framing == _CHUNKED:
            parts: list[bytes] = []
            if body:
                self._frame(parts, body, more)
            elif not more:
                parts.append(b"0\r\n\r\n")
            return b"".join(parts)
        self.body_bytes += len(body)
        return body

    def _frame(self, parts: list[bytes], body: bytes, more: bool) -> None:
        self.body_bytes += len(body)
        if self._framing == _CHUNKED:
            parts.append(b"%x\r\n" % len(body))
            parts.append(body)
            parts.append(b"\r\n" if more else b"\r\n0\r\n\r\n")
        else:
            parts.append(body)

    def error_response(self, status: int, now: float, detail: str = "") -> bytes:
        """A complete response we answer ourselves (4xx refusals, 500); it closes."""
        self.keep_alive = False
        self.status = status
        self._response = _COMPLETE
        data = error_response(status, detail, now, self._server_line, head_only=self._head_request)
        self.body_bytes = len(data) - data.index(b"\r\n\r\n") - 4
        return data

    def end_request(self) -> bool:
        """Finish the current exchange; True if the connection may read another request."""
        if not (self.keep_alive and self._response == _COMPLETE):
            return False
        self._head_request = False
        if not self.body_done and not self._wire_done():
            self._discarding = True
            self._discarded = 0
        self.body_done = True
        self._continue = False
        return True
