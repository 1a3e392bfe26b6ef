"""Resource exhaustion against the real CLI in a subprocess, each bounded in time.

Slowloris, slow readers, idle keep-alive floods, file descriptor exhaustion and large slow
uploads. The server's timeouts are set short on its command line so that each attack plays out
in a second or two of real time; memory is read from /proc/PID/status (VmRSS), which counts the
server's own memory, not the kernel's socket buffers. The figures each test measures are
printed (run with `-s` to see them); docs/security.md quotes them.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.clitools import Lines, Server, http_get, start_server

# An app for every attack: /stream never ends, /upload reads its body slowly, the rest say ok.
HARD_APP = """
import trio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = {"type": "http.response.body", "body": b"x" * 65536, "more_body": True}
        while True:
            await send(piece)
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
        if path == "/upload":
            await trio.sleep(0.001)  # a slow consumer
    body = b"ok %d" % received
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "hard_app.py").write_text(HARD_APP)
    yield tmp_path


def serve_hard_app(app_dir: Path, *options: str, wrapper: tuple[str, ...] = ()) -> Server:
    return start_server(
        ["hard_app:app", "--app-dir", str(app_dir), "--lifespan", "off", "--no-access-log",
         "--listen", "127.0.0.1:0", *options],
        app_dir,
        wrapper=wrapper,
    )  # fmt: skip


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds_open(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def get(port: int, path: str = "/") -> bytes:
    """One request on a new connection; the whole response (the server closes it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
        )
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
        return bytes(data)


async def test_slowloris_does_not_delay_others_and_is_cut_at_the_header_timeout(
    app_dir: Path,
) -> None:
    attackers = 500
    header_timeout = 2.0
    server = serve_hard_app(app_dir, "--header-timeout", str(header_timeout))
    port = server.tcp_ports[0]
    connected = 0
    all_connected = trio.Event()
    ended: list[tuple[float, bytes]] = []

    async def trickle() -> None:
        nonlocal connected
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            start = trio.current_time()  # before the first byte: the server's clock starts later
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            connected += 1
            if connected == attackers:
                all_connected.set()
            answer = b""
            while not answer:
                with trio.move_on_after(0.25):  # one header line every quarter second
                    answer = await stream.receive_some(4096)
                    break
                await stream.send_all(b"X-Drip: y\r\n")
            ended.append((trio.current_time() - start, answer))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(attackers):
                nursery.start_soon(trickle)
            await all_connected.wait()
            latencies = []
            for _ in range(20):
                start = trio.current_time()
                response = await get(port)
                latencies.append(trio.current_time() - start)
                assert response.startswith(b"HTTP/1.1 200 ")
    assert len(ended) == attackers
    assert all(answer.startswith(b"HTTP/1.1 408 ") for _, answer in ended)
    lifetimes = sorted(elapsed for elapsed, _ in ended)
    print(
        f"\nslowloris: {attackers} trickling connections; normal requests meanwhile: "
        f"max {max(latencies) * 1000:.1f} ms; attackers cut after "
        f"{lifetimes[0]:.2f}-{lifetimes[-1]:.2f} s (header timeout {header_timeout} s)"
    )
    assert max(latencies) < 0.5
    assert header_timeout <= lifetimes[0] and lifetimes[-1] < header_timeout + 1.5


async def test_a_slow_reader_is_dropped_at_the_write_timeout(app_dir: Path) -> None:
    write_timeout = 1.0
    server = serve_hard_app(app_dir, "--write-timeout", str(write_timeout), "--log-level", "debug")
    port = server.tcp_ports[0]
    errors = Lines(server.process.stderr)
    before = rss_kib(server.process.pid)
    sock = socket.create_connection(("127.0.0.1", port))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        start = time.monotonic()
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        # The client reads nothing: the server's send buffer fills, then the timeout runs.
        await trio.to_thread.run_sync(errors.until, lambda line: "write timeout" in line)
        dropped_after = time.monotonic() - start
        during = rss_kib(server.process.pid)
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(1 << 20):  # what the kernel still held, then the server's close
                pass
    assert (await get(port)).startswith(b"HTTP/1.1 200 ")
    print(
        f"\nslow reader: dropped {dropped_after:.2f} s after its request "
        f"(write timeout {write_timeout} s); server RSS {before} -> {during} KiB"
    )
    assert write_timeout <= dropped_after < write_timeout + 1.5
    assert during - before < 4096


async def test_a_pipelining_client_that_never_reads_is_dropped(app_dir: Path) -> None:
    write_timeout = 1.0
    server = serve_hard_app(app_dir, "--write-timeout", str(write_timeout), "--log-level", "debug")
    port = server.tcp_ports[0]
    errors = Lines(server.process.stderr)
    before = rss_kib(server.process.pid)
    requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000  # 3 MB of pipelined requests
    sock = socket.create_connection(("127.0.0.1", port))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        start = time.monotonic()
        sent = 0
        with contextlib.suppress(BlockingIOError):  # send what the kernels take, read nothing
            while sent < len(requests):
                sent += sock.send(requests[sent : sent + 65536])
        await trio.to_thread.run_sync(errors.until, lambda line: "write timeout" in line)
        dropped_after = time.monotonic() - start
        during = rss_kib(server.process.pid)
    assert (await get(port)).startswith(b"HTTP/1.1 200 ")
    print(
        f"\npipelining flood: {sent} bytes of requests taken, none of the answers read; "
        f"dropped after {dropped_after:.2f} s; server RSS {before} -> {during} KiB"
    )
    assert write_timeout <= dropped_after < write_timeout + 1.5
    assert during - before < 4096


def allow_open_files(count: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (the server inherits it) to fit `count`
    connections plus some spare, as far as the hard limit allows; return what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return min(count, max(soft, wanted) - 256)


async def test_idle_keep_alive_flood_is_held_cheaply_and_closed_on_time(app_dir: Path) -> None:
    count = allow_open_files(2000)
    assert count >= 500, "RLIMIT_NOFILE's hard limit is too low for this test"
    keep_alive = 3.0
    server = serve_hard_app(app_dir, "--keep-alive-timeout", str(keep_alive))
    port = server.tcp_ports[0]
    pid = server.process.pid
    assert (await get(port)).startswith(b"HTTP/1.1 200 ")  # warm: first-request allocations
    before = rss_kib(pid)
    streams: list[trio.SocketStream] = []
    idle_since: dict[trio.SocketStream, float] = {}

    async def one_request(stream: trio.SocketStream) -> None:
        # Before the request: the server's keep-alive clock cannot start earlier than this.
        idle_since[stream] = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"ok 0"):
            chunk = await stream.receive_some(4096)
            assert chunk
            data += chunk

    with trio.fail_after(60):
        for _ in range(count):
            streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(one_request, stream)
        held = rss_kib(pid)
        open_fds = fds_open(pid)
        lifetimes: list[float] = []  # from the request to the server's close

        async def wait_closed(stream: trio.SocketStream) -> None:
            assert await stream.receive_some(4096) == b""
            lifetimes.append(trio.current_time() - idle_since[stream])
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(wait_closed, stream)
    per_connection = (held - before) * 1024 / count
    first, last = min(lifetimes), max(lifetimes)
    print(
        f"\nkeep-alive flood: {count} idle connections, server RSS {before} -> {held} KiB "
        f"({per_connection / 1024:.1f} KiB each), {open_fds} fds open; all closed "
        f"{first:.2f}-{last:.2f} s after their request (keep-alive timeout {keep_alive} s)"
    )
    assert open_fds >= count
    assert per_connection < 16 * 1024
    assert len(lifetimes) == count
    assert keep_alive <= first and last < keep_alive + 1.5
    assert (await get(port)).startswith(b"HTTP/1.1 200 ")


async def test_fd_exhaustion_backs_off_and_recovers(app_dir: Path) -> None:
    limit = 64
    burst = 300
    server = serve_hard_app(
        app_dir, "--header-timeout", "30", wrapper=("prlimit", f"--nofile={limit}:{limit}", "--")
    )
    port = server.tcp_ports[0]
    errors = Lines(server.process.stderr)
    keep_alive = socket.create_connection(("127.0.0.1", port), timeout=10)
    one_request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    keep_alive.sendall(one_request)
    assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200 ")
    socks = []
    backoffs = 0

    def backoff(line: str) -> bool:
        nonlocal backoffs
        backoffs += "Too many open files" in line
        return backoffs == 5

    try:
        for _ in range(burst):  # connections that send nothing: each holds a server fd
            socks.append(socket.create_connection(("127.0.0.1", port)))
        exhausted = time.monotonic()
        await trio.to_thread.run_sync(errors.until, backoff)  # five back-offs: half a second
        held_for = time.monotonic() - exhausted
        assert server.process.poll() is None
        # A connection the server already has is still served while accept backs off.
        keep_alive.sendall(one_request)
        assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        start = time.monotonic()
        keep_alive.close()
        for sock in socks:
            sock.close()
    response = await trio.to_thread.run_sync(http_get, port)
    recovered = time.monotonic() - start
    assert response.startswith(b"HTTP/1.1 200 ")
    server.signal(signal.SIGTERM)
    code, stderr = await trio.to_thread.run_sync(server.finish)
    backoff_lines = [line for line in stderr.splitlines() if "Too many open files" in line]
    backoff_lines += [line for line in errors.seen if "Too many open files" in line]
    print(
        f"\nfd exhaustion: RLIMIT_NOFILE {limit}, burst of {burst} connections held "
        f"{held_for:.2f} s: {len(backoff_lines)} back-off log lines in all, served again "
        f"{recovered:.2f} s after the burst closed; exit code {code}"
    )
    assert code == 0
    assert "Traceback" not in stderr
    assert 0 < len(backoff_lines) < 100  # one line per 100 ms back-off, not a flood


async def test_a_large_slow_upload_keeps_memory_flat(app_dir: Path) -> None:
    size = 64 * 1024 * 1024
    server = serve_hard_app(app_dir)
    port = server.tcp_ports[0]
    pid = server.process.pid
    before = rss_kib(pid)
    peak = before
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, rss_kib(pid))
            await trio.sleep(0.01)  # a sampling rate, not synchronisation

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                start = trio.current_time()
                await stream.send_all(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                )
                piece = b"u" * (1024 * 1024)
                for _ in range(size // len(piece)):
                    await stream.send_all(piece)
                data = b""
                while not data.endswith(b"ok %d" % size):
                    chunk = await stream.receive_some(4096)
                    assert chunk, data
                    data += chunk
                elapsed = trio.current_time() - start
            done = True
    print(
        f"\nslow upload: {size >> 20} MiB to an app reading 64 KiB per ms in {elapsed:.1f} s; "
        f"server RSS {before} -> peak {peak} KiB"
    )
    assert peak - before < 8 * 1024
