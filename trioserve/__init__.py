"""trioserve: an HTTP/1.1 ASGI server on trio, built for systemd socket activation."""

from __future__ import annotations

from ._config import LifespanMode, ServerConfig
from ._errors import (
    AppLoadError,
    ConfigError,
    InheritedFdError,
    LifespanError,
    ListenError,
    SpecError,
    TrioserveError,
)

__version__ = "0.1.0"

__all__ = [
    "AppLoadError",
    "ConfigError",
    "InheritedFdError",
    "LifespanError",
    "LifespanMode",
    "ListenError",
    "ServerConfig",
    "SpecError",
    "TrioserveError",
    "__version__",
]
