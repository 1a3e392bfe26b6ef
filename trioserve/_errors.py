"""The errors trioserve raises, all under one base so callers catch one thing.

    TrioserveError
    ├── ListenError           a listener cannot be had
    │   ├── SpecError         a --listen string does not parse
    │   └── InheritedFdError  an inherited fd is not a usable listening socket
    ├── ConfigError           a ServerConfig value is out of range
    ├── AppLoadError          the APP import path does not name a callable
    └── LifespanError         the app's lifespan startup or shutdown failed

Every message is a single readable line: the CLI prints it as it is and exits with 2.
"""

from __future__ import annotations

__all__ = [
    "AppLoadError",
    "ConfigError",
    "InheritedFdError",
    "LifespanError",
    "ListenError",
    "SpecError",
    "TrioserveError",
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
