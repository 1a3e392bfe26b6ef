"""Real peers in front of and against trioserve: nginx (Debian package) and curl.

nginx runs in the foreground as one process (`daemon off; master_process off;`), with its
config, pid file, error log and temp paths all in the test's tmp_path, listening on a unix
socket there (no port to pick), and is stopped by its pid. It is ready when it has logged
`getrlimit(...)`, which it does after its listening sockets are open.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.clitools import Lines, start_server
from trioserve import ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._serve import serve

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
CURL = shutil.which("curl")


@pytest.fixture
def _nginx_present() -> None:
    # Required, never skipped: .ci/run installs Debian's nginx, and a silent skip would hide
    # a broken install.
    assert NGINX is not None, "nginx is required (Debian package nginx; .ci/run installs it)"


@pytest.fixture
def _curl_present() -> None:
    assert CURL is not None, "curl is required (Debian package curl; .ci/run installs it)"


needs_nginx = pytest.mark.usefixtures("_nginx_present")

NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream trioserve {{
        server unix:{upstream};
        keepalive 8;
    }}
    server {{
        listen unix:{front};
        client_max_body_size 64m;
        location / {{
            proxy_pass http://trioserve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front_of(upstream: Path, tmp_path: Path) -> Iterator[Path]:
    """Run nginx proxying a unix socket in tmp_path to `upstream`; yield its own socket."""
    assert NGINX is not None
    front = tmp_path / "front.sock"
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, upstream=upstream, front=front))
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        line = Lines(process.stderr).until(lambda line: "getrlimit" in line or "emerg" in line)
        assert "emerg" not in line, f"nginx did not start: {line}"
        yield front
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


# -- nginx in front of serve() in this process (so the app can hold a stream open) ----------


class ProxiedApp:
    """/stream sends one piece, waits for the test to see it, sends another; else echo."""

    def __init__(self) -> None:
        self.first_seen = trio.Event()
        self.connections: set[int] = set()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        # The server-side connection a request came on: test-only introspection of the
        # bound `receive` (its Exchange belongs to one connection), to see upstream reuse.
        self.connections.add(id(receive.__self__.conn))  # type: ignore[attr-defined]
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first ", "more_body": True})
            await self.first_seen.wait()
            await send({"type": "http.response.body", "body": b"second"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(b"x-method", scope["method"].encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body or scope["path"].encode()})


@asynccontextmanager
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[ProxiedApp, httpx.AsyncClient]]:
    app = ProxiedApp()
    upstream = tmp_path / "app.sock"
    config = ServerConfig(access_log=False, lifespan="off")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(
                app, [f"unix:{upstream}"], config=config, task_status=task_status
            )
        )
        with nginx_in_front_of(upstream, tmp_path) as front:
            transport = httpx.AsyncHTTPTransport(uds=str(front))
            async with httpx.AsyncClient(transport=transport, base_url="http://nginx") as client:
                yield app, client
        nursery.cancel_scope.cancel()


@needs_nginx
async def test_nginx_proxies_requests_bodies_and_streams(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with proxied(tmp_path) as (app, client):
            response = await client.get("/hello?x=1")
            assert (response.status_code, response.text) == (200, "/hello")
            body = bytes(range(256)) * 4096  # 1 MiB
            response = await client.post("/upload", content=body)
            assert response.status_code == 200 and response.content == body
            assert response.headers["x-method"] == "POST"
            async with client.stream("GET", "/stream") as streamed:
                pieces = streamed.aiter_raw()
                first = await pieces.__anext__()
                assert first == b"first "  # arrived while the app still holds the rest
                app.first_seen.set()
                rest = b"".join([piece async for piece in pieces])
            assert first + rest == b"first second"


@needs_nginx
async def test_nginx_reuses_keep_alive_upstream_connections(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with proxied(tmp_path) as (app, client):
            for i in range(50):
                response = await client.get(f"/r{i}")
                assert response.text == f"/r{i}"
    print(f"\nnginx keepalive upstream: 50 requests on {len(app.connections)} connection(s)")
    assert len(app.connections) <= 2


# -- nginx in front of the real CLI under the supervisor, through a rolling restart --------

PID_APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


@needs_nginx
async def test_restart_behind_nginx_loses_no_request(tmp_path: Path) -> None:
    (tmp_path / "pid_app.py").write_text(PID_APP)
    upstream = tmp_path / "app.sock"
    server = start_server(
        ["pid_app:app", "--app-dir", str(tmp_path), "--workers", "1", "--no-access-log",
         "--listen", f"unix:{upstream}"],
        tmp_path,
    )  # fmt: skip
    pids: dict[str, int] = {}
    failures: list[str] = []
    restarted = trio.Event()
    answered_after = 0

    async def load(client: httpx.AsyncClient) -> None:
        nonlocal answered_after
        while answered_after < 200:
            try:
                response = await client.get("/")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:100]}")
                continue
            pids[response.text] = pids.get(response.text, 0) + 1
            if restarted.is_set():
                answered_after += 1

    with nginx_in_front_of(upstream, tmp_path) as front, trio.fail_after(60):
        transport = httpx.AsyncHTTPTransport(uds=str(front))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://nginx") as client,
            trio.open_nursery() as nursery,
        ):
            for _ in range(8):
                nursery.start_soon(load, client)
            server.signal(signal.SIGHUP)
            await trio.to_thread.run_sync(server.wait_message, "RELOADING=1")
            await trio.to_thread.run_sync(server.wait_message, "READY=1", 60)
            restarted.set()
    server.signal(signal.SIGTERM)
    code, err = await trio.to_thread.run_sync(server.finish)
    print(f"\nrestart behind nginx: {sum(pids.values())} requests, by worker pid {pids}")
    assert failures == []
    assert len(pids) == 2  # the old worker, then its replacement
    assert code == 0, err


# -- curl and httpx against the real CLI ---------------------------------------------------

ECHO_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    version = scope["http_version"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%s %d" % (version, len(body))})
"""


@pytest.mark.usefixtures("_curl_present")
def test_curl_unix_socket_http11_and_expect_continue(tmp_path: Path) -> None:
    assert CURL is not None
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    sock = tmp_path / "app.sock"
    start_server(
        ["echo_app:app", "--app-dir", str(tmp_path), "--listen", f"unix:{sock}",
         "--listen", "127.0.0.1:0", "--no-access-log"],
        tmp_path,
    )  # fmt: skip
    body = tmp_path / "body"
    body.write_bytes(b"b" * 100_000)
    result = subprocess.run(
        [CURL, "-sS", "-v", "--http1.1", "--unix-socket", str(sock), "--max-time", "10",
         "-H", "Expect: 100-continue", "--data-binary", f"@{body}", "http://x/upload"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1.1 100000"
    assert "HTTP/1.1 100 Continue" in result.stderr
    assert "HTTP/1.1 200 OK" in result.stderr


def test_httpx_against_the_cli(tmp_path: Path) -> None:
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    server = start_server(
        ["echo_app:app", "--app-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--no-access-log"],
        tmp_path,
    )  # fmt: skip
    with httpx.Client(base_url=f"http://127.0.0.1:{server.tcp_ports[0]}", timeout=10) as client:
        for size in (0, 10, 1_000_000):
            response = client.post("/", content=b"p" * size)
            assert (response.status_code, response.text) == (200, f"1.1 {size}")
