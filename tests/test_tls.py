"""TLS per listener: certificates made by trustme, real TLS clients (httpx, the stdlib ssl)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from tests.clitools import Lines, http_get, run_to_exit, start_server
from trioserve import ConfigError, ServerConfig
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope
from trioserve._listeners import Listener
from trioserve._serve import serve
from trioserve._spec import FdSpec, TcpSpec, UnixSpec, parse_listen
from trioserve._tls import TLSContext

ACTIVATE = [sys.executable, str(Path(__file__).with_name("sd_child.py")), "activate"]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("127.0.0.1:0?tls=1", TcpSpec("127.0.0.1", 0, tls=True)),
        ("127.0.0.1:0?tls=0", TcpSpec("127.0.0.1", 0)),
        ("unix:/run/a.sock?mode=0660&tls=1", UnixSpec("/run/a.sock", mode=0o660, tls=True)),
        ("fd:https?tls=1", FdSpec(name="https", tls=True)),
        ("fd:3?tls=1", FdSpec(fd=3, tls=True)),
        ("fd:*?tls=1", FdSpec(tls=True)),
    ],
)
def test_tls_listen_option(text: str, spec: Any) -> None:
    assert parse_listen(text) == spec
    assert parse_listen(str(spec)) == spec


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"keyfile": "k.pem"}, "keyfile is set but certfile is not"),
        ({"certfile": "c.pem", "tls_client_cert": "required"}, "needs ca_certs"),
        ({"tls_client_cert": "sometimes"}, "tls_client_cert must be"),
        ({"tls_handshake_timeout": 0}, "tls_handshake_timeout must be a positive"),
    ],
)
def test_bad_tls_settings(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ServerConfig(**settings)


@dataclass
class PKI:
    ca: trustme.CA
    certfile: Path
    ca_file: Path

    def client_context(self, *, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = trustme.CA()
    certfile = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(certfile)
    )
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return PKI(ca, certfile, ca_file)


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    tls = scope["extensions"].get("tls")
    seen = {"scheme": scope["scheme"], "tls": tls, "size": len(body)}
    data = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": data})


@asynccontextmanager
async def serving(specs: list[str], config: ServerConfig, **kwargs: Any) -> AsyncIterator[Any]:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve, echo, specs, config=config.replace(access_log=False), **kwargs)
            )
            yield listeners
            nursery.cancel_scope.cancel()


def port(listener: Listener) -> int:
    assert isinstance(listener.address, tuple)
    return listener.address[1]


async def test_plain_and_tls_listeners_from_one_serve(pki: PKI) -> None:
    config = ServerConfig(certfile=str(pki.certfile))
    async with serving(["127.0.0.1:0", "127.0.0.1:0?tls=1"], config) as (plain, secure):
        assert str(secure).startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            answer = (await client.get(f"http://127.0.0.1:{port(plain)}/")).json()
            assert answer == {"scheme": "http", "tls": None, "size": 0}
            body = b"x" * 300_000  # larger than any one buffer on the way
            response = await client.post(f"https://127.0.0.1:{port(secure)}/", content=body)
            answer = response.json()
            # keep-alive over TLS: a second request on the same connection
            again = await client.get(f"https://127.0.0.1:{port(secure)}/")
    assert response.http_version == "HTTP/1.1"
    assert answer["scheme"] == "https" and answer["size"] == len(body)
    tls = answer["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int) and tls["cipher_suite"] > 0
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert again.json()["scheme"] == "https"


def stdlib_request(port: int, context: ssl.SSLContext) -> tuple[str | None, bytes]:
    """One request with the blocking stdlib ssl client: (ALPN protocol, response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context.set_alpn_protocols(["h2", "http/1.1"])
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                b"Connection: close\r\n\r\n"
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return tls.selected_alpn_protocol(), data


async def test_stdlib_client_alpn_http11(pki: PKI) -> None:
    config = ServerConfig(certfile=str(pki.certfile))
    async with serving(["127.0.0.1:0?tls=1"], config) as (secure,):
        alpn, data = await trio.to_thread.run_sync(
            stdlib_request, port(secure), pki.client_context()
        )
    assert alpn == "http/1.1"
    assert data.startswith(b"HTTP/1.1 200 ") and b'"scheme": "https"' in data


async def test_failed_handshakes_are_logged_and_the_server_carries_on(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="trioserve.error")
    config = ServerConfig(certfile=str(pki.certfile))
    stranger = PKI(trustme.CA(), pki.certfile, pki.ca_file)  # trusts another CA
    async with serving(["127.0.0.1:0?tls=1"], config) as (secure,):
        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(stdlib_request, port(secure), stranger.client_context())
        # Plain HTTP to a TLS port.
        stream = await trio.open_tcp_stream("127.0.0.1", port(secure))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(1024):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"use an https:// URL.\n")
        await stream.aclose()
        _, data = await trio.to_thread.run_sync(stdlib_request, port(secure), pki.client_context())
        assert data.startswith(b"HTTP/1.1 200 ")
    failures = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(failures) == 2, failures
    assert all(f.startswith("TLS handshake from 127.0.0.1:") for f in failures)
    assert any("HTTP_REQUEST" in f for f in failures), failures


async def test_handshake_timeout(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trioserve.error")
    config = ServerConfig(certfile=str(pki.certfile), tls_handshake_timeout=0.2)
    async with serving(["127.0.0.1:0?tls=1"], config) as (secure,):
        stream = await trio.open_tcp_stream("127.0.0.1", port(secure))
        with trio.fail_after(5):
            assert await stream.receive_some(1024) == b""  # we said nothing; it gave up
        await stream.aclose()
    assert any("no handshake in 0.2 s" in r.getMessage() for r in caplog.records)


async def test_client_certificates(pki: PKI) -> None:
    config = ServerConfig(
        certfile=str(pki.certfile), ca_certs=str(pki.ca_file), tls_client_cert="required"
    )
    client_cert = pki.ca.issue_cert("client.example.org")
    async with serving(["127.0.0.1:0?tls=1"], config) as (secure,):
        _, data = await trio.to_thread.run_sync(
            stdlib_request, port(secure), pki.client_context(cert=client_cert)
        )
        tls = json.loads(data.partition(b"\r\n\r\n")[2])["tls"]
        assert tls["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
        assert tls["client_cert_name"] is not None
        # Without a certificate: refused at the handshake, with the alert that says why.
        # With TLS 1.3 the client finishes its side first, so it learns at its first read.
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            await trio.to_thread.run_sync(stdlib_request, port(secure), pki.client_context())


async def test_reload_serves_new_connections_with_the_new_certificate(
    pki: PKI, tmp_path: Path
) -> None:
    config = ServerConfig(certfile=str(pki.certfile))
    tls = TLSContext(config)
    async with serving(["127.0.0.1:0?tls=1"], config, tls=tls) as (secure,):
        url = f"https://127.0.0.1:{port(secure)}/"
        async with httpx.AsyncClient(verify=pki.client_context()) as old_client:
            assert (await old_client.get(url)).status_code == 200
            # A new CA and certificate in the same file, then reload.
            new = trustme.CA()
            new.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                str(pki.certfile)
            )
            tls.reload()
            # The connection made before the reload carries on.
            assert (await old_client.get(url)).status_code == 200
            new_pki = PKI(new, pki.certfile, pki.ca_file)
            async with httpx.AsyncClient(verify=new_pki.client_context()) as new_client:
                assert (await new_client.get(url)).status_code == 200
            async with httpx.AsyncClient(verify=pki.client_context()) as stale:
                with pytest.raises(httpx.ConnectError):
                    await stale.get(url)
            # A broken file: reload refuses it and the certificate in use stays.
            pki.certfile.write_text("not a certificate")
            with pytest.raises(ConfigError, match="cannot load TLS certificates"):
                tls.reload()
            async with httpx.AsyncClient(verify=new_pki.client_context()) as new_client:
                assert (await new_client.get(url)).status_code == 200


async def test_tls_listener_without_certfile_fails_before_listening() -> None:
    with pytest.raises(ConfigError, match="no certificate is set"):
        await serve(echo, ["127.0.0.1:0?tls=1"])


# ---- through the real CLI -------------------------------------------------------------------


def test_cli_tls_listener_without_certfile_is_one_line_and_exit_2() -> None:
    result = run_to_exit(["trioserve.demo:app", "-l", "127.0.0.1:0?tls=1"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trioserve: error: ")
    assert "--certfile" in lines[0]


def test_cli_missing_certfile_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    result = run_to_exit(["trioserve.demo:app", "-l", "127.0.0.1:0?tls=1", "--certfile", missing])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load TLS certificates" in lines[0]


def https_get(port: int, context: ssl.SSLContext) -> dict[str, Any]:
    _, data = stdlib_request(port, context)
    assert data.startswith(b"HTTP/1.1 200 "), data
    result: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
    return result


def test_cli_inherited_http_and_https_and_a_control_socket(pki: PKI, tmp_path: Path) -> None:
    """The systemd layout: fds named http and https, TLS on one; a unix control socket."""
    plain = socket.create_server(("127.0.0.1", 0))
    secure = socket.create_server(("127.0.0.1", 0))
    plain_port, secure_port = plain.getsockname()[1], secure.getsockname()[1]
    control = str(tmp_path / "control.sock")
    args = [
        "trioserve.demo:app",
        "--listen", "fd:http",
        "--listen", "fd:https?tls=1",
        "--listen", f"unix:{control}",
        "--certfile", str(pki.certfile),
    ]  # fmt: skip
    fds = f"{plain.fileno()},{secure.fileno()}"
    server = start_server(
        args,
        tmp_path,
        wrapper=[*ACTIVATE, "--names", "http:https", "--fds", fds, "--"],
        pass_fds=[plain.fileno(), secure.fileno()],
    )
    plain.close()
    secure.close()
    assert f"https://127.0.0.1:{secure_port}" in server.status
    answer = http_get(plain_port, headers="Accept: application/json\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["listener"]["name"] == "http"
    info = https_get(secure_port, pki.client_context())
    assert info["listener"]["name"] == "https" and info["listener"]["tls"] is True
    answer = http_get(unix=control, headers="Accept: application/json\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["listener"]["kind"] == "unix"

    # SIGHUP reloads the certificate: new connections get the new one.
    new = trustme.CA()
    new.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pki.certfile))
    errors = Lines(server.process.stderr)
    server.signal(signal.SIGHUP)
    errors.until(lambda line: "SIGHUP: reloaded the TLS certificates" in line)
    new_pki = PKI(new, pki.certfile, pki.ca_file)
    assert https_get(secure_port, new_pki.client_context())["listener"]["name"] == "https"
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(secure_port, pki.client_context())
    server.signal(signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err


async def test_drain_closes_an_idle_tls_connection_with_close_notify(pki: PKI) -> None:
    config = ServerConfig(certfile=str(pki.certfile), access_log=False, graceful_timeout=30)
    with trio.fail_after(5):  # far less than graceful_timeout: the idle connection does not wait
        async with trio.open_nursery() as nursery:
            (secure,) = await nursery.start(
                partial(serve, echo, ["127.0.0.1:0?tls=1"], config=config)
            )
            tcp = await trio.open_tcp_stream("127.0.0.1", port(secure))
            client = trio.SSLStream(tcp, pki.client_context(), server_hostname="127.0.0.1")
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while b'"size": 0}' not in response:
                response += await client.receive_some(65536)
            assert response.startswith(b"HTTP/1.1 200 ")
            nursery.cancel_scope.cancel()  # the drain; our connection is idle
        assert await client.receive_some(65536) == b""  # close_notify, not a reset
        await client.aclose()


def test_cli_workers_serve_tls_and_a_rolling_restart_loads_new_certificates(
    pki: PKI, tmp_path: Path
) -> None:
    args = [
        "trioserve.demo:app",
        "--listen", "127.0.0.1:0",
        "--listen", "127.0.0.1:0?tls=1",
        "--certfile", str(pki.certfile),
        "--workers", "1",
    ]  # fmt: skip
    server = start_server(args, tmp_path)
    plain_port = server.tcp_ports[0]
    secure_port = int(server.status.split("https://127.0.0.1:")[1].split()[0].strip(","))
    answer = http_get(plain_port, headers="Accept: application/json\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["listener"]["tls"] is False
    first = https_get(secure_port, pki.client_context())
    assert first["listener"]["tls"] is True
    new = trustme.CA()
    new.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pki.certfile))
    server.signal(signal.SIGHUP)  # a rolling restart: the new worker reads the new files
    server.wait_message("RELOADING=1")
    server.wait_message("READY=1")  # the old worker has closed its sockets and drains
    new_pki = PKI(new, pki.certfile, pki.ca_file)
    second = https_get(secure_port, new_pki.client_context())
    assert second["pid"] != first["pid"]
    server.signal(signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err
