"""Streamed body chunks go out together when the app pauses, not one send() each.

Why: on loopback one send() costs about 6 us of kernel time (the receiver's TCP stack runs in
the sender's call), more than all our Python per chunk. An app that streams 16 chunks without
waiting on anything paid 17 sends per response. Now a chunk with more to come is kept
(`_Connection.write_soon`) and a `Flusher`, one per `serve()`, writes what every connection
kept as soon as the app's task yields to the scheduler: the first kept chunk reschedules the
parked flusher, and trio runs it in its next batch, after the app's task has run as far as it
can without waiting. There is no timer, so no chunk waits for anything but the app's own code
between two awaits that did not block; the end of the response, 64 KiB kept, or any other
write sends it at once.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import trio

__all__ = ["KEEP_LIMIT", "Flusher"]

error_log: Final = logging.getLogger("trioserve.error")

# Most bytes a connection keeps before a write: a socket's worth on this kind of machine.
KEEP_LIMIT: Final = 64 * 1024


class _Keeper(Protocol):
    def flush_kept(self) -> None: ...


class Flusher:
    """One parked task that writes what connections kept, once their tasks have yielded."""

    __slots__ = ("_closed", "_due", "_parked", "_task")

    def __init__(self) -> None:
        self._due: list[_Keeper] = []
        self._task: trio.lowlevel.Task | None = None
        self._parked = False
        self._closed = False

    def add(self, keeper: _Keeper) -> None:
        """`keeper` has started keeping bytes: flush it after the current task yields."""
        self._due.append(keeper)
        if self._parked:
            self._parked = False
            assert self._task is not None
            trio.lowlevel.reschedule(self._task)
        elif self._task is None:
            # A system task, as the idle reaper: it must outlive any one connection's task,
            # and it can never raise (see `_run`).
            self._task = trio.lowlevel.spawn_system_task(self._run, name="trioserve flusher")

    def close(self) -> None:
        """Stop the task once nothing is due (serve() calls this when it returns)."""
        self._closed = True
        if self._parked:
            self._parked = False
            assert self._task is not None
            trio.lowlevel.reschedule(self._task)

    async def _run(self) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = False
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            while True:
                due = self._due
                if due:
                    self._due = []
                    for keeper in due:
                        try:
                            keeper.flush_kept()
                        except Exception:  # our bug: lose that connection's bytes, not the run
                            error_log.exception("internal error writing a streamed response")
                    continue
                if self._closed:
                    return
                self._parked = True
                await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._task = None
