"""How response bytes reach a connection's socket: at once, kept a moment, or waiting for room.

A write is first a plain non-blocking send(), which takes a whole response smaller than the
socket buffer with no cancel scope and no trip through the scheduler; only a full buffer makes
it wait, under the write timeout.

Streamed chunks go out together when the app pauses, not one send() each. On loopback one
send() costs about 6 us of kernel time (the receiver's TCP stack runs in the sender's call),
more than all our Python per chunk, and an app streaming 16 chunks without waiting on anything
paid 17 sends per response. So a chunk with more to come is kept (`Writer.write_soon`), and a
`Flusher`, one per `serve()`, writes what every connection kept as soon as the app's task
yields to the scheduler: the first kept chunk reschedules the parked flusher, which trio runs
in its next batch, after the app's task has run as far as it can without waiting. There is no
timer: no chunk waits for anything but the app's own code between two awaits that did not
block, and the end of the response, 64 KiB kept, or any other write sends it at once.
"""

from __future__ import annotations

import logging
import socket
from typing import Final

import trio

from ._exchange import peer_name

__all__ = ["KEEP_LIMIT", "Flusher", "Writer"]

error_log: Final = logging.getLogger("trioserve.error")

# Most bytes a connection keeps before it writes: a socket buffer's worth on this kind of machine.
KEEP_LIMIT: Final = 64 * 1024


class Flusher:
    """One parked task that writes what connections kept, once their tasks have yielded."""

    __slots__ = ("_closed", "_due", "_parked", "_task")

    def __init__(self) -> None:
        self._due: list[Writer] = []
        self._task: trio.lowlevel.Task | None = None
        self._parked = False
        self._closed = False

    def add(self, writer: Writer) -> None:
        """`writer` has started keeping bytes: flush it after the current task yields."""
        self._due.append(writer)
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
                    for writer in due:
                        try:
                            writer.flush_kept()
                        except Exception:  # our bug: lose that connection's bytes, not the run
                            error_log.exception("internal error writing a streamed response")
                    continue
                if self._closed:
                    return
                self._parked = True
                await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._task = None


class Writer:
    """The write side of one connection's socket; `broken` once nothing more can get through.

    A base class of the connection rather than an object it holds: idle keep-alive connections
    are counted in the thousands, and a second object per connection costs ~0.2 KiB each.
    """

    __slots__ = (
        "_flusher",
        "_kept",
        "_kept_size",
        "_rest",
        "_timeout",
        "_writing",
        "broken",
        "client",
        "raw",
    )

    def __init__(
        self,
        raw: socket.socket,
        flusher: Flusher,
        timeout: float,
        client: tuple[str, int] | None,
    ) -> None:
        self.raw = raw  # non-blocking; owned by the connection
        self._flusher = flusher
        self._timeout = timeout
        self.client = client  # the peer, for log lines
        self.broken = False
        self._writing = False
        self._kept: list[bytes] | None = None  # see write_soon
        self._kept_size = 0
        self._rest: trio.Event | None = None  # set when the flusher's unfinished write ends

    async def write(self, data: bytes) -> bool:
        """Write `data` (after what was kept) within the write timeout; False if it cannot be.

        The first attempt is a plain non-blocking send, which takes all of a response
        smaller than the socket buffer: no cancel scope and no trip through the scheduler.
        Only a full buffer makes us wait, under the write timeout.
        """
        if self._rest is not None:  # the flusher's write is still going out: keep the order
            await self._rest.wait()
        if self.broken:
            return False
        if self._writing:
            raise trio.BusyResourceError("two tasks are sending on one HTTP connection")
        kept = self._kept
        if kept is not None:
            kept.append(data)
            data = b"".join(kept)
            self._kept = None
            self._kept_size = 0
        sent = self._send_now(data)
        if sent == len(data):
            return True
        if sent < 0:
            return False
        self._writing = True
        try:
            return await self._write_blocked(data, sent)
        finally:
            self._writing = False

    async def write_soon(self, data: bytes) -> bool:
        """Write `data`, or keep it to go out with what follows before the app's task yields.

        For response bytes with more to come. Up to KEEP_LIMIT is kept; past that, or while
        the flusher's own write waits, this is `write()` with its backpressure.
        """
        if self._rest is None and not self.broken and not self._writing:
            size = self._kept_size + len(data)
            if size <= KEEP_LIMIT:
                if self._kept is None:
                    self._kept = [data]
                    self._flusher.add(self)
                else:
                    self._kept.append(data)
                self._kept_size = size
                return True
        return await self.write(data)

    def flush_kept(self) -> None:
        """Write what was kept, from the flusher: at once, or in a task of its own if it waits."""
        kept = self._kept
        if kept is None:
            return
        self._kept = None
        self._kept_size = 0
        if self.broken:
            return
        data = b"".join(kept)
        sent = self._send_now(data)
        if 0 <= sent < len(data):
            # A client reading slower than the app writes: the rest waits for room, and the
            # app's next write waits for it (`_rest`), as it would have waited itself.
            self._rest = trio.Event()
            self._writing = True
            trio.lowlevel.spawn_system_task(
                self._write_rest, data, sent, name="trioserve streamed write"
            )

    def _send_now(self, data: bytes | memoryview) -> int:
        """One non-blocking send: the bytes it took (0: none fit); -1, and broken, if gone."""
        try:
            return self.raw.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True
            return -1

    async def _write_rest(self, data: bytes, sent: int) -> None:
        try:
            if self.raw.fileno() < 0:  # the connection closed before this task first ran
                self.broken = True
            else:
                await self._write_blocked(data, sent)
        except Exception:  # a system task must not raise
            self.broken = True
            error_log.exception("internal error writing a streamed response")
        finally:
            self._writing = False
            rest, self._rest = self._rest, None
            if rest is not None:
                rest.set()

    async def _write_blocked(self, data: bytes, sent: int) -> bool:
        """Write `data` from `sent` on, waiting for room under the write timeout."""
        raw = self.raw
        try:
            view = memoryview(data)
            with trio.move_on_after(self._timeout):
                while True:
                    await trio.lowlevel.wait_writable(raw)
                    taken = self._send_now(view[sent:])
                    if taken < 0:
                        return False
                    sent += taken
                    if sent == len(view):
                        return True
            error_log.debug("write timeout on the connection from %s", peer_name(self.client))
        except (OSError, trio.ClosedResourceError):
            pass
        self.broken = True
        return False

    async def flush(self) -> None:
        """Write what was kept now, as `write()` does."""
        if self._kept is not None:
            await self.write(b"")

    def drop(self) -> None:
        """The connection is closing: forget kept bytes and wake the flusher's write, if any."""
        self._kept = None
        if self._rest is not None:
            trio.lowlevel.notify_closing(self.raw)
