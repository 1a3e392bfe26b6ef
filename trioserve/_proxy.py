"""Proxy headers: the client, scheme and host a trusted reverse proxy says it saw.

Two parts. `TrustedPeers` is the `--forwarded-allow-ips` list, parsed once when the
`ServerConfig` is built (a frozen value: exact addresses in a frozenset, networks in a tuple,
`unix` and `*` as flags). `forwarded(...)` is a pure function from a peer and the request
headers to what to put in the scope; `proxy_headers_app` applies it to each scope, and
`serve()` wraps the app with it only when `proxy_headers` is on, so a server without it pays
nothing per request.

Which hop to believe. Each proxy appends the address it received the request from, so the
list is only as honest as the proxies that wrote it. Starting from the direct peer (which must
be trusted, or nothing is read), we walk the list from the right while the addresses are
trusted proxies too; the first untrusted one is the client. If every hop is trusted, the
leftmost is the client. With `Forwarded` (RFC 7239) the proto and host come from the same
element as the chosen `for=`; with `X-Forwarded-*` they come from the same position in their
lists when the lists line up, else from the rightmost entry (the one the direct peer wrote).
`Forwarded`, when present and well formed, wins over `X-Forwarded-*`: mixing them is ambiguous.

This module never imports trio.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._asgi_types import ASGIApp, ASGIReceive, ASGISend, Scope
from ._errors import ConfigError

__all__ = ["Forwarded", "TrustedPeers", "forwarded", "parse_forwarded", "proxy_headers_app"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The word for peers on unix sockets (ASGI gives them no client address).
UNIX = "unix"


@dataclass(frozen=True, slots=True)
class TrustedPeers:
    """Which direct peers (and which hops in a forwarded chain) are trusted proxies."""

    addresses: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False
    everyone: bool = False

    @classmethod
    def parse(cls, items: Iterable[str]) -> TrustedPeers:
        """Parse IPs, CIDRs, `unix` and `*`; raise ConfigError naming a bad entry."""
        addresses: set[str] = set()
        networks: list[IPNetwork] = []
        unix = everyone = False
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                everyone = True
            elif item == UNIX:
                unix = True
            elif "/" in item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigError(
                        f"forwarded_allow_ips: {item!r} is not an IP network"
                    ) from None
            else:
                try:
                    addresses.add(str(ipaddress.ip_address(item)))
                except ValueError:
                    raise ConfigError(
                        f"forwarded_allow_ips: {item!r} is not an IP address, a CIDR, "
                        f"'{UNIX}' or '*'"
                    ) from None
        return cls(frozenset(addresses), tuple(networks), unix, everyone)

    def trusts(self, host: str | None) -> bool:
        """Whether a peer is trusted: an IP text, or None for a unix socket peer."""
        if self.everyone:
            return True
        if host is None:
            return self.unix
        if host in self.addresses:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # "unknown", an obfuscated identifier, a name: never trusted
        if ip.version == 6 and ip.ipv4_mapped is not None:  # a v4 peer on a dual-stack socket
            ip = ip.ipv4_mapped
            if str(ip) in self.addresses:
                return True
        if str(ip) in self.addresses:
            return True
        return any(ip in network for network in self.networks if network.version == ip.version)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the trusted proxies say: each part None when they say nothing about it."""

    client: tuple[str, int] | None = None
    client_given: bool = False  # `client` above is meant (None can mean "unknown")
    scheme: str | None = None
    host: bytes | None = None


# RFC 7239 4: forwarded-pair = token "=" value; value = token / quoted-string.
_PAIR = re.compile(rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')
_SCHEMES = frozenset({"http", "https", "ws", "wss"})
# A Host value: no whitespace, controls, or characters that would end a header or a URL.
_HOST = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:\[\]%-]+")


def parse_forwarded(value: bytes) -> list[dict[str, bytes]] | None:
    """The elements of a `Forwarded` field (RFC 7239), pairs lower-cased; None if malformed."""
    elements: list[dict[str, bytes]] = []
    pos = 0
    end = len(value)
    while True:
        element: dict[str, bytes] = {}
        while True:
            match = _PAIR.match(value, pos)
            if match is None:
                return None
            key = match.group(1).lower().decode("ascii")
            text = match.group(2)
            if text.startswith(b'"'):
                text = re.sub(rb"\\(.)", rb"\1", text[1:-1])
            if key in element:
                return None  # RFC 7239 4: a parameter must not occur twice in one element
            element[key] = text
            pos = match.end()
            if pos < end and value[pos : pos + 1] == b";":
                pos += 1
                continue
            break
        elements.append(element)
        if pos == end:
            return elements
        if value[pos : pos + 1] != b",":
            return None
        pos += 1


def _node(text: bytes) -> tuple[str, int] | None:
    """An RFC 7239 node (`for=`): (ip, port) with port 0 if none; None if unknown/obfuscated."""
    node = text.decode("latin-1")
    port = 0
    if node.startswith("["):
        close = node.find("]")
        if close < 0:
            return None
        host, rest = node[1:close], node[close + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif node.count(":") == 1:
        host, _, rest = node.partition(":")
        if rest.isdigit():
            port = int(rest)
    else:
        host = node
    try:
        return (str(ipaddress.ip_address(host)), port if port <= 0xFFFF else 0)
    except ValueError:
        return None


def _pick(hosts: list[str | None], trusted: TrustedPeers) -> int:
    """Index of the client in a chain: the rightmost untrusted hop, else the leftmost."""
    for index in range(len(hosts) - 1, -1, -1):
        host = hosts[index]
        if host is None or not trusted.trusts(host):  # None here: unknown, never a proxy
            return index
    return 0


def _split(values: list[bytes]) -> list[bytes]:
    return [part.strip() for value in values for part in value.split(b",") if part.strip()]


def forwarded(
    peer: str | None, headers: Iterable[tuple[bytes, bytes]], trusted: TrustedPeers
) -> Forwarded | None:
    """What to believe from `headers` sent by `peer` (None: a unix socket peer).

    None when the peer is not trusted or says nothing, so the scope stays as it is.
    """
    if not trusted.trusts(peer):
        return None
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in _NAMES:
            fields.setdefault(name, []).append(value)
    if not fields:
        return None
    if b"forwarded" in fields:
        elements = parse_forwarded(b",".join(fields[b"forwarded"]))
        if elements:
            return _from_forwarded(elements, trusted)
    return _from_x_forwarded(fields, trusted)


_NAMES = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


def _from_forwarded(elements: list[dict[str, bytes]], trusted: TrustedPeers) -> Forwarded:
    with_for = [element for element in elements if "for" in element]
    chosen: dict[str, bytes]
    client: tuple[str, int] | None = None
    if with_for:
        nodes = [_node(element["for"]) for element in with_for]
        index = _pick([None if node is None else node[0] for node in nodes], trusted)
        chosen, client = with_for[index], nodes[index]
    else:
        chosen = elements[-1]
    return Forwarded(
        client=client,
        client_given=bool(with_for),
        scheme=_scheme(chosen.get("proto")),
        host=_host(chosen.get("host")),
    )


def _from_x_forwarded(fields: dict[bytes, list[bytes]], trusted: TrustedPeers) -> Forwarded:
    hops = _split(fields.get(b"x-forwarded-for", []))
    protos = _split(fields.get(b"x-forwarded-proto", []))
    hosts = _split(fields.get(b"x-forwarded-host", []))
    client: tuple[str, int] | None = None
    index = -1
    if hops:
        nodes = [_node(hop) for hop in hops]
        index = _pick([None if node is None else node[0] for node in nodes], trusted)
        client = nodes[index]

    def aligned(values: list[bytes]) -> bytes | None:
        if not values:
            return None
        return values[index] if len(values) == len(hops) else values[-1]

    return Forwarded(
        client=client,
        client_given=bool(hops),
        scheme=_scheme(aligned(protos)),
        host=_host(aligned(hosts)),
    )


def _scheme(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme = value.decode("latin-1").strip().lower()
    return scheme if scheme in _SCHEMES else None


def _host(value: bytes | None) -> bytes | None:
    if value is None or not _HOST.fullmatch(value):
        return None
    return value


def apply(scope: Scope, result: Forwarded) -> None:
    """Put what the proxies said into an http or websocket scope."""
    if result.client_given:
        scope["client"] = result.client
    if result.scheme is not None:
        secure = result.scheme in ("https", "wss")
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
    if result.host is not None:
        host = result.host
        scope["headers"] = [
            (b"host", host) if name == b"host" else (name, value)
            for name, value in scope["headers"]
        ]
        if not any(name == b"host" for name, _ in scope["headers"]):
            scope["headers"].append((b"host", host))


def proxy_headers_app(app: ASGIApp, trusted: TrustedPeers) -> ASGIApp:
    """Wrap `app` so that http and websocket scopes carry what trusted proxies forwarded."""

    async def with_proxy_headers(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            result = forwarded(None if client is None else client[0], scope["headers"], trusted)
            if result is not None:
                apply(scope, result)
        await app(scope, receive, send)

    return with_proxy_headers
