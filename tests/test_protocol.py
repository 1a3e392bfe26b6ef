"""The sans-I/O core: bytes in, scopes and bytes out. Synchronous, table-driven, no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest

from trioserve._config import ServerConfig
from trioserve._protocol import (
    CLOSED,
    CONTINUE_RESPONSE,
    DISCARD_LIMIT,
    NEED_DATA,
    PEER_GONE,
    ASGIError,
    HTTPCore,
    HTTPError,
    Phase,
)
from trioserve._response import date_line, status_line

NOW = 1_700_000_000.0
LISTENER: dict[str, object] = {"kind": "tcp", "address": ("127.0.0.1", 8000)}


def make_core(**config: Any) -> HTTPCore:
    return HTTPCore(
        ServerConfig(**config),
        client=("10.0.0.1", 4321),
        server=("127.0.0.1", 8000),
        state={"db": "pool"},
        listener=LISTENER,
    )


def first_event(data: bytes, **config: Any) -> Any:
    core = make_core(**config)
    core.receive_data(data)
    return core.next_request()


def read_all_body(core: HTTPCore) -> bytes:
    body = b""
    while True:
        result = core.read_body()
        assert type(result) is tuple, result
        body += result[0]
        if not result[1]:
            return body


# -- request heads --------------------------------------------------------------------------


def test_scope_is_complete() -> None:
    scope = first_event(
        b"GET /caf%C3%A9/a%2Fb?x=1&y=%20 HTTP/1.1\r\n"
        b"Host: example.com\r\nX-Dup: 1\r\nAccept:  text/html  \r\nx-dup: 2\r\n\r\n",
        root_path="/api",
    )
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/café/a/b",
        "raw_path": b"/api/caf%C3%A9/a%2Fb",
        "query_string": b"x=1&y=%20",
        "root_path": "/api",
        "headers": [
            (b"host", b"example.com"),
            (b"x-dup", b"1"),
            (b"accept", b"text/html"),
            (b"x-dup", b"2"),
        ],
        "client": ("10.0.0.1", 4321),
        "server": ("127.0.0.1", 8000),
        "state": {"db": "pool"},
        "extensions": {"trioserve.listener": LISTENER},
    }


def test_state_is_a_shallow_copy_per_request() -> None:
    state = {"db": "pool"}
    core = HTTPCore(ServerConfig(), client=None, server=None, state=state)
    core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    scope = core.next_request()
    assert isinstance(scope, dict)
    scope["state"]["db"] = "changed"
    assert state == {"db": "pool"}
    assert scope["extensions"] == {}
    assert scope["client"] is None


@pytest.mark.parametrize(
    ("request_line", "method", "path", "raw_path", "query"),
    [
        (b"GET / HTTP/1.1", "GET", "/", b"/", b""),
        (b"get /x HTTP/1.1", "get", "/x", b"/x", b""),  # methods are case-sensitive tokens
        (b"OPTIONS * HTTP/1.1", "OPTIONS", "*", b"*", b""),
        (b"GET http://example.com/a/b?q=1 HTTP/1.1", "GET", "/a/b", b"/a/b", b"q=1"),
        (b"GET http://example.com HTTP/1.1", "GET", "/", b"/", b""),
        (b"GET http://example.com?q HTTP/1.1", "GET", "/", b"/", b"q"),
        (b"GET /%E9 HTTP/1.1", "GET", "/\ufffd", b"/%E9", b""),  # not UTF-8: replaced
        (b"PURGE /a?b?c HTTP/1.1", "PURGE", "/a", b"/a", b"b?c"),
    ],
)
def test_request_targets(
    request_line: bytes, method: str, path: str, raw_path: bytes, query: bytes
) -> None:
    scope = first_event(request_line + b"\r\nHost: x\r\n\r\n")
    assert isinstance(scope, dict)
    assert (scope["method"], scope["path"], scope["raw_path"], scope["query_string"]) == (
        method,
        path,
        raw_path,
        query,
    )


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # Request line.
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        # Request targets.
        (b"GET foo/bar HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT example.com HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        # Field lines.
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x07b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX(y): a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\nY: b\r\n\r\n", 400),
        # Host.
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        # Framing.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_refusals(data: bytes, status: int) -> None:
    core = make_core()
    core.receive_data(data)
    event = core.next_request()
    assert isinstance(event, HTTPError), event
    assert event.status == status
    assert not core.keep_alive
    response = core.error_response(event.status, NOW, event.detail)
    assert response.startswith(status_line(status))
    assert b"\r\nconnection: close\r\n" in response


def test_head_size_limit_holds_whatever_the_segmentation() -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
    # In one piece (h11 accepts this), and in small pieces.
    for size in (len(big), 1000):
        core = make_core()
        event: Any = NEED_DATA
        for start in range(0, len(big), size):
            core.receive_data(big[start : start + size])
            event = core.next_request()
            if event is not NEED_DATA:
                break
        assert isinstance(event, HTTPError) and event.status == 431
    # Exactly at the limit is fine.
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX: "
    exact = head + b"a" * (1024 - len(head) - 4) + b"\r\n\r\n"
    assert len(exact) == 1024
    assert isinstance(first_event(exact, max_header_size=1024), dict)
    refused = first_event(exact[:-4] + b"a\r\n\r\n", max_header_size=1024)
    assert isinstance(refused, HTTPError) and refused.status == 431


def test_field_count_limit() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    ok = first_event(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", max_header_count=10)
    assert isinstance(ok, dict)
    over = first_event(
        b"GET / HTTP/1.1\r\nHost: x\r\nX: y\r\n" + fields + b"\r\n", max_header_count=10
    )
    assert isinstance(over, HTTPError) and over.status == 431


@pytest.mark.parametrize(
    ("data", "version", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "1.1", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "1.1", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n", "1.1", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n", "1.1", True),
        (b"GET / HTTP/1.0\r\n\r\n", "1.0", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "1.0", True),
        # A 1.x minor version we do not know is read as 1.1 (RFC 9110 2.5).
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", "1.1", True),
        # Content-Length and Transfer-Encoding together: chunked wins, then close.
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            "1.1",
            False,
        ),
    ],
)
def test_versions_and_keep_alive(data: bytes, version: str, keep_alive: bool) -> None:
    core = make_core()
    core.receive_data(data)
    scope = core.next_request()
    assert isinstance(scope, dict)
    assert scope["http_version"] == version
    assert core.keep_alive is keep_alive


def test_empty_lines_before_a_request_are_ignored() -> None:
    core = make_core()
    core.receive_data(b"\r\n\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    scope = core.next_request()
    assert isinstance(scope, dict) and scope["path"] == "/a"


def test_incomplete_head_waits_then_eof_closes() -> None:
    core = make_core()
    phases = [core.phase]
    core.receive_data(b"GET / HTTP/1.1\r\nHo")
    assert core.next_request() is NEED_DATA
    phases.append(core.phase)
    assert phases == [Phase.IDLE, Phase.HEAD]
    core.receive_data(b"")
    assert core.next_request() is CLOSED


def test_complete_request_before_eof_is_still_served() -> None:
    core = make_core()
    core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    core.receive_data(b"")
    assert isinstance(core.next_request(), dict)


def test_max_body_size_from_content_length() -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
    event = first_event(data, max_body_size=10)
    assert isinstance(event, HTTPError) and event.status == 413
    assert isinstance(first_event(data, max_body_size=11), dict)


# -- every segmentation gives the same result --------------------------------------------------

STREAM = (
    b"POST /upload?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;name="v a\\"l";flag\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n'
    b"\r\nGET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    b"GARBAGE AFTER CLOSE\r\n\r\n"
)


def run_stream(pieces: list[bytes]) -> list[tuple[str, bytes]]:
    """Feed `pieces` one at a time; answer each request; return (path, body) seen."""
    core = make_core()
    pending = list(pieces)
    seen: list[tuple[str, bytes]] = []

    def more() -> None:
        core.receive_data(pending.pop(0) if pending else b"")

    while True:
        event = core.next_request()
        if event is NEED_DATA:
            more()
            continue
        if not isinstance(event, dict):
            assert event is CLOSED
            return seen
        body = b""
        while True:
            result = core.read_body()
            if result is NEED_DATA:
                more()
                continue
            assert type(result) is tuple, result
            body += result[0]
            if not result[1]:
                break
        seen.append((event["path"], body))
        core.send({"type": "http.response.start", "status": 200}, NOW)
        core.send({"type": "http.response.body", "body": b"ok"}, NOW)
        if not core.end_request():
            return seen


EXPECTED = [("/upload", b"hello"), ("/c", b"abcde"), ("/last", b"")]


def test_whole_stream() -> None:
    assert run_stream([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert run_stream([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_every_split_in_two_and_three() -> None:
    n = len(STREAM)
    for i in range(1, n):
        assert run_stream([STREAM[:i], STREAM[i:]]) == EXPECTED, i
    for i, j in itertools.combinations(range(1, n, 7), 2):
        assert run_stream([STREAM[:i], STREAM[i:j], STREAM[j:]]) == EXPECTED, (i, j)


# -- request bodies ------------------------------------------------------------------------------


def body_core(head_fields: bytes, body: bytes, **config: Any) -> HTTPCore:
    core = make_core(**config)
    core.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + head_fields + b"\r\n" + body)
    assert isinstance(core.next_request(), dict)
    return core


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'5;a="x\ry"\r\nhello\r\n0\r\n\r\n', 400),  # bare CR in a chunk extension
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\nhello\r\n0\r\n\r\n", 400),
        (b"5 \r\nhello\r\n0\r\n\r\n", 400),
        (b"-5\r\nhello\r\n0\r\n\r\n", 400),
        (b"x\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\r\nhelloXX0\r\n\r\n", 400),  # data not followed by CRLF
        (b"11111111111111111\r\n", 400),  # more than 16 hex digits
        (b"0\r\nBad Trailer\r\n\r\n", 400),
        (b"0\r\nX: a\x00\r\n\r\n", 400),
    ],
)
def test_malformed_chunked_bodies(body: bytes, status: int) -> None:
    core = body_core(b"Transfer-Encoding: chunked\r\n", body)
    results = [core.read_body() for _ in range(3)]
    errors = [r for r in results if isinstance(r, HTTPError)]
    assert errors and errors[0].status == status, results
    assert not core.keep_alive


def test_chunked_body_over_max_body_size() -> None:
    core = body_core(
        b"Transfer-Encoding: chunked\r\n", b"8\r\n12345678\r\n3\r\n123\r\n", max_body_size=10
    )
    first = core.read_body()
    assert isinstance(first, HTTPError) and first.status == 413


def test_chunked_pieces_are_joined_per_read() -> None:
    core = body_core(b"Transfer-Encoding: chunked\r\n", b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")
    assert core.read_body() == (b"abc", False)
    assert core.body_done


def test_body_in_pieces_and_eof() -> None:
    core = body_core(b"Content-Length: 10\r\n", b"12345")
    assert core.read_body() == (b"12345", True)
    assert core.read_body() is NEED_DATA
    core.receive_data(b"")
    assert core.read_body() is PEER_GONE


def test_no_body_gives_one_empty_message() -> None:
    core = make_core()
    core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    core.next_request()
    assert not core.body_done
    assert core.read_body() == (b"", False)
    assert core.body_done


@pytest.mark.parametrize(
    ("fields", "expect_continue"),
    [
        (b"Content-Length: 5\r\nExpect: 100-continue\r\n", True),
        (b"Content-Length: 5\r\nExpect: 100-Continue\r\n", True),
        (b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n", True),
        (b"Content-Length: 0\r\nExpect: 100-continue\r\n", False),
        (b"Content-Length: 5\r\n", False),
    ],
)
def test_100_continue_only_when_the_body_is_asked_for(
    fields: bytes, expect_continue: bool
) -> None:
    core = body_core(fields, b"")
    assert core.take_continue() is expect_continue
    assert core.take_continue() is False
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


# -- responses ---------------------------------------------------------------------------------


def exchange(
    request: bytes, messages: list[dict[str, Any]], **config: Any
) -> tuple[HTTPCore, bytes]:
    core = make_core(**config)
    core.receive_data(request)
    assert isinstance(core.next_request(), dict)
    out = b"".join(core.send(m, NOW) for m in messages)
    return core, out


def parse_response(data: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes, bool]:
    """Read our bytes with h11 as an independent client: (response, body, complete)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return response, body, True
        else:
            return response, body, False


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_one_message_response_gets_a_content_length_and_standard_headers() -> None:
    core, out = exchange(GET, [start(200, [(b"Content-Type", b"text/plain")]), body(b"hi")])
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\n"
        + date_line(NOW)
        + b"server: trioserve\r\n\r\nhi"
    )
    assert core.response_complete and core.keep_alive
    assert core.status == 200 and core.body_bytes == 2


def test_server_header_off_and_app_date_and_server_kept() -> None:
    _, out = exchange(GET, [start(200), body(b"x")], server_header=None)
    assert b"server:" not in out.lower()
    _, out = exchange(
        GET, [start(200, [(b"Date", b"yesterday"), (b"Server", b"mine")]), body(b"x")]
    )
    assert out.lower().count(b"date:") == 1 and b"Date: yesterday" in out
    assert out.lower().count(b"server:") == 1 and b"Server: mine" in out


@pytest.mark.parametrize("code", [200, 201, 299, 404, 418, 431, 499, 500, 599])
def test_reason_phrases_are_never_empty(code: int) -> None:
    line = status_line(code)
    assert line.startswith(b"HTTP/1.1 %d " % code) and len(line) > len(b"HTTP/1.1 200 \r\n")


def test_streamed_response_is_chunked() -> None:
    core, out = exchange(GET, [start(), body(b"ab", True), body(b"", True), body(b"c", True)])
    assert b"transfer-encoding: chunked\r\n" in out and not core.response_complete
    out += core.send(body(), NOW)
    response, data, complete = parse_response(out)
    assert (response.status_code, data, complete) == (200, b"abc", True)
    assert out.endswith(b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
    assert core.body_bytes == 3


def test_app_content_length_is_enforced() -> None:
    core, out = exchange(GET, [start(200, [(b"content-length", b"5")]), body(b"ab", True)])
    out += core.send(body(b"cde"), NOW)
    assert parse_response(out)[1:] == (b"abcde", True)
    with pytest.raises(ASGIError, match="content-length"):
        exchange(GET, [start(200, [(b"content-length", b"5")]), body(b"abcdef")])
    with pytest.raises(ASGIError, match="content-length"):
        exchange(GET, [start(200, [(b"content-length", b"5")]), body(b"abc")])
    core, _ = exchange(GET, [start(200, [(b"content-length", b"5")]), body(b"abc", True)])
    with pytest.raises(ASGIError, match="content-length"):
        core.send(body(b"abc"), NOW)


def test_http10_client_gets_close_delimited_stream() -> None:
    core, out = exchange(b"GET / HTTP/1.0\r\n\r\n", [start(), body(b"ab", True), body(b"c")])
    assert b"transfer-encoding" not in out and b"content-length" not in out
    assert b"connection: close\r\n" in out and out.endswith(b"\r\n\r\nabc")
    assert not core.keep_alive


def test_http10_keep_alive_with_a_known_length() -> None:
    core, out = exchange(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [start(), body(b"a")]
    )
    assert b"connection: keep-alive\r\n" in out and core.keep_alive


@pytest.mark.parametrize(
    ("request_line", "status", "length_kept"),
    [
        (b"HEAD / HTTP/1.1", 200, True),
        (b"GET / HTTP/1.1", 204, False),
        (b"GET / HTTP/1.1", 304, True),
    ],
)
def test_responses_without_a_body(request_line: bytes, status: int, length_kept: bool) -> None:
    core, out = exchange(
        request_line + b"\r\nHost: x\r\n\r\n",
        [start(status, [(b"content-length", b"7")]), body(b"ignored")],
    )
    assert out.endswith(b"\r\n\r\n") and b"ignored" not in out
    assert (b"content-length: 7" in out) is length_kept
    assert core.response_complete and core.keep_alive and core.body_bytes == 0


def test_head_response_streamed_without_length_has_no_body() -> None:
    core, out = exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", [start(), body(b"ab", True)])
    out += core.send(body(b"c"), NOW)
    assert out.endswith(b"\r\n\r\n") and b"chunked" not in out


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([body(b"x")], "before http.response.start"),
        ([start(), start()], "sent twice"),
        ([start(), body(), body()], "after the response was complete"),
        ([{"type": "http.response.trailers"}], "unexpected ASGI message type"),
        ([{"status": 200}], "without a type"),
        ([{"type": "http.response.start"}], "without a status"),
        ([start(100)], "invalid status"),
        ([start(600)], "invalid status"),
        ([{"type": "http.response.start", "status": True}], "invalid status"),
        ([start(200, [(b"X", b"a\r\nInjected: 1")])], "invalid response header"),
        ([start(200, [(b"X", b"a\nb")])], "invalid response header"),
        ([start(200, [(b"X", b"a\x00")])], "invalid response header"),
        ([start(200, [(b"Bad Name", b"v")])], "invalid response header"),
        ([start(200, [(b"X:Y", b"v")])], "invalid response header"),
        ([start(200, [(b"", b"v")])], "invalid response header"),
        ([start(200, [("str", "value")])], "malformed response headers"),  # type: ignore[list-item]
        ([start(200, [(b"only-one",)])], "malformed response headers"),  # type: ignore[list-item]
        ([start(200, [(b"content-length", b"x")])], "content-length"),
        ([start(200, [(b"content-length", b"1"), (b"content-length", b"2")])], "conflicting"),
        ([start(200, [(b"transfer-encoding", b"gzip")])], "transfer-encoding"),
        ([start(), {"type": "http.response.body", "body": "text"}], "non-bytes body"),
    ],
)
def test_app_mistakes_raise_asgi_errors(messages: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(ASGIError, match=error):
        exchange(GET, messages)


def test_a_failed_start_leaves_room_for_a_500() -> None:
    core = make_core()
    core.receive_data(GET)
    core.next_request()
    with pytest.raises(ASGIError):
        core.send(start(200, [(b"X", b"\r\n")]), NOW)
    assert not core.response_started
    out = core.error_response(500, NOW)
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in out and not core.end_request()


@pytest.mark.parametrize(
    ("request_bytes", "app_headers", "closes"),
    [
        (GET, [], False),
        (GET, [(b"Connection", b"close")], True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", [], True),
    ],
)
def test_connection_close_is_written_when_the_connection_will_close(
    request_bytes: bytes, app_headers: list[tuple[bytes, bytes]], closes: bool
) -> None:
    core, out = exchange(request_bytes, [start(200, app_headers), body(b"x")])
    assert out.lower().count(b"connection:") == (1 if closes else 0)
    assert (b"connection: close\r\n" in out) is closes
    assert core.end_request() is not closes


def test_app_transfer_encoding_chunked_is_ours_to_write() -> None:
    _, out = exchange(GET, [start(200, [(b"Transfer-Encoding", b"chunked")]), body(b"a", True)])
    assert out.lower().count(b"transfer-encoding") == 1


def test_bytes_after_a_close_request_do_not_spoil_its_response() -> None:
    core = make_core()
    core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\x00\x01junk")
    assert isinstance(core.next_request(), dict)
    out = core.send(start(), NOW) + core.send(body(b"fine"), NOW)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"fine")
    assert core.end_request() is False


# -- unread request bodies -------------------------------------------------------------------


def test_small_unread_body_is_skipped_to_keep_the_connection() -> None:
    core = make_core()
    core.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    core.next_request()
    out = core.send(start(), NOW) + core.send(body(b"x"), NOW)
    assert b"connection" not in out
    assert core.end_request()
    assert core.phase is Phase.BODY
    assert core.next_request() is NEED_DATA
    core.receive_data(b"67890GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    scope = core.next_request()
    assert isinstance(scope, dict) and scope["path"] == "/next"


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: %d\r\n" % (DISCARD_LIMIT + 1),
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nExpect: 100-continue\r\n",
    ],
)
def test_unread_body_that_cannot_be_skipped_closes(fields: bytes) -> None:
    core = make_core()
    core.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    core.next_request()
    out = core.send(start(), NOW) + core.send(body(b"x"), NOW)
    assert b"connection: close\r\n" in out
    assert not core.end_request()


def test_date_line_is_cached_per_second() -> None:
    first = date_line(NOW)
    assert date_line(NOW + 0.5) is first
    assert date_line(NOW + 1) != first
    assert first == b"date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"


# -- agreement with h11 on requests both accept ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        GET,
        b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: a/b\r\n"
        b"Content-Length: 0\r\nX-Empty:\r\nX-Spaces:   v  v \t\r\n\r\n",
        b"GET / HTTP/1.0\r\nUser-Agent: \x80\xff obs-text\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nhost: x\r\nAccept: */*\r\nAccept: text/html\r\n\r\n",
    ],
)
def test_agrees_with_h11(data: bytes) -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    scope = first_event(data)
    assert scope["method"].encode() == request.method
    assert scope["raw_path"] + (
        b"?" + scope["query_string"] if scope["query_string"] else b""
    ) == (request.target)
    assert scope["headers"] == [(name, value) for name, value in request.headers]
    assert scope["http_version"].encode() == request.http_version
