"""Proxy headers: the pure logic table-driven, then end to end over TCP and a unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clitools import http_get, run_to_exit, start_server
from trioserve import ConfigError, ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._proxy import Forwarded, TrustedPeers, apply, forwarded, parse_forwarded
from trioserve._serve import serve

LOCAL = TrustedPeers.parse(["127.0.0.1", "::1", "unix"])
CHAIN = TrustedPeers.parse(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("items", "peer", "trusted"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["127.0.0.1"], None, False),
        (["unix"], None, True),
        (["unix"], "127.0.0.1", False),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "::ffff:10.0.0.1", True),  # v4 peer on a dual-stack socket
        (["::1"], "::1", True),
        (["::1"], "0:0:0:0:0:0:0:1", True),
        (["2001:db8::/32"], "2001:db8::5", True),
        (["2001:db8::/32"], "10.0.0.1", False),
        (["*"], "203.0.113.9", True),
        (["*"], None, True),
        (["127.0.0.1"], "unknown", False),
        (["127.0.0.1"], "_hidden", False),
        ([], "127.0.0.1", False),
    ],
)
def test_trusted_peers(items: list[str], peer: str | None, trusted: bool) -> None:
    assert TrustedPeers.parse(items).trusts(peer) is trusted


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3", "unix:"])
def test_bad_allow_list_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="forwarded_allow_ips"):
        ServerConfig(forwarded_allow_ips=("127.0.0.1", bad))


def test_allow_list_is_parsed_once_at_construction() -> None:
    config = ServerConfig(forwarded_allow_ips=" 10.0.0.1 , unix,")  # type: ignore[arg-type]
    assert config.forwarded_allow_ips == ("10.0.0.1", "unix")
    assert config.trusted_peers == TrustedPeers(frozenset({"10.0.0.1"}), (), True, False)
    assert ServerConfig().trusted_peers.trusts(None)
    assert config.replace(forwarded_allow_ips=("*",)).trusted_peers.everyone


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # Nothing to say, or an untrusted peer: the scope stays as it is.
        ("127.0.0.1", h(), None),
        ("127.0.0.1", h(("host", "a")), None),
        ("203.0.113.9", h(("x-forwarded-for", "1.2.3.4")), None),
        (None, h(("x-forwarded-for", "1.2.3.4")), Forwarded(("1.2.3.4", 0), True)),
        # X-Forwarded-*.
        (
            "127.0.0.1",
            h(("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")),
            Forwarded(("1.2.3.4", 0), True, "https"),
        ),
        (
            "127.0.0.1",
            h(("x-forwarded-proto", "HTTPS"), ("x-forwarded-host", "example.com:8443")),
            Forwarded(None, False, "https", b"example.com:8443"),
        ),
        ("127.0.0.1", h(("x-forwarded-proto", "gopher")), Forwarded()),
        ("127.0.0.1", h(("x-forwarded-host", "a b")), Forwarded()),
        ("127.0.0.1", h(("x-forwarded-host", "a\r\nx: y")), Forwarded()),
        ("127.0.0.1", h(("x-forwarded-for", "garbage")), Forwarded(None, True)),
    ],
)
def test_forwarded_local(
    peer: str | None, headers: list[tuple[bytes, bytes]], expected: Forwarded | None
) -> None:
    assert forwarded(peer, headers, LOCAL) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # The rightmost untrusted hop is the client; the spoofed ones left of it are ignored.
        (h(("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")), Forwarded(("1.2.3.4", 0), True)),
        (
            h(("x-forwarded-for", "6.6.6.6, 1.2.3.4"), ("x-forwarded-for", "10.0.0.2")),
            Forwarded(("1.2.3.4", 0), True),
        ),
        # Every hop trusted: the leftmost.
        (h(("x-forwarded-for", "10.0.0.3, 10.0.0.2")), Forwarded(("10.0.0.3", 0), True)),
        # Proto lined up with the hops: the chosen hop's; not lined up: the rightmost.
        (
            h(("x-forwarded-for", "1.2.3.4, 10.0.0.2"), ("x-forwarded-proto", "https, http")),
            Forwarded(("1.2.3.4", 0), True, "https"),
        ),
        (
            h(("x-forwarded-for", "1.2.3.4, 10.0.0.2"), ("x-forwarded-proto", "https")),
            Forwarded(("1.2.3.4", 0), True, "https"),
        ),
        # Forwarded (RFC 7239), with ports, v6, quoting, and obfuscated nodes.
        (
            h(
                (
                    "forwarded",
                    'for=6.6.6.6, for="1.2.3.4:4711";proto=https;host=ex.org, for=10.0.0.2',
                )
            ),
            Forwarded(("1.2.3.4", 4711), True, "https", b"ex.org"),
        ),
        (
            h(("forwarded", 'for="[2001:db9::1]:80";proto=http, for="[2001:db8::2]"')),
            Forwarded(("2001:db9::1", 80), True, "http"),
        ),
        (h(("forwarded", "for=unknown, for=10.0.0.2")), Forwarded(None, True)),
        (h(("forwarded", "For=_hidden;PROTO=https")), Forwarded(None, True, "https")),
        (h(("forwarded", "proto=https;by=10.0.0.9")), Forwarded(None, False, "https")),
        # Forwarded wins over X-Forwarded-*; a malformed one falls back to them.
        (
            h(("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "5.6.7.8")),
            Forwarded(("1.2.3.4", 0), True),
        ),
        (
            h(("forwarded", "for=1.2.3.4;for=9.9.9.9"), ("x-forwarded-for", "5.6.7.8")),
            Forwarded(("5.6.7.8", 0), True),
        ),
    ],
)
def test_forwarded_chain(headers: list[tuple[bytes, bytes]], expected: Forwarded) -> None:
    assert forwarded("10.0.0.1", headers, CHAIN) == expected


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        (b"for=a", [{"for": b"a"}]),
        (b'for="a\\"b";by=c, for=d', [{"for": b'a"b', "by": b"c"}, {"for": b"d"}]),
        (b"for=a ;proto=http", [{"for": b"a", "proto": b"http"}]),
        (b"for=a,,for=b", None),
        (b"for", None),
        (b'for="unterminated', None),
        (b"for=a proto=b", None),
    ],
)
def test_parse_forwarded(value: bytes, elements: list[dict[str, bytes]] | None) -> None:
    assert parse_forwarded(value) == elements


# ---- end to end ---------------------------------------------------------------------------


async def echo_scope(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    host = dict(scope["headers"]).get(b"host", b"").decode()
    seen = {"client": scope["client"], "scheme": scope["scheme"], "host": host}
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def ask(
    nursery: trio.Nursery, config: ServerConfig, spec: str, headers: dict[str, str]
) -> dict[str, Any]:
    listeners = await nursery.start(partial(serve, echo_scope, [spec], config=config))
    listener = listeners[0]
    if listener.kind == "unix":
        transport = httpx.AsyncHTTPTransport(uds=str(listener.address))
        base = "http://proxied"
    else:
        transport = httpx.AsyncHTTPTransport()
        base = f"http://127.0.0.1:{listener.address[1]}"
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        response = await client.get("/", headers=headers)
    nursery.cancel_scope.cancel()
    result: dict[str, Any] = response.json()
    return result


SPOOF = {
    "X-Forwarded-For": "1.2.3.4",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
}


async def serve_and_ask(config: ServerConfig, spec: str, headers: dict[str, str]) -> Any:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            return await ask(nursery, config, spec, headers)


async def test_trusted_loopback_peer_sets_client_scheme_and_host() -> None:
    config = ServerConfig(proxy_headers=True, access_log=False)
    seen = await serve_and_ask(config, "127.0.0.1:0", SPOOF)
    assert seen == {"client": ["1.2.3.4", 0], "scheme": "https", "host": "example.com"}


async def test_untrusted_peer_headers_are_passed_through_and_ignored() -> None:
    config = ServerConfig(proxy_headers=True, forwarded_allow_ips=("10.9.9.9",))
    seen = await serve_and_ask(config, "127.0.0.1:0", SPOOF)
    assert seen["client"][0] == "127.0.0.1" and seen["client"][1] != 0
    assert seen["scheme"] == "http"
    assert seen["host"].startswith("127.0.0.1:")


async def test_off_by_default() -> None:
    seen = await serve_and_ask(ServerConfig(), "127.0.0.1:0", SPOOF)
    assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"


async def test_unix_peer_trusted_as_unix(tmp_path: Path) -> None:
    spec = f"unix:{tmp_path / 'app.sock'}"
    headers = {"Forwarded": 'for="[2001:db8::7]:5000";proto=https;host=example.org'}
    seen = await serve_and_ask(ServerConfig(proxy_headers=True), spec, headers)
    assert seen == {"client": ["2001:db8::7", 5000], "scheme": "https", "host": "example.org"}
    untrusted = ServerConfig(proxy_headers=True, forwarded_allow_ips=("127.0.0.1",))
    seen = await serve_and_ask(untrusted, spec, headers)
    assert seen == {"client": None, "scheme": "http", "host": "proxied"}


async def test_access_log_shows_the_forwarded_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trioserve.access")
    await serve_and_ask(ServerConfig(proxy_headers=True), "127.0.0.1:0", SPOOF)
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["1.2.3.4:0"]


# ---- through the real CLI -------------------------------------------------------------------


def test_cli_bad_allow_list_is_one_line_and_exit_2() -> None:
    result = run_to_exit(
        ["trioserve.demo:app", "-l", "127.0.0.1:0", "--forwarded-allow-ips", "localhost"]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "forwarded_allow_ips: 'localhost'" in lines[0]


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]])
def test_cli_proxy_headers_reach_the_app(tmp_path: Path, workers: list[str]) -> None:
    sock = str(tmp_path / "app.sock")
    args = ["trioserve.demo:app", "-l", f"unix:{sock}", "--proxy-headers", *workers]
    server = start_server(args, tmp_path)
    response = http_get(
        unix=sock, headers="Accept: application/json\r\nX-Forwarded-For: 192.0.2.8\r\n"
    )
    assert json.loads(response.partition(b"\r\n\r\n")[2])["client"] == ["192.0.2.8", 0]
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


# ---- behind a real nginx, over a unix socket ------------------------------------------------

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server unix:{sock};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            # Appends the client's address to what the client sent: a spoofing client's list.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # As a TLS-terminating nginx would say (this one has no certificate).
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front(tmp_path: Path, sock: str) -> Iterator[int]:
    """nginx on a 127.0.0.1 port we bound (handed over through its NGINX variable, so no port
    is guessed), proxying to `sock`. Stopped (its own process group) on the way out."""
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp_path, sock=sock, port=port))
    os.set_inheritable(listener.fileno(), True)
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(conf)],
        env={**os.environ, "NGINX": f"{listener.fileno()};"},
        pass_fds=[listener.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    listener.close()  # nginx holds it; connections queue in its backlog until it accepts
    try:
        yield port
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its process group: nginx and its worker
        process.wait(timeout=10)


async def test_behind_nginx_over_a_unix_socket(tmp_path: Path) -> None:
    sock = str(tmp_path / "app.sock")
    # Trust the unix peer (nginx) only: the loopback address nginx saw is then the client,
    # and whatever the client put in X-Forwarded-For itself is ignored.
    config = ServerConfig(proxy_headers=True, forwarded_allow_ips=("unix",), access_log=False)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, echo_scope, [f"unix:{sock}"], config=config))
            with nginx_in_front(tmp_path, sock) as port:
                async with httpx.AsyncClient() as client:
                    response = await client.get(
                        f"http://127.0.0.1:{port}/",
                        headers={"X-Forwarded-For": "6.6.6.6", "Host": "example.test"},
                    )
            nursery.cancel_scope.cancel()
    assert response.status_code == 200, response.text
    assert response.json() == {
        "client": ["127.0.0.1", 0],
        "scheme": "https",
        "host": "example.test",
    }


@pytest.mark.parametrize(
    ("kind", "proto", "scheme"),
    [("http", "https", "https"), ("websocket", "https", "wss"), ("websocket", "http", "ws")],
)
def test_apply_maps_the_scheme_for_websockets(kind: str, proto: str, scheme: str) -> None:
    scope: dict[str, Any] = {"type": kind, "scheme": "x", "headers": [(b"host", b"a")]}
    apply(scope, Forwarded(scheme=proto, host=b"b.example"))
    assert scope["scheme"] == scheme and scope["headers"] == [(b"host", b"b.example")]
