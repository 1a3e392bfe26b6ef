"""The ``--listen`` grammar: one table, one parser, frozen spec values.

A spec says *what* to listen on and opens nothing, so the CLI, the API and the docs can share it
and a bad spec fails before any socket exists. The grammar is::

    SPEC    = ADDRESS [ "?" OPTION *( "&" OPTION ) ]
    ADDRESS = [ "tcp:" [ "//" ] ] ( HOST | "[" IPV6 "]" | "*" | "" ) ":" PORT
            | "unix:" PATH | "unix:@" NAME
            | "fd:" [ "//" ] ( N | NAME | "*" )
    OPTION  = KEY "=" VALUE          (KEY from OPTIONS, valid for the address kind)

``FORMS`` and ``OPTIONS`` are the data behind it: the parser dispatches on them and
docs/listen.md is checked against them by a test, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._errors import SpecError

__all__ = [
    "FORMS",
    "OPTIONS",
    "FdSpec",
    "Form",
    "ListenSpec",
    "Option",
    "TcpSpec",
    "UnixSpec",
    "forms_markdown",
    "options_markdown",
    "parse_listen",
]

Kind = Literal["tcp", "unix", "fd"]

# sun_path is 108 bytes on Linux. A path needs a terminating NUL; an abstract name spends its
# first byte on the leading NUL. Either way 107 bytes are usable.
UNIX_PATH_MAX = 107
# A larger backlog cannot be stored: Linux and the BSDs keep it in 16 bits in places.
BACKLOG_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class TcpSpec:
    """TCP on ``host`` (None: every interface) and ``port`` (0: the kernel picks one)."""

    host: str | None
    port: int
    v6only: bool | None = None  # None: IPv6 sockets are IPv6-only, as in trio and nginx
    backlog: int | None = None
    tls: bool = False

    def __str__(self) -> str:
        if self.host is None:
            address = f":{self.port}"
        elif ":" in self.host:
            address = f"[{self.host}]:{self.port}"
        else:
            address = f"{self.host}:{self.port}"
        return address + _query(v6only=self.v6only, backlog=self.backlog, tls=self.tls or None)


@dataclass(frozen=True, slots=True)
class UnixSpec:
    """A unix stream socket at ``path``; ``@name`` is a Linux abstract-namespace name."""

    path: str
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    backlog: int | None = None
    tls: bool = False

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    def __str__(self) -> str:
        return f"unix:{self.path}" + _query(
            mode=self.mode,
            owner=self.owner,
            group=self.group,
            backlog=self.backlog,
            tls=self.tls or None,
        )


@dataclass(frozen=True, slots=True)
class FdSpec:
    """Inherited fds: ``fd`` by number, ``name`` by LISTEN_FDNAMES entry, neither for all."""

    fd: int | None = None
    name: str | None = None
    tls: bool = False

    def __post_init__(self) -> None:
        if self.fd is not None and self.name is not None:
            raise ValueError("FdSpec selects by fd or by name, not both")

    @property
    def all(self) -> bool:
        return self.fd is None and self.name is None

    def __str__(self) -> str:
        query = "?tls=1" if self.tls else ""
        if self.fd is not None:
            return f"fd:{self.fd}{query}"
        return f"fd:{self.name if self.name is not None else '*'}{query}"


ListenSpec: TypeAlias = TcpSpec | UnixSpec | FdSpec


def _query(**options: object) -> str:
    parts = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif key == "mode" and isinstance(value, int):
            value = f"{value:04o}"
        parts.append(f"{key}={value}")
    return "?" + "&".join(parts) if parts else ""


# ---- option values -----------------------------------------------------------------------------
# Each parser takes the raw text and returns the value or raises ValueError with the reason.


def _parse_bool(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return text == "1"


def _parse_backlog(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= BACKLOG_MAX:
        raise ValueError(f"must be a whole number from 1 to {BACKLOG_MAX}")
    return int(text)


def _parse_mode(text: str) -> int:
    # Always octal, with or without the leading 0: "660" meaning decimal 660 would be a trap.
    if not re.fullmatch(r"[0-7]{3,4}", text) or int(text, 8) > 0o777:
        raise ValueError("must be octal permission bits such as 0660 (at most 0777)")
    return int(text, 8)


def _parse_account(text: str) -> str:
    # Resolved when the socket is opened (the account may not exist on the machine that parses).
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
        raise ValueError("must be a user or group name or a numeric id")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One ``?key=value`` option: which kinds take it and how its value reads."""

    key: str
    kinds: tuple[Kind, ...]
    values: str
    default: str
    meaning: str
    parse: Callable[[str], object]


OPTIONS: tuple[Option, ...] = (
    Option(
        "v6only",
        ("tcp",),
        "`0` or `1`",
        "`1`",
        "`1`: the IPv6 socket takes IPv6 only, so `0.0.0.0:P` and `[::]:P` can coexist. "
        "`0`: one dual-stack socket (on `:P`, it replaces the IPv4 + IPv6 pair).",
        _parse_bool,
    ),
    Option(
        "backlog",
        ("tcp", "unix"),
        f"1 to {BACKLOG_MAX}",
        f"{BACKLOG_MAX}",
        "Queue of connections the kernel completes before we accept them; the kernel caps it "
        "at `net.core.somaxconn`.",
        _parse_backlog,
    ),
    Option(
        "mode",
        ("unix",),
        "octal, e.g. `0660`",
        "from the umask",
        "Permission bits of the socket file, set before the socket listens.",
        _parse_mode,
    ),
    Option(
        "owner",
        ("unix",),
        "user name or uid",
        "our user",
        "Owner of the socket file, set before the socket listens.",
        _parse_account,
    ),
    Option(
        "group",
        ("unix",),
        "group name or gid",
        "our group",
        "Group of the socket file, set before the socket listens.",
        _parse_account,
    ),
    Option(
        "tls",
        ("tcp", "unix", "fd"),
        "`0` or `1`",
        "`0`",
        "`1`: serve HTTPS on this socket with `--certfile`/`--keyfile` (see [TLS](tls.md)); "
        "the other sockets stay plain.",
        _parse_bool,
    ),
)
_OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class Form:
    """One address form of the grammar, with an example the tests parse."""

    syntax: str
    kind: Kind
    example: str
    meaning: str


FORMS: tuple[Form, ...] = (
    Form(
        "HOST:PORT",
        "tcp",
        "127.0.0.1:8000",
        "TCP on an IPv4 address, or on every address a host name resolves to (`localhost:8000`)",
    ),
    Form("tcp:HOST:PORT", "tcp", "tcp:localhost:8000", "the same, with the kind spelled out"),
    Form("[IPV6]:PORT", "tcp", "[::1]:8000", "TCP on an IPv6 address (IPv6-only by default)"),
    Form(
        ":PORT",
        "tcp",
        ":8000",
        "every interface: an IPv4 socket and an IPv6-only socket on "
        "the same port (with port 0, the same kernel-chosen port)",
    ),
    Form("*:PORT", "tcp", "*:8000", "the same as `:PORT`"),
    Form("unix:PATH", "unix", "unix:/run/app/http.sock", "a unix socket file"),
    Form("unix:@NAME", "unix", "unix:@app-http", "a Linux abstract unix socket (no file)"),
    Form("fd:N", "fd", "fd:3", "the inherited fd N"),
    Form("fd://N", "fd", "fd://3", "the same as `fd:N`"),
    Form("fd:NAME", "fd", "fd:http", "every inherited fd whose `LISTEN_FDNAMES` entry is NAME"),
    Form("fd:*", "fd", "fd:*", "every inherited fd"),
)


def options_markdown() -> str:
    """The options table of docs/listen.md, generated from ``OPTIONS``."""
    lines = ["| option | for | values | default | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        kinds = ", ".join(f"`{kind}`" for kind in o.kinds)
        lines.append(f"| `{o.key}` | {kinds} | {o.values} | {o.default} | {o.meaning} |")
    return "\n".join(lines) + "\n"


def forms_markdown() -> str:
    """The address-forms table of docs/listen.md, generated from ``FORMS``."""
    lines = ["| form | example | meaning |", "|---|---|---|"]
    for f in FORMS:
        lines.append(f"| `{f.syntax}` | `{f.example}` | {f.meaning} |")
    return "\n".join(lines) + "\n"


# ---- the parser --------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
# systemd's rule for FileDescriptorName=: printable ASCII without ':', at most 255 characters.
_FDNAME = re.compile(r"[\x20-\x39\x3b-\x7e]{1,255}")


class _Bad(Exception):
    """What is wrong with a spec; parse_listen adds the spec and raises SpecError."""


def parse_listen(spec: str) -> ListenSpec:
    """Parse one ``--listen`` value; raise SpecError with one line naming it and the problem."""
    try:
        return _parse(spec)
    except _Bad as bad:
        raise SpecError(f"listen spec {spec!r}: {bad}") from None


def _parse(spec: str) -> ListenSpec:
    if not spec:
        raise _Bad("empty spec")
    if spec != spec.strip() or not spec.isprintable():
        raise _Bad("has leading or trailing spaces, or control characters")
    address, sep, query = spec.partition("?")
    kind, rest = _split_kind(address)
    options = _parse_options(kind, query) if sep else {}
    return _ADDRESS_PARSERS[kind](rest, options)


def _split_kind(address: str) -> tuple[Kind, str]:
    for kind in _ADDRESS_PARSERS:
        if address.startswith(kind + ":"):
            rest = address[len(kind) + 1 :]
            # tcp:// and fd:// are accepted for habit's sake; a unix path is taken literally.
            if kind != "unix" and rest.startswith("//"):
                rest = rest[2:]
            return kind, rest
    scheme, sep, _ = address.partition("://")
    if sep and scheme.isalpha():
        raise _Bad(f"unknown kind {scheme!r}: use HOST:PORT, unix:PATH or fd:N")
    return "tcp", address


def _parse_options(kind: Kind, query: str) -> dict[str, object]:
    if not query:
        raise _Bad("nothing after '?'")
    options: dict[str, object] = {}
    for item in query.split("&"):
        key, sep, text = item.partition("=")
        option = _OPTIONS_BY_KEY.get(key)
        if option is None:
            known = ", ".join(o.key for o in OPTIONS if kind in o.kinds) or "none"
            raise _Bad(f"unknown option {key!r} (options for {kind}: {known})")
        if kind not in option.kinds:
            if kind == "fd":
                raise _Bad(
                    f"option {key} does not apply to fd: (inherited sockets are used as "
                    "they were made)"
                )
            raise _Bad(f"option {key} applies to {' and '.join(option.kinds)} only, not {kind}")
        if key in options:
            raise _Bad(f"option {key} is given twice")
        if not sep or not text:
            raise _Bad(f"option {key} needs a value ({option.values.replace('`', '')})")
        try:
            options[key] = option.parse(text)
        except ValueError as e:
            raise _Bad(f"{key}={text} {e}") from None
    return options


def _parse_tcp(address: str, options: dict[str, object]) -> TcpSpec:
    if address.startswith("["):
        inside, sep, after = address[1:].partition("]")
        if not sep:
            raise _Bad("missing ']' after the IPv6 address")
        if not after.startswith(":"):
            raise _Bad("missing ':PORT' after ']'")
        host: str | None = _ipv6_literal(inside)
        port_text = after[1:]
    else:
        host_text, sep, port_text = address.rpartition(":")
        if not sep:
            if _DIGITS.fullmatch(address):
                raise _Bad(
                    f"missing host; use :{address} for every interface or "
                    f"127.0.0.1:{address} for loopback"
                )
            raise _Bad("missing ':PORT'")
        if ":" in host_text:
            raise _Bad("an IPv6 address needs brackets, as in [::1]:8000")
        host = None if host_text in ("", "*") else _ipv4_or_name(host_text)
    port = _port(port_text)
    v6only = options.get("v6only")
    if v6only is not None and host is not None and _is_ipv4(host):
        raise _Bad(f"option v6only does not apply to the IPv4 address {host}")
    if v6only is not False and host is not None and _is_v4_mapped(host):
        raise _Bad(f"the IPv4-mapped address {host} takes IPv4 traffic, so it needs ?v6only=0")
    return TcpSpec(
        host,
        port,
        v6only=_opt_bool(v6only),
        backlog=_opt_int(options.get("backlog")),
        tls=options.get("tls") is True,
    )


def _parse_unix(path: str, options: dict[str, object]) -> UnixSpec:
    if not path:
        raise _Bad("missing path after unix:")
    if path == "@":
        raise _Bad("missing name after unix:@")
    size = len(path.encode("utf-8", "surrogateescape")) - (1 if path.startswith("@") else 0)
    if size > UNIX_PATH_MAX:
        raise _Bad(f"unix socket path is {size} bytes; the kernel takes at most {UNIX_PATH_MAX}")
    if path.startswith("@"):
        for key in ("mode", "owner", "group"):
            if key in options:
                raise _Bad(f"option {key} does not apply to an abstract socket (it has no file)")
    mode = options.get("mode")
    return UnixSpec(
        path,
        mode=mode if isinstance(mode, int) else None,
        owner=_opt_str(options.get("owner")),
        group=_opt_str(options.get("group")),
        backlog=_opt_int(options.get("backlog")),
        tls=options.get("tls") is True,
    )


def _parse_fd(text: str, options: dict[str, object]) -> FdSpec:
    # _parse_options already refused every option but tls for fd: (socket options are
    # systemd's to set); TLS is ours, so it is the one that applies.
    tls = options.get("tls") is True
    if not text:
        raise _Bad("missing fd number or name after fd:")
    if text == "*":
        return FdSpec(tls=tls)
    if re.fullmatch(r"-?[0-9]+", text):
        if text.startswith("-"):
            raise _Bad(f"fd {text} is negative")
        if len(text) > 9:
            raise _Bad(f"fd {text} is too large")
        return FdSpec(fd=int(text), tls=tls)
    if not _FDNAME.fullmatch(text):
        raise _Bad("an fd name is 1 to 255 printable characters without ':'")
    return FdSpec(name=text, tls=tls)


_ADDRESS_PARSERS: dict[Kind, Callable[[str, dict[str, object]], ListenSpec]] = {
    "tcp": _parse_tcp,
    "unix": _parse_unix,
    "fd": _parse_fd,
}


def _port(text: str) -> int:
    if not text:
        raise _Bad("missing port after ':'")
    if not _DIGITS.fullmatch(text):
        raise _Bad(f"port {text!r} is not a number")
    if len(text) > 5 or int(text) > 65535:
        raise _Bad(f"port {text} is out of range (0-65535)")
    return int(text)


def _ipv6_literal(text: str) -> str:
    if not text:
        raise _Bad("empty IPv6 address in []")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _Bad(f"{text!r} is not an IPv6 address") from None
    if address.version != 6:
        raise _Bad(f"brackets are for IPv6 addresses; write {text}:PORT")
    return text


def _ipv4_or_name(text: str) -> str:
    # Labels that are all digits can only be an IPv4 address: reject 127.0.0.256 here rather
    # than let the resolver treat it as a name and fail later with a vaguer message.
    if all(part.isdigit() for part in text.split(".")):
        if not _is_ipv4(text):
            raise _Bad(f"{text!r} is not an IPv4 address")
        return text
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise _Bad(f"{text!r} is not a host name or an IP address")
    return text


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _is_v4_mapped(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


def _opt_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
