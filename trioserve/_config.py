"""One frozen object for every protocol and timeout knob.

It is validated when built and does no I/O: opening sockets is the listeners' job, so the same
config can serve any set of listeners. Each default says where its number comes from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from ._errors import ConfigError
from ._proxy import TrustedPeers

__all__ = ["ClientCertMode", "LifespanMode", "ServerConfig"]

LifespanMode = Literal["auto", "on", "off"]
ClientCertMode = Literal["none", "optional", "required"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Settings for one running server; `dataclasses.replace` makes variants."""

    # 5 s: uvicorn's and hypercorn's default; long enough for a browser's next request, short
    # enough that idle connections do not pile up (each costs a few KiB and an fd).
    keep_alive_timeout: float = 5.0
    # 10 s to deliver a whole request head (slowloris): nginx's client_header_timeout is 60 s,
    # but no legitimate client needs more than a few round trips to send a head.
    header_timeout: float = 10.0
    # 60 s without any body byte while the app waits for one: nginx's client_body_timeout.
    body_timeout: float = 60.0
    # 60 s without the client accepting any response byte: nginx's send_timeout.
    write_timeout: float = 60.0
    # 16 KiB: h11's and uvicorn's limit; enforced by us on the whole head, however it arrives.
    max_header_size: int = 16 * 1024
    # 100 fields: Apache's LimitRequestFields and Go's practical ceiling; real browsers send ~20.
    max_header_count: int = 100
    # None: no limit on request bodies (the app decides); set it when nothing upstream does.
    max_body_size: int | None = None
    # None: unbounded. Requests beyond this many in progress get 503 at once; an open WebSocket
    # is a request in progress.
    limit_concurrency: int | None = None
    # ASGI root_path, for apps mounted below a prefix by a proxy.
    root_path: str = ""
    lifespan: LifespanMode = "auto"
    # The Server header value; None sends none.
    server_header: str | None = "trioserve"
    # 30 s: systemd's default TimeoutStopSec is 90 s, so a drain fits well inside it.
    graceful_timeout: float = 30.0
    access_log: bool = True
    # None: serve for ever. Under the supervisor (--workers), a worker that has started this
    # many requests (WebSockets included) asks to be replaced (sd_notify TRIOSERVE_RECYCLE=1),
    # which the supervisor does without dropping a connection: a bound on slow leaks in
    # long-running apps.
    max_requests: int | None = None
    # Off: the client, scheme and host are the socket's. On: Forwarded / X-Forwarded-* from a
    # peer in forwarded_allow_ips set them (docs/proxy.md).
    proxy_headers: bool = False
    # Loopback and unix peers: a proxy on this host (nginx over a unix socket is the usual
    # deployment with socket activation). A unix socket's peers are local processes that the
    # file mode let in, the same trust as loopback. uvicorn's default is 127.0.0.1 alone; ::1
    # is the same host, so leaving it out only breaks v6 setups. Parsed once, below.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1", "unix")
    trusted_peers: TrustedPeers = field(init=False, repr=False, compare=False)
    # TLS for the listeners marked ?tls=1 (docs/tls.md). Paths only: the files are read when
    # serving starts and again on reload, never here.
    certfile: str | None = None
    keyfile: str | None = None  # None: the key is in certfile
    ca_certs: str | None = None  # CAs that sign client certificates
    tls_client_cert: ClientCertMode = "none"
    # 10 s for the whole handshake, like header_timeout for a head: a handshake is two round
    # trips, and an unbounded one is slowloris before the request. (nginx allows 60 s.)
    tls_handshake_timeout: float = 10.0
    # 16 MiB: uvicorn's ws_max_size and the websockets library's default is 1 MiB; a whole
    # message is held in memory before the app gets it, so this bounds memory per connection.
    # Beyond it the connection is closed with 1009 (message too big).
    websocket_max_message_size: int = 16 * 1024 * 1024
    # permessage-deflate (RFC 7692) when the client offers it: browsers do, and text compresses
    # well; off saves the CPU and the zlib state (about 64 KiB per connection).
    websocket_per_message_deflate: bool = True
    # 20 s between pings on a connected WebSocket (uvicorn's default); None: no pings. A client
    # that sends nothing within websocket_ping_timeout of a ping is taken as gone (a half-open
    # connection: a laptop that lost its network) and closed with 1011, instead of holding a
    # task, its buffers and an fd for ever. A client that keeps sending is alive by definition,
    # whether or not the app reads what it sends.
    websocket_ping_interval: float | None = 20.0
    websocket_ping_timeout: float = 20.0

    def __post_init__(self) -> None:
        allow: object = self.forwarded_allow_ips
        # Also "a,b,c" (as on the command line) or a list; stored as a tuple of stripped items.
        items = allow.split(",") if isinstance(allow, str) else self.forwarded_allow_ips
        items = tuple(item.strip() for item in items if item.strip())
        object.__setattr__(self, "forwarded_allow_ips", items)
        object.__setattr__(self, "trusted_peers", TrustedPeers.parse(self.forwarded_allow_ips))
        for name in (
            "keep_alive_timeout",
            "header_timeout",
            "body_timeout",
            "write_timeout",
            "tls_handshake_timeout",
            "websocket_ping_timeout",
        ):
            value = getattr(self, name)
            if not (value > 0 and not math.isnan(value)):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not (self.graceful_timeout >= 0 and not math.isnan(self.graceful_timeout)):
            raise ConfigError(
                f"graceful_timeout must be zero or more seconds, not {self.graceful_timeout!r}"
            )
        interval = self.websocket_ping_interval
        if interval is not None and not (interval > 0 and not math.isnan(interval)):
            raise ConfigError(
                f"websocket_ping_interval must be a positive number of seconds or None, "
                f"not {interval!r}"
            )
        if self.max_header_size < 1024:
            raise ConfigError(f"max_header_size must be at least 1024, not {self.max_header_size}")
        if self.websocket_max_message_size < 1:
            raise ConfigError(
                "websocket_max_message_size must be positive, not "
                f"{self.websocket_max_message_size}"
            )
        if self.max_header_count < 1:
            raise ConfigError(f"max_header_count must be positive, not {self.max_header_count}")
        if self.max_body_size is not None and self.max_body_size < 0:
            raise ConfigError(f"max_body_size must be zero or more, not {self.max_body_size}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ConfigError(
                f"limit_concurrency must be at least 1, not {self.limit_concurrency}"
            )
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, not {self.max_requests}")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError(
                f"root_path must start with / and not end with one, not {self.root_path!r}"
            )
        if self.server_header is not None and not _is_token_text(self.server_header):
            raise ConfigError(
                f"server_header has characters a header cannot carry: {self.server_header!r}"
            )

        if self.tls_client_cert not in ("none", "optional", "required"):
            raise ConfigError(
                f"tls_client_cert must be none, optional or required, not {self.tls_client_cert!r}"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("keyfile is set but certfile is not")
        if self.tls_client_cert != "none" and self.ca_certs is None:
            raise ConfigError(f"tls_client_cert={self.tls_client_cert} needs ca_certs")

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _is_token_text(value: str) -> bool:
    return bool(value) and all(0x20 <= ord(c) < 0x7F for c in value)
