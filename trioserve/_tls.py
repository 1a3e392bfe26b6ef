"""TLS for the listeners marked ``?tls=1``: the context, its reload, and the session.

`TLSContext` builds an `ssl.SSLContext` from a `ServerConfig` (TLS 1.2 or later, ALPN
``http/1.1``, client certificates as configured) and replaces it on `reload()`; each new
connection takes the context current when it is accepted, so a reload (SIGHUP in the CLI) never
touches a connection in progress.

`TLSSession` is one connection's TLS, on memory buffers (`ssl.MemoryBIO`) rather than on a
stream: the HTTP engine (`_connection.py`) does plain non-blocking syscalls on a socket and
waits on its readiness, which is most of its speed, and a session with a socket-like `recv` and
`send` keeps it that way for HTTPS. The engine's timeouts, limits, keep-alive and drain are then
the same code for both. (The first version relayed a `trio.SSLStream` to a socketpair the engine
served as plain: 2.2x slower, from two more socket hops and task wakeups per request.)
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
    "TLSSession",
    "answer_plain_http",
    "handshake_error",
    "tls_extension",
]

log = logging.getLogger("trioserve.error")

# Bytes read from, or encrypted for, the socket at a time.
_BUFFER_SIZE: Final = 64 * 1024
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

    def session(self) -> TLSSession:
        """A server-side TLS session for one new connection, with the current certificates."""
        return TLSSession(self._loaded)


class TLSSession:
    """TLS over a connection's own non-blocking socket, with the socket's recv/send contract.

    OpenSSL works on memory buffers (`ssl.MemoryBIO`); `recv` and `send` move bytes between
    them and the socket with plain non-blocking calls, raising BlockingIOError when the
    socket would block, so the engine drives a TLS connection as it drives a plain one. One
    difference: `send` may encrypt more than the socket takes. It then keeps the rest of the
    ciphertext, reports none of that plaintext as sent, and takes the same bytes again on the
    next call (which is how the engine retries: with what was not reported) without
    encrypting them twice.
    """

    __slots__ = ("_cipher", "_closing", "_in", "_out", "_ssl", "_unconfirmed", "loaded")

    def __init__(self, loaded: _Loaded) -> None:
        self.loaded = loaded
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = loaded.context.wrap_bio(self._in, self._out, server_side=True)
        self._cipher = b""  # encrypted, not yet taken by the socket
        self._unconfirmed = 0  # plaintext bytes behind _cipher that send() has not reported
        self._closing = False

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl

    @property
    def pending(self) -> bool:
        """Ciphertext is waiting for room in the socket."""
        return bool(self._cipher)

    async def handshake(self, sock: trio.socket.SocketType) -> str | None:
        """Run the handshake on `sock`; None, or one line saying why it failed."""
        while True:
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as exc:
                await self._send_all(sock)  # the alert, so the client knows why
                return exc.reason or exc.__class__.__name__
            await self._send_all(sock)
            if done:
                return None
            data = await sock.recv(_BUFFER_SIZE)
            if not data:
                return "the client closed the connection"
            self._in.write(data)

    async def _send_all(self, sock: trio.socket.SocketType) -> None:
        data = self._out.read()
        while data:
            data = data[await sock.send(data) :]

    def recv(self, sock: socket.socket, size: int) -> bytes:
        """Up to `size` decrypted bytes; b"" at the end; BlockingIOError if none yet.

        Once our close_notify is queued, what the client still sends is only drained (the
        lingering close), so it is returned as it came, undecrypted.
        """
        if self._closing:
            return sock.recv(size)
        while True:
            try:
                data = self._ssl.read(size)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""  # close_notify, or the end of the stream without one
            else:
                self._push(sock)
                return data
            self._push(sock)
            incoming = sock.recv(_BUFFER_SIZE)  # BlockingIOError: wait until readable
            if not incoming:
                return b""
            self._in.write(incoming)

    def send(self, sock: socket.socket, data: bytes | memoryview) -> int:
        """Bytes of `data` encrypted and taken by the socket; 0 if none (BlockingIOError
        only when nothing could be done at all)."""
        done = 0
        if self._cipher:
            self._cipher = self._cipher[sock.send(self._cipher) :]
            if self._cipher:
                return 0
            done, self._unconfirmed = self._unconfirmed, 0
            if done >= len(data):
                return done
        chunk = data[done : done + _BUFFER_SIZE]
        if not chunk:
            return done
        self._ssl.write(chunk)
        out = self._out.read()
        try:
            taken = sock.send(out)
        except BlockingIOError:
            taken = 0
        if taken == len(out):
            return done + len(chunk)
        self._cipher = out[taken:]
        self._unconfirmed = len(chunk)
        return done

    def close_notify(self) -> None:
        """Queue our close_notify (once); `send` or `pending` then carry it out."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._ssl.unwrap()  # SSLWantReadError: ours is written, the client's is not read
        self._cipher += self._out.read()

    def _push(self, sock: socket.socket) -> None:
        """Send what reading made OpenSSL write (session tickets, key updates), if it can."""
        out = self._out.read()
        if out:
            self._cipher += out
        if self._cipher:
            with contextlib.suppress(OSError):
                self._cipher = self._cipher[sock.send(self._cipher) :]


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


def tls_extension(stream: ssl.SSLObject, loaded: _Loaded) -> dict[str, object]:
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
