"""TLS for the listeners marked ``?tls=1``: the context, its reload, and the relay.

`TLSContext` builds an `ssl.SSLContext` from a `ServerConfig` (TLS 1.2 or later, ALPN
``http/1.1``, client certificates as configured) and replaces it on `reload()`; each new
connection takes the context current when it is accepted, so a reload (SIGHUP in the CLI) never
touches a connection in progress.

Why a relay. The HTTP engine (`_connection.py`) does plain non-blocking syscalls on a socket fd
and waits on the fd's readiness: that is most of its speed. A TLS stream has no such fd (bytes
readable on the socket are not bytes of the request, and a request may already sit decrypted in
OpenSSL's buffer). Rather than a second copy of the engine over `trio.SSLStream`, with its own
timeouts, drain and keep-alive handling to keep in step, a TLS connection is a
`trio.SSLStream` relayed to one end of a `socketpair()`, and the engine serves the other end
exactly as it serves a plain socket. The plain path is untouched; a TLS connection costs two
more fds, one more task and a local copy of each byte, small next to the cryptography.

The relay maps each side's end onto the other: the client's EOF (or a broken connection) is a
half-close the engine reads as EOF; the engine's close (or half-close after its last response)
ends the TLS session with close_notify. Writes to the client are bounded by write_timeout, as
the engine's own are.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Final

import trio

from ._config import ServerConfig
from ._errors import ConfigError

__all__ = [
    "PLAIN_HTTP_REASON",
    "TLSContext",
    "answer_plain_http",
    "handshake_error",
    "relay",
    "tls_extension",
]

log = logging.getLogger("trioserve.error")

_RELAY_SIZE: Final = 64 * 1024
# How long the relay waits for the client to take our close_notify before closing anyway.
_CLOSE_NOTIFY_SECONDS: Final = 1.0
_VERIFY: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
# ASGI TLS extension: tls_version is the protocol's wire number.
_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)
# RFC 4514 short names for the attributes Python's getpeercert() spells out.
_RDN_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


@dataclass(frozen=True, slots=True)
class _Loaded:
    context: ssl.SSLContext
    server_cert: str | None  # the leaf certificate, PEM, for the ASGI extension
    cipher_ids: dict[str, int]  # OpenSSL cipher name -> IANA 16-bit id


class TLSContext:
    """The server's TLS settings, loaded from `config`'s files; `reload()` reads them again."""

    def __init__(self, config: ServerConfig) -> None:
        if config.certfile is None:
            raise ConfigError("a listener has tls=1 but no certificate is set (--certfile)")
        self.config = config
        self._loaded = _load(config)

    @property
    def context(self) -> ssl.SSLContext:
        return self._loaded.context

    def reload(self) -> None:
        """Read the files again; new connections use the result. On error keep the old one."""
        self._loaded = _load(self.config)

    def wrap(self, stream: trio.SocketStream) -> tuple[trio.SSLStream[trio.SocketStream], _Loaded]:
        loaded = self._loaded
        # Not https_compatible: that would close without close_notify, and a client could not
        # tell our end of the connection from a cut. A client that leaves without one (most
        # do) is an EOF for the relay all the same.
        ssl_stream = trio.SSLStream(stream, loaded.context, server_side=True)
        return ssl_stream, loaded


def _load(config: ServerConfig) -> _Loaded:
    certfile = config.certfile
    assert certfile is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0 and 1.1 are deprecated (RFC 8996); every client of the last decade has 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, config.keyfile)
        if config.ca_certs is not None:
            context.load_verify_locations(cafile=config.ca_certs)
        with open(certfile, encoding="ascii", errors="replace") as file:
            found = _PEM_CERT.search(file.read())
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (certfile, config.keyfile, config.ca_certs) if f)
        raise ConfigError(f"cannot load TLS certificates ({files}): {_reason(exc)}") from None
    context.verify_mode = _VERIFY[config.tls_client_cert]
    ids = {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}
    return _Loaded(context, found.group(0) if found else None, ids)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def handshake_error(exc: BaseException) -> str:
    """One line for the log from what a failed handshake raised."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or cause.__class__.__name__
    return str(cause) or cause.__class__.__name__


# OpenSSL's reason when the first bytes were an HTTP request, not a TLS ClientHello.
PLAIN_HTTP_REASON: Final = "HTTP_REQUEST"
# What nginx does too (its 497): tell a person with a browser what happened, in plain HTTP.
_PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 45\r\nconnection: close\r\n\r\n"
    b"This port speaks HTTPS: use an https:// URL.\n"
)
_PLAIN_HTTP_SECONDS: Final = 1.0


async def answer_plain_http(stream: trio.abc.Stream) -> None:
    """Answer a plain HTTP request sent to a TLS port with a 400 (bounded; errors ignored)."""
    with trio.move_on_after(_PLAIN_HTTP_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(_PLAIN_HTTP_ANSWER)


def tls_extension(stream: trio.SSLStream[trio.SocketStream], loaded: _Loaded) -> dict[str, object]:
    """`scope["extensions"]["tls"]` as the ASGI TLS extension (0.2) describes it.

    `client_cert_chain` holds the client's own certificate only: the intermediates it sent are
    not available from the ssl module before Python 3.13.
    """
    chain: list[str] = []
    name: str | None = None
    der = stream.getpeercert(binary_form=True)
    if der:
        chain = [ssl.DER_cert_to_PEM_cert(der)]
        name = _rfc4514(stream.getpeercert())
    cipher = stream.cipher()
    return {
        "server_cert": loaded.server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        # A certificate that fails verification fails the handshake: no request gets here.
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(stream.version() or ""),
        "cipher_suite": None if cipher is None else loaded.cipher_ids.get(cipher[0]),
    }


def _rfc4514(cert: object) -> str | None:
    if not isinstance(cert, dict) or "subject" not in cert:
        return None
    rdns = []
    for rdn in reversed(cert["subject"]):  # RFC 4514: the most specific first
        parts = [f"{_RDN_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn]
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _escape(value: str) -> str:
    escaped = re.sub(r'([,+"\\<>;=])', r"\\\1", value)
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped


async def relay(
    outer: trio.SSLStream[trio.SocketStream], inner: socket.socket, write_timeout: float
) -> None:
    """Carry bytes between the TLS client and the engine's end of a socketpair until both end.

    Owns both: `outer` gets close_notify and is closed, `inner` is closed.
    """
    engine = trio.SocketStream(trio.socket.from_stdlib_socket(inner))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_to_engine, outer, engine)
            await _to_client(engine, outer, write_timeout)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(_CLOSE_NOTIFY_SECONDS) as scope:
            scope.shield = True  # also when the drain deadline cancelled the rest
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await outer.aclose()
    finally:
        await trio.aclose_forcefully(outer)
        await trio.aclose_forcefully(engine)


async def _to_engine(outer: trio.SSLStream[trio.SocketStream], engine: trio.SocketStream) -> None:
    """Client to engine; the client's end becomes a half-close the engine reads as EOF."""
    try:
        while data := await outer.receive_some(_RELAY_SIZE):
            await engine.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await engine.send_eof()


async def _to_client(
    engine: trio.SocketStream, outer: trio.SSLStream[trio.SocketStream], write_timeout: float
) -> None:
    """Engine to client until the engine closes (or half-closes), the client breaks, or a
    write to it takes longer than write_timeout."""
    try:
        while data := await engine.receive_some(_RELAY_SIZE):
            with trio.move_on_after(write_timeout) as scope:
                await outer.send_all(data)
            if scope.cancelled_caught:
                log.debug("TLS write timeout")
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
