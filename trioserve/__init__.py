"""trioserve: an HTTP/1.1 ASGI server on trio, built for systemd socket activation."""

from __future__ import annotations

from ._config import ClientCertMode, LifespanMode, ServerConfig
from ._errors import (
    AppLoadError,
    ASGIError,
    ClientDisconnected,
    ConfigError,
    InheritedFdError,
    LifespanError,
    ListenError,
    SpecError,
    TrioserveError,
    WorkerStartupError,
)
from ._listeners import Listener, inherited_listeners, open_listeners
from ._notify import Notifier
from ._serve import serve
from ._spec import FdSpec, ListenSpec, TcpSpec, UnixSpec, parse_listen
from ._tls import TLSContext

__version__ = "0.1.0"

__all__ = [
    "ASGIError",
    "AppLoadError",
    "ClientCertMode",
    "ClientDisconnected",
    "ConfigError",
    "FdSpec",
    "InheritedFdError",
    "LifespanError",
    "LifespanMode",
    "ListenError",
    "ListenSpec",
    "Listener",
    "Notifier",
    "ServerConfig",
    "SpecError",
    "TLSContext",
    "TcpSpec",
    "TrioserveError",
    "UnixSpec",
    "WorkerStartupError",
    "__version__",
    "inherited_listeners",
    "open_listeners",
    "parse_listen",
    "serve",
]
