"""The connection driver end to end: real sockets on 127.0.0.1, httpx and raw bytes.

Tests where time matters run on `autojump_clock`: the clock jumps as soon as every task
(server and client) is blocked, so a 60 s timeout takes no real time.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.asgiserver import (
    LISTENER_INFO,
    RawClient,
    hello,
    read_body,
    request,
    respond,
    running,
)
from trioserve._asgi_types import ASGIReceive, ASGISend, Message, Scope
from trioserve._config import ServerConfig

Clock = trio.testing.MockClock


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    body = await read_body(receive)
    await respond(send, 200, scope["method"].encode() + b" " + scope["raw_path"] + b" " + body)


# -- the everyday path -----------------------------------------------------------------------


async def test_httpx_get_post_and_the_scope() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(scope)
        await echo(scope, receive, send)

    with trio.fail_after(10):
        async with running(app) as server, httpx.AsyncClient(base_url=server.url) as client:
            got = await client.get("/a%20b?x=1", headers={"X-Test": "1"})
            assert (got.status_code, got.text) == (200, "GET /a%20b ")
            assert got.headers["content-length"] == "11"
            assert got.headers["server"] == "trioserve"
            assert "date" in got.headers
            got = await client.post("/p", content=b"data" * 1000)
            assert got.text == "POST /p " + "data" * 1000
    scope = seen[0]
    assert scope["path"] == "/a b" and scope["query_string"] == b"x=1"
    assert (b"x-test", b"1") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {"from": "lifespan"}
    assert scope["extensions"] == {"trioserve.listener": LISTENER_INFO}
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    # Both requests came over one kept-alive connection.
    assert len(server.accepted) == 1


async def test_chunked_both_ways() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            if message["body"]:
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
            if not message["more_body"]:
                break
        await send({"type": "http.response.body", "body": b"!"})

    async def pieces() -> Any:
        for piece in (b"one ", b"two ", b"three"):
            yield piece

    with trio.fail_after(10):
        async with running(app) as server, httpx.AsyncClient(base_url=server.url) as client:
            got = await client.post("/", content=pieces())
            assert got.text == "one two three!"
            assert got.headers["transfer-encoding"] == "chunked"


async def test_pipelined_requests_are_answered_in_order() -> None:
    with trio.fail_after(10):
        async with running(echo) as server:
            client = await server.connect()
            await client.send(
                request("/1")
                + request("/2", "Content-Length: 3", method="POST", body=b"abc")
                + request(
                    "/3", "Transfer-Encoding: chunked", method="PUT", body=b"1\r\nx\r\n0\r\n\r\n"
                )
                + request("/4", "Connection: close")
            )
            bodies = []
            headers: dict[str, str] = {}
            for method in ("GET", "POST", "PUT", "GET"):
                reply = await client.response(method)
                assert reply is not None and reply.complete
                bodies.append(reply.body)
                headers = reply.headers
            assert bodies == [b"GET /1 ", b"POST /2 abc", b"PUT /3 x", b"GET /4 "]
            assert headers["connection"] == "close"
            assert await client.rest() == b""


async def test_head_has_no_body() -> None:
    with trio.fail_after(10):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(request("/x", method="HEAD") + request("/y"))
            head = await client.response("HEAD")
            assert head is not None
            assert head.headers["content-length"] == "8" and head.body == b""
            get = await client.response()
            assert get is not None and get.body == b"hello /y"


async def test_http10_client() -> None:
    with trio.fail_after(10):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(b"GET /old HTTP/1.0\r\n\r\n")
            data = await client.rest()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"connection: close\r\n" in data and data.endswith(b"\r\n\r\nhello /old")


# -- 100-continue --------------------------------------------------------------------------


async def test_100_continue_is_sent_when_the_app_reads(autojump_clock: Clock) -> None:
    reading = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await reading.wait()
        await echo(scope, receive, send)

    head = request("/", "Content-Length: 5", "Expect: 100-continue", method="POST")
    with trio.fail_after(30):
        async with running(app) as server:
            client = await server.connect()
            await client.send(head)
            with trio.move_on_after(5):
                await client.raw(1)
                pytest.fail("100 Continue sent before the app asked for the body")
            reading.set()
            assert await client.raw(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
            await client.send(b"hello")
            reply = await client.response("POST")
            assert reply is not None and reply.body == b"POST / hello"
            assert "connection" not in reply.headers


async def test_100_continue_never_sent_if_the_app_answers_first() -> None:
    with trio.fail_after(10):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(
                request("/", "Content-Length: 5", "Expect: 100-continue", method="POST")
            )
            data = await client.rest()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"100 Continue" not in data and b"connection: close\r\n" in data


# -- clients that leave ------------------------------------------------------------------------


async def test_disconnect_is_delivered_to_a_waiting_receive() -> None:
    got: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        got.append(await receive())
        got.append(await receive())  # waits for the client to leave
        done.set()

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            while not server.ctx.in_flight:
                await trio.testing.wait_all_tasks_blocked()
            await client.aclose()
            await done.wait()
    assert got == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_disconnect_while_the_app_is_sending() -> None:
    """A streaming app that also listens (Starlette's pattern before ASGI 2.4) sees both."""
    outcome: dict[str, object] = {}
    done = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            outcome["listener"] = "disconnect"

        async def stream() -> None:
            piece = {"type": "http.response.body", "body": b"x" * 4096, "more_body": True}
            try:
                while True:
                    await send(piece)
            except OSError as exc:
                outcome["send"] = type(exc).__name__

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                nursery.start_soon(stream)
        finally:
            done.set()

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            await client.raw(10_000)
            await client.aclose()
            await done.wait()
    assert outcome == {"listener": "disconnect", "send": "ClientDisconnected"}


async def test_early_close_during_body_upload() -> None:
    got: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        while (message := await receive())["type"] == "http.request":
            got.append(message)
        got.append(message)
        done.set()

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/", "Content-Length: 100", method="POST", body=b"part"))
            while not got:
                await trio.testing.wait_all_tasks_blocked()
            await client.aclose()
            await done.wait()
    assert got[0] == {"type": "http.request", "body": b"part", "more_body": True}
    assert got[-1] == {"type": "http.disconnect"}


# -- refusals: the app is never called ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: \x07\r\n\r\n", 400),
        (b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ],
)
async def test_refused_requests(data: bytes, status: int) -> None:
    calls: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        calls.append(scope)
        await hello(scope, receive, send)

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(data + request("/next"))
            reply = await client.response()
            assert reply is not None and reply.status == status
            assert reply.headers["connection"] == "close"
            assert await client.rest() == b""
    assert calls == []


async def test_content_length_with_transfer_encoding_answers_then_closes() -> None:
    with trio.fail_after(10):
        async with running(echo) as server:
            client = await server.connect()
            smuggled = request(
                "/a",
                "Content-Length: 4",
                "Transfer-Encoding: chunked",
                method="POST",
                body=b"3\r\nabc\r\n0\r\n\r\n",
            )
            await client.send(smuggled + request("/b"))
            reply = await client.response("POST")
            assert reply is not None and reply.body == b"POST /a abc"
            assert reply.headers["connection"] == "close"
            assert await client.rest() == b""


async def test_bytes_after_a_close_request_are_ignored() -> None:
    with trio.fail_after(10):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(request("/", "Connection: close") + b"\x00garbage\r\n\r\n")
            reply = await client.response()
            assert reply is not None and (reply.status, reply.body) == (200, b"hello /")
            assert await client.rest() == b""


async def test_max_body_size(autojump_clock: Clock) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        while (message := await receive())["type"] == "http.request":
            got.append(message)
        got.append(message)
        await respond(send, 200, b"too late")

    config = ServerConfig(max_body_size=10)
    with trio.fail_after(30):
        async with running(app, config) as server:
            client = await server.connect()
            await client.send(request("/", "Content-Length: 11", method="POST"))
            reply = await client.response("POST")
            assert reply is not None and reply.status == 413
            assert got == []
            # A chunked body crosses the limit while the app reads it.
            client = await server.connect()
            chunked = b"6\r\n123456\r\n6\r\n789012\r\n0\r\n\r\n"
            await client.send(
                request("/", "Transfer-Encoding: chunked", method="POST", body=chunked)
            )
            reply = await client.response("POST")
            assert reply is not None and reply.status == 413
            assert reply.headers["connection"] == "close"
            assert await client.rest() == b""
    assert got[-1] == {"type": "http.disconnect"}


async def test_limit_concurrency() -> None:
    entered = trio.Event()
    release = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        entered.set()
        await release.wait()
        await hello(scope, receive, send)

    with trio.fail_after(10):
        async with running(app, ServerConfig(limit_concurrency=1)) as server:
            first = await server.connect()
            await first.send(request("/1"))
            await entered.wait()
            second = await server.connect()
            await second.send(request("/2"))
            reply = await second.response()
            assert reply is not None and reply.status == 503
            release.set()
            reply = await first.response()
            assert reply is not None and reply.status == 200
            await trio.testing.wait_all_tasks_blocked()
            assert server.ctx.in_flight == 0


# -- timeouts ----------------------------------------------------------------------------------


async def test_idle_connection_closes_at_keep_alive_timeout(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with running(hello, ServerConfig(keep_alive_timeout=5)) as server:
            client = await server.connect()
            await client.send(request("/"))
            assert await client.response() is not None
            start = trio.current_time()
            assert await client.rest() == b""  # closed without a 408
            assert trio.current_time() - start == pytest.approx(5, abs=0.5)
            # A connection that never sends anything is idle too.
            client = await server.connect()
            start = trio.current_time()
            assert await client.rest() == b""
            assert trio.current_time() - start == pytest.approx(5, abs=0.5)


async def test_each_idle_connection_closes_at_its_own_deadline(autojump_clock: Clock) -> None:
    closed: dict[str, float] = {}

    async def watch(name: str, client: RawClient) -> None:
        assert await client.rest() == b""
        closed[name] = trio.current_time()

    with trio.fail_after(60):
        async with running(hello, ServerConfig(keep_alive_timeout=5)) as server:
            start = trio.current_time()
            first = await server.connect()
            await first.send(request("/"))
            assert await first.response() is not None
            await trio.sleep(2)
            second = await server.connect()
            await second.send(request("/"))
            assert await second.response() is not None
            await trio.sleep(2)
            await first.send(request("/again"))  # its idle clock starts over
            assert await first.response() is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, "first", first)
                nursery.start_soon(watch, "second", second)
    assert closed["second"] - start == pytest.approx(7, abs=0.1)
    assert closed["first"] - start == pytest.approx(9, abs=0.1)


async def test_header_timeout_answers_408(autojump_clock: Clock) -> None:
    config = ServerConfig(header_timeout=10, keep_alive_timeout=100)
    with trio.fail_after(60):
        async with running(hello, config) as server:
            client = await server.connect()
            start = trio.current_time()
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            reply = await client.response()
            assert reply is not None and reply.status == 408
            assert trio.current_time() - start == pytest.approx(10, abs=0.5)
            assert reply.headers["connection"] == "close"
            assert await client.rest() == b""


async def test_slowloris_drip_is_bounded_by_header_timeout(autojump_clock: Clock) -> None:
    config = ServerConfig(header_timeout=10, keep_alive_timeout=100)

    async def drip(client: RawClient) -> None:
        await client.send(b"GET / HTTP/1.1\r\n")
        for i in range(1000):
            await trio.sleep(1)
            try:
                await client.send(b"X-%d: y\r\n" % i)
            except trio.BrokenResourceError:
                return

    with trio.fail_after(60):
        async with running(hello, config) as server:
            client = await server.connect()
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip, client)
                reply = await client.response()
                assert reply is not None and reply.status == 408
                assert trio.current_time() - start == pytest.approx(10, abs=0.5)
                nursery.cancel_scope.cancel()


async def test_body_timeout(autojump_clock: Clock) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        while (message := await receive())["type"] == "http.request":
            got.append(message)
        got.append(message)

    with trio.fail_after(120):
        async with running(app, ServerConfig(body_timeout=20)) as server:
            client = await server.connect()
            start = trio.current_time()
            await client.send(request("/", "Content-Length: 10", method="POST", body=b"abc"))
            reply = await client.response("POST")
            assert reply is not None and reply.status == 408
            assert trio.current_time() - start == pytest.approx(20, abs=0.5)
    assert got == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]


async def test_write_timeout_for_a_client_that_stops_reading(autojump_clock: Clock) -> None:
    outcome: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = {"type": "http.response.body", "body": b"x" * 65536, "more_body": True}
        try:
            for _ in range(10_000):
                await send(piece)
        except OSError as exc:
            outcome.append(type(exc).__name__)
            failed.set()
            raise

    failed = trio.Event()
    config = ServerConfig(write_timeout=15)
    with trio.fail_after(120):
        async with running(app, config, send_buffer=4096) as server:
            client = await server.connect(receive_buffer=4096)
            await client.send(request("/"))
            start = trio.current_time()
            await failed.wait()
            assert trio.current_time() - start == pytest.approx(15, abs=1)
            assert outcome == ["ClientDisconnected"]
            await client.rest()  # the server closed its end


# -- the drain ---------------------------------------------------------------------------------


async def test_drain_closes_idle_connections_at_once(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with running(hello, ServerConfig(keep_alive_timeout=1000)) as server:
            idle = await server.connect()
            await idle.send(request("/"))
            assert await idle.response() is not None
            fresh = await server.connect()
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            server.ctx.drain.set()
            assert await idle.rest() == b""
            assert await fresh.rest() == b""
            assert trio.current_time() - start < 1


async def test_drain_lets_a_request_in_progress_finish_with_close(autojump_clock: Clock) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        entered.set()
        await release.wait()
        await hello(scope, receive, send)

    with trio.fail_after(30):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/1") + request("/2"))
            await entered.wait()
            server.ctx.drain.set()
            release.set()
            reply = await client.response()
            assert reply is not None and reply.status == 200
            assert reply.headers["connection"] == "close"
            # The pipelined request was not answered: the client retries it elsewhere.
            assert await client.rest() == b""


async def test_drain_lets_a_partial_head_finish(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(b"GET /slow HTTP/1.1\r\n")
            await trio.testing.wait_all_tasks_blocked()
            server.ctx.drain.set()
            await trio.sleep(2)
            await client.send(b"Host: x\r\n\r\n")
            reply = await client.response()
            assert reply is not None and reply.body == b"hello /slow"
            assert reply.headers["connection"] == "close"


async def test_connection_arriving_during_the_drain_with_a_request_is_served() -> None:
    with trio.fail_after(10):
        async with running(hello) as server:
            server.ctx.drain.set()
            client = server.connect_and_send(request("/late"))
            reply = await client.response()
            assert reply is not None and reply.body == b"hello /late"
            assert reply.headers["connection"] == "close"


async def test_drain_after_a_response_still_serves_buffered_pipelined_request() -> None:
    gate = trio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await hello(scope, receive, send)
        if scope["raw_path"] == b"/1":
            await gate.wait()

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/1") + request("/2"))
            first = await client.response()
            assert first is not None and "connection" not in first.headers
            server.ctx.drain.set()
            gate.set()
            second = await client.response()
            assert second is not None and second.body == b"hello /2"
            assert second.headers["connection"] == "close"


# -- application errors ------------------------------------------------------------------------


async def fails_before_start(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    raise ValueError("boom before start")


async def fails_after_start(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise ValueError("boom after start")


async def fails_after_length(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
    )
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise ValueError("boom after start")


async def returns_without_response(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    return


async def returns_after_start(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def sends_unknown_type(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await send({"type": "http.response.pathsend", "path": "/etc/passwd"})


async def sends_bad_header(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await respond(send, 200, b"x", [(b"x-bad", b"a\r\nset-cookie: evil")])


async def swallows_its_error(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    with contextlib.suppress(RuntimeError):
        await send({"type": "http.response.body", "body": b"early"})


@pytest.mark.parametrize(
    ("app", "log_text"),
    [
        (fails_before_start, "boom before start"),
        (returns_without_response, "returned without completing the response"),
        (returns_after_start, "returned without completing the response"),
        (sends_unknown_type, "http.response.pathsend"),
        (sends_bad_header, "invalid response header"),
        (swallows_its_error, "before http.response.start"),
    ],
)
async def test_app_failures_before_the_response_give_500(
    app: Any, log_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/") + request("/next"))
            reply = await client.response()
            assert reply is not None and reply.status == 500
            assert reply.headers["connection"] == "close"
            assert b"set-cookie" not in reply.body.lower()
            assert await client.rest() == b""
    errors = [r for r in caplog.records if r.name == "trioserve.error"]
    assert any(log_text in r.getMessage() or log_text in (r.exc_text or "") for r in errors), [
        r.getMessage() for r in errors
    ]


async def test_a_swallowed_asgi_error_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        with contextlib.suppress(RuntimeError):
            await send({"type": "http.response.bogus"})
        await hello(scope, receive, send)

    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            reply = await client.response()
            assert reply is not None and reply.status == 200
    assert any("http.response.bogus" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("app", [fails_after_start, fails_after_length])
async def test_app_failure_after_the_start_truncates(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with running(app) as server:
            client = await server.connect()
            await client.send(request("/"))
            reply = await client.response()
            assert reply is not None and reply.status == 200
            assert not reply.complete and reply.body == b"partial"
    assert any("boom after start" in (r.exc_text or "") for r in caplog.records)


async def test_errors_never_escape_serve_connection() -> None:
    """A mix of broken apps and broken clients; the accept loop would crash if one escaped."""

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        path = scope["raw_path"]
        if path == b"/raise":
            raise KeyError("x")
        if path == b"/badname":
            await respond(send, 200, b"", [(b"bad name", b"v")])
        await hello(scope, receive, send)

    with trio.fail_after(10):
        async with running(app) as server:
            for data in (
                request("/raise") + request("/"),
                request("/badname") + request("/"),
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS hello
                b"",
            ):
                client = await server.connect()
                await client.send(data)
                await client.stream.send_eof()
                await client.rest()
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/")).status_code == 200


# -- logging -----------------------------------------------------------------------------------


async def test_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    with trio.fail_after(10):
        async with running(hello) as server:
            client = await server.connect()
            await client.send(request("/path?q=1") + b"BAD\r\n\r\n")
            await client.rest()
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1:")
    assert ' - "GET /path?q=1 HTTP/1.1" 200 11 ' in lines[0] and lines[0].endswith("ms")
    assert ' - "-" 400 ' in lines[1]


async def test_access_log_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        async with running(hello, ServerConfig(access_log=False)) as server:
            client = await server.connect()
            await client.send(request("/", "Connection: close"))
            await client.rest()
    assert not [r for r in caplog.records if r.name == "trioserve.access"]
