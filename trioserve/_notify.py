"""sd_notify(3) in pure Python: tell systemd (or our own supervisor) how the server is doing.

A notification is one datagram of `KEY=VALUE` lines to the unix socket named by
`NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Notifying is advisory: a
missing or unreachable socket must never stop the server, so every failure is logged at debug
level and swallowed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

__all__ = ["Notifier"]

log = logging.getLogger("trioserve.error")


class Notifier:
    """Sends sd_notify datagrams; a Notifier with no address does nothing."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if address:
            # "@name" means the abstract namespace, whose names start with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """Read `NOTIFY_SOCKET` and, when it is meant for `pid`, `WATCHDOG_USEC`."""
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        watchdog: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if raw and (not owner or owner == str(pid)):
            try:
                watchdog = int(raw)
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_USEC=%r", raw)
            else:
                if watchdog <= 0:
                    watchdog = None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """Send one datagram, e.g. `notify(READY=1, STATUS="serving")`; never raises."""
        if self._address is None:
            return
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self._address, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run_watchdog(self) -> None:
        """Send `WATCHDOG=1` every half watchdog interval until cancelled (systemd's advice)."""
        if self.watchdog_usec is None or self._address is None:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.notify(WATCHDOG=1)
            await trio.sleep(interval)
