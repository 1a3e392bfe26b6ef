"""serve(): start on real sockets, talk to them, cancel, and check what the drain did."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from trioserve import LifespanError, ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._listeners import Listener, open_listeners
from trioserve._notify import Notifier
from trioserve._serve import serve


async def hello(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    body = f"hello {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class GatedApp:
    """Holds every request until the test opens the gate; counts what it started."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.entered = 0
        self.entered_changed = trio.Event()

    async def wait_entered(self, count: int) -> None:
        while self.entered < count:
            await self.entered_changed.wait()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        self.entered += 1
        self.entered_changed.set()
        self.entered_changed = trio.Event()
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})


def port_of(listener: Listener) -> int:
    assert isinstance(listener.address, tuple)
    return listener.address[1]


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def read_response(stream: trio.SocketStream) -> bytes:
    """Read one response with a Content-Length body (what the test apps send)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF before a whole head: {bytes(data)!r}"
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            yield nursery
            nursery.cancel_scope.cancel()


async def test_serves_tcp_and_unix_and_reports_bound_listeners(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = str(tmp_path / "s.sock")
    listeners: list[Listener] = await nursery.start(serve, hello, ["127.0.0.1:0", f"unix:{path}"])
    assert [listener.kind for listener in listeners] == ["tcp", "unix"]
    port = port_of(listeners[0])
    assert port != 0
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/tcp")
    assert (response.status_code, response.text) == (200, "hello /tcp")
    transport = httpx.AsyncHTTPTransport(uds=path)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://localhost/unix")
    assert (response.status_code, response.text) == (200, "hello /unix")


async def test_owned_listeners_close_and_unix_path_removed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, hello, ["127.0.0.1:0", f"unix:{path}"])
            assert path.exists()
            nursery.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(OSError):
        await connect(port_of(listeners[0]))


async def test_drain_finishes_in_flight_requests_with_connection_close(
    nursery: trio.Nursery,
) -> None:
    app = GatedApp()
    scope = trio.CancelScope()
    done = trio.Event()

    async def run_server(task_status: trio.TaskStatus[list[Listener]]) -> None:
        with scope:
            await serve(app, ["127.0.0.1:0"], task_status=task_status)
        done.set()

    listeners = await nursery.start(run_server)
    port = port_of(listeners[0])
    streams = [await connect(port) for _ in range(3)]
    for stream in streams:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await app.wait_entered(3)

    scope.cancel()  # the drain starts: in-flight requests must still be answered
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(OSError):
        await connect(port)  # no longer accepting: refused
    assert not done.is_set()

    app.gate.set()
    for stream in streams:
        response = await read_until_eof(stream)  # answered, then closed
        assert response.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nconnection: close\r\n" in response.lower()
        assert response.endswith(b"finished")
        await stream.aclose()
    await done.wait()


async def test_drain_closes_idle_keepalive_connections_at_once(nursery: trio.Nursery) -> None:
    scope = trio.CancelScope()
    config = ServerConfig(keep_alive_timeout=300)

    async def run_server(task_status: trio.TaskStatus[list[Listener]]) -> None:
        with scope:
            await serve(hello, ["127.0.0.1:0"], config=config, task_status=task_status)

    listeners = await nursery.start(run_server)
    stream = await connect(port_of(listeners[0]))
    await stream.send_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(stream)).endswith(b"hello /a")
    with trio.fail_after(5):  # far below the 300 s keep-alive timeout
        scope.cancel()
        assert await stream.receive_some(100) == b""
    await stream.aclose()


async def test_graceful_timeout_cuts_off_a_stuck_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = GatedApp()  # never opened
    config = ServerConfig(graceful_timeout=30)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve(app, ["127.0.0.1:0"], config=config, task_status=task_status)
        )
        stream = await connect(port_of(listeners[0]))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await app.wait_entered(1)
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started == pytest.approx(30, abs=0.5)
    assert await read_until_eof(stream) == b""  # cut off without a response
    await stream.aclose()


async def test_force_stop_ends_the_drain_at_once(autojump_clock: trio.testing.MockClock) -> None:
    app = GatedApp()
    force = trio.Event()
    config = ServerConfig(graceful_timeout=30)
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[list[Listener]]) -> None:
        with server_scope:
            await serve(
                app, ["127.0.0.1:0"], config=config, force_stop=force, task_status=task_status
            )

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(run_server)
        stream = await connect(port_of(listeners[0]))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await app.wait_entered(1)
        started = trio.current_time()
        server_scope.cancel()
        await trio.sleep(1)  # virtual time: one second into the drain
        force.set()
    await stream.aclose()
    assert trio.current_time() - started == pytest.approx(1, abs=0.5)


async def test_many_queued_connections_are_all_served(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(serve, hello, ["127.0.0.1:0"])
    port = port_of(listeners[0])
    # Open 64 connections before any is read: they all sit in the kernel's accept queue.
    streams = [await connect(port) for _ in range(64)]
    for i, stream in enumerate(streams):
        await stream.send_all(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for i, stream in enumerate(streams):
        assert (await read_response(stream)).endswith(f"hello /{i}".encode())
        await stream.aclose()


class LifespanApp:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.shutdown_done = False

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await receive()
            if self.fail:
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            scope["state"]["greeting"] = "hi from lifespan"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.shutdown_done = True
            await send({"type": "lifespan.shutdown.complete"})
            return
        state: dict[str, Any] = scope["state"]
        body = state["greeting"].encode()
        state["greeting"] = "changed by a request"  # a shallow copy: the next request won't see
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_lifespan_state_reaches_requests_and_shutdown_runs() -> None:
    app = LifespanApp()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, app, ["127.0.0.1:0"])
            port = port_of(listeners[0])
            async with httpx.AsyncClient() as client:
                for _ in range(2):
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    assert response.text == "hi from lifespan"
            assert not app.shutdown_done
            nursery.cancel_scope.cancel()
    assert app.shutdown_done


async def test_lifespan_startup_failure_raises_bare_error_and_closes_listeners(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    with trio.fail_after(10), pytest.raises(LifespanError, match="no database"):
        await serve(LifespanApp(fail=True), [f"unix:{path}"])
    assert not path.exists()


async def test_sd_notify_ready_then_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(address)
    notifier = Notifier(address)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: serve(
                    hello, ["127.0.0.1:0"], notifier=notifier, task_status=task_status
                )
            )
            ready = await receiver.recv(4096)
            nursery.cancel_scope.cancel()
        stopping = await receiver.recv(4096)
    notifier.close()
    receiver.close()
    assert ready == f"READY=1\nSTATUS=serving on {listeners[0]}".encode()
    assert stopping.startswith(b"STOPPING=1\nSTATUS=draining 0 connection(s)\n")
    assert b"EXTEND_TIMEOUT_USEC=35000000" in stopping


async def echo_addresses(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    body = repr((scope["server"], scope["client"], scope["extensions"]["trioserve.listener"]))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


async def test_scope_addresses_for_tcp_and_unix(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listeners = await nursery.start(serve, echo_addresses, ["127.0.0.1:0", f"unix:{path}"])
    port = port_of(listeners[0])
    stream = await connect(port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server, client, info = eval((await read_response(stream)).partition(b"\r\n\r\n")[2])
    local_port = stream.socket.getsockname()[1]
    await stream.aclose()
    assert server == ("127.0.0.1", port)
    assert client == ("127.0.0.1", local_port)
    assert info["kind"] == "tcp"
    unix = await trio.open_unix_socket(path)
    await unix.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server, client, info = eval((await read_response(unix)).partition(b"\r\n\r\n")[2])
    await unix.aclose()
    assert (server, client, info["kind"]) == ((path, None), None, "unix")


async def test_a_callers_listener_is_left_open_and_keeps_its_queue() -> None:
    (listener,) = await open_listeners(["127.0.0.1:0"])
    port = port_of(listener)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, hello, [listener])
                nursery.cancel_scope.cancel()
            # Between two servers: the connection waits in the kernel's queue, not refused.
            waiting = await connect(port)
            await waiting.send_all(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, hello, [listener])
                assert (await read_response(waiting)).endswith(b"hello /queued")
                await waiting.aclose()
                nursery.cancel_scope.cancel()
    finally:
        listener.close()
