"""The errors trioserve raises, all under one base so callers catch one thing.

    TrioserveError
    ├── ListenError           a listener cannot be had
    │   ├── SpecError         a --listen string does not parse
    │   └── InheritedFdError  an inherited fd is not a usable listening socket
    ├── ConfigError           a ServerConfig value is out of range
    ├── AppLoadError          the APP import path does not name a callable
    ├── LifespanError         the app's lifespan startup or shutdown failed
    ├── WorkerStartupError    a supervised worker exited before it was ready
    ├── ASGIError             (also a RuntimeError) the app broke the ASGI contract
    └── ClientDisconnected    (also an OSError) send() after the client went away

The first six are raised before or around serving: each message is a single readable line,
which the CLI prints as it is before exiting with 2. The last two reach apps: ASGIError ends
the request with a 500 (or a cut-off response); ClientDisconnected is what ASGI spec 2.4 asks
`send()` to raise, an OSError so that apps catching those need nothing new.
"""

from __future__ import annotations

__all__ = [
    "ASGIError",
    "AppLoadError",
    "ClientDisconnected",
    "ConfigError",
    "InheritedFdError",
    "LifespanError",
    "ListenError",
    "SpecError",
    "TrioserveError",
    "WorkerStartupError",
]


class TrioserveError(Exception):
    """Base of every error trioserve raises on purpose."""


class ListenError(TrioserveError):
    """A listener could not be opened, bound or adopted."""


class SpecError(ListenError):
    """A listen spec string is malformed."""


class InheritedFdError(ListenError):
    """An inherited fd (sd_listen_fds) is missing, not ours, or not a listening stream socket."""


class ConfigError(TrioserveError):
    """A server setting is invalid."""


class AppLoadError(TrioserveError):
    """The application import path could not be resolved to an ASGI callable."""


class LifespanError(TrioserveError):
    """The application's lifespan startup or shutdown reported failure."""


class WorkerStartupError(TrioserveError):
    """A worker exited before it was ready during the supervisor's own startup."""


class ASGIError(TrioserveError, RuntimeError):
    """The application broke the ASGI contract (bad message, order, header or length)."""


class ClientDisconnected(TrioserveError, OSError):
    """Raised by `send()` once the response can no longer reach the client (ASGI spec 2.4)."""
