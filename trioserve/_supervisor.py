"""The process supervisor: N workers on shared sockets, rolling restarts, dev reloads.

The supervisor opens (or adopts) every listener once and starts each worker the way systemd
would: socket-activated, with the sockets at fds 3, 4, ..., `LISTEN_FDS`, `LISTEN_FDNAMES` and
`LISTEN_PID` set to the worker's own pid, and `NOTIFY_SOCKET` pointing at a datagram socket the
supervisor owns. A worker is an ordinary `trioserve` process; it says `READY=1` once it serves.

Because every worker accepts from the same kernel queues, replacing one never refuses a
connection: the replacement is started and must say `READY=1` before the old one is asked to
drain, and while it drains the others (and the replacement) keep accepting. The supervisor
itself holds the sockets, so even with one worker a connection arriving mid-restart waits in
the backlog instead of being refused.

Signals stay with the CLI, which calls `restart()` on SIGHUP and cancels `run()` to stop.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ._errors import TrioserveError, WorkerStartupError
from ._listeners import Listener
from ._notify import Notifier

__all__ = ["Supervisor", "WorkerStartupError"]

log = logging.getLogger("trioserve.error")

_ACTIVATE = str(Path(__file__).with_name("_activate.py"))
# Variables a worker must not inherit: its sockets and notify socket come from us, and its
# options come on its command line (a TRIOSERVE_WORKERS in the environment would recurse).
_PRIVATE_ENV_PREFIXES = ("LISTEN_", "NOTIFY_", "WATCHDOG_", "TRIOSERVE_")
# Restart back-off for workers that die: 0.1 s doubling to 10 s; a worker that served for
# _STABLE_SECONDS resets it. Enough to keep a crash loop from burning a core.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
_STABLE_SECONDS = 10.0
# --reload: changes are grouped over 400 ms (an editor's save is a burst of events), and the
# watcher thread comes back every 250 ms with or without changes (how we learn it is set up).
_RELOAD_DEBOUNCE_MS = 400
_RELOAD_POLL_MS = 250
# Beyond the graceful timeout, how long a draining worker gets before SIGKILL.
_KILL_MARGIN = 5.0


@dataclass(eq=False)
class _Worker:
    slot: int
    process: trio.Process
    started_at: float
    ready: bool = False
    settled: trio.Event = field(default_factory=trio.Event)  # ready, or exited
    exited: trio.Event = field(default_factory=trio.Event)
    # It said STOPPING=1 (serve() says so after closing its listeners) or it exited: either
    # way it accepts no more connections.
    stopped_accepting: trio.Event = field(default_factory=trio.Event)
    retiring: bool = False  # we asked it to stop: its exit is expected

    @property
    def pid(self) -> int:
        return self.process.pid


def fd_names(listeners: Sequence[Listener]) -> list[str]:
    """LISTEN_FDNAMES for the workers: an inherited socket keeps its name; one we bound is named
    by kind and position."""
    return [
        listener.name if listener.name else f"{listener.kind}{index}"
        for index, listener in enumerate(listeners)
    ]


class Supervisor:
    """Runs `command` as `workers` socket-activated processes over `listeners`."""

    def __init__(
        self,
        command: Sequence[str],
        listeners: Sequence[Listener],
        *,
        workers: int = 1,
        graceful_timeout: float = 30.0,
        startup_timeout: float = 60.0,
        max_requests: int | None = None,
        max_requests_jitter: int = 0,
        notifier: Notifier | None = None,
        reload_dirs: Sequence[str] | None = None,
        force_stop: trio.Event | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = list(command)
        self.listeners = list(listeners)
        self.worker_count = workers
        self.graceful_timeout = graceful_timeout
        self.startup_timeout = startup_timeout
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.notifier = notifier or Notifier(None)
        env = os.environ if environ is None else environ
        self.environ = {k: v for k, v in env.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        self.fds = [listener.socket.fileno() for listener in self.listeners]
        self.fdnames = ":".join(fd_names(self.listeners))
        self.slots: list[_Worker | None] = [None] * workers
        self.by_pid: dict[int, _Worker] = {}
        self.restarts: list[trio.MemorySendChannel[int]] = []
        self.restart_lock = trio.Lock()
        self.restart_pending = False
        self.reload_dirs = list(reload_dirs) if reload_dirs is not None else None
        if self.reload_dirs is not None:
            _require_watchfiles()
        self.force_stop = force_stop if force_stop is not None else trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._notify_address = ""

    # -- public control ---------------------------------------------------------------------

    def restart(self) -> None:
        """Roll every worker over to a new one (SIGHUP, or a change under --reload).

        Asked again while one runs, another follows it: a file saved mid-restart must not be
        missed, and two in a row collapse into one.
        """
        if self._nursery is None or not self._started or self.restart_lock.locked():
            # Before every worker is up, a restart would race the startup: defer it.
            self.restart_pending = True
        else:
            self._nursery.start_soon(self._rolling_restart)

    def workers(self) -> list[int]:
        """Pids of the workers currently in their slots."""
        return [worker.pid for worker in self.slots if worker is not None]

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every worker, report ready, keep them alive; on cancel, stop them all."""
        failure: str | None = None
        async with _notify_socket() as (notify_sock, address):
            self._notify_address = address
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._read_notifications, notify_sock)
                    failure = await self._start_all()
                    if failure is None:
                        for slot in range(self.worker_count):
                            nursery.start_soon(self._keep_alive, slot)
                        if self.notifier.watchdog_usec is not None:
                            nursery.start_soon(self.notifier.run_watchdog)
                        if self.reload_dirs is not None:
                            await nursery.start(self._watch, self.reload_dirs)
                        log.info("%d worker(s) ready: %s", self.worker_count, self.workers())
                        self.notifier.notify(READY=1, STATUS=self._status())
                        self._started = True
                        if self.restart_pending:
                            self.restart_pending = False
                            nursery.start_soon(self._rolling_restart)
                        task_status.started()
                        await trio.sleep_forever()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_all()
        if failure is not None:
            # Raised out here so that callers get it bare, not inside an exception group.
            raise WorkerStartupError(failure)

    async def _start_all(self) -> str | None:
        for slot in range(self.worker_count):
            worker = await self._spawn(slot)
            self.slots[slot] = worker
            if not worker.ready:
                return f"worker {slot} {_describe_failure(worker)} before it was ready"
        return None

    async def _spawn(self, slot: int) -> _Worker:
        """Start one worker and wait until it is ready or gone (bounded by startup_timeout)."""
        assert self._nursery is not None
        command = list(self.command)
        if self.max_requests is not None:
            # Jitter, so that workers started together do not all recycle together.
            limit = self.max_requests + random.randint(0, self.max_requests_jitter)
            command += ["--max-requests", str(limit)]
        env = dict(self.environ, NOTIFY_SOCKET=self._notify_address)
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-S",
                _ACTIVATE,
                ",".join(map(str, self.fds)),
                self.fdnames,
                str(os.getpid()),
                "--",
                *command,
            ],
            pass_fds=self.fds,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        worker = _Worker(slot, process, started_at=trio.current_time())
        self.by_pid[process.pid] = worker
        self._nursery.start_soon(self._reap, worker)
        log.info("worker %d starting (pid %d)", slot, process.pid)
        with trio.move_on_after(self.startup_timeout):
            await worker.settled.wait()
        if not worker.settled.is_set():
            log.error(
                "worker %d (pid %d) not ready after %g s; stopping it",
                slot,
                worker.pid,
                self.startup_timeout,
            )
            await self._retire(worker, graceful=False)
        return worker

    async def _reap(self, worker: _Worker) -> None:
        await worker.process.wait()
        self.by_pid.pop(worker.pid, None)
        worker.exited.set()
        worker.settled.set()
        worker.stopped_accepting.set()
        if not worker.retiring:
            log.warning(
                "worker %d (pid %d) %s", worker.slot, worker.pid, _describe_failure(worker)
            )

    async def _keep_alive(self, slot: int) -> None:
        """Replace the slot's worker whenever it dies without being asked to."""
        failures = 0
        while True:
            worker = self.slots[slot]
            assert worker is not None
            await worker.exited.wait()
            if self.slots[slot] is not worker:
                continue  # replaced by a rolling restart; watch the new one
            lived = trio.current_time() - worker.started_at
            failures = 0 if worker.ready and lived >= _STABLE_SECONDS else failures + 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** max(0, failures - 1))
            log.info("restarting worker %d in %.1f s", slot, delay)
            await trio.sleep(delay)
            replacement = await self._spawn(slot)
            if self.slots[slot] is worker:
                self.slots[slot] = replacement
            self.notifier.notify(STATUS=self._status())

    async def _rolling_restart(self) -> None:
        async with self.restart_lock:
            await self._roll_all()
            while self.restart_pending:
                self.restart_pending = False
                await self._roll_all()

    async def _roll_all(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.notify(RELOADING=1, MONOTONIC_USEC=usec, STATUS="rolling restart")
        log.info("rolling restart of %d worker(s)", self.worker_count)
        for slot in range(self.worker_count):
            if not await self._replace(slot):
                break  # what broke one replacement would break the rest
        else:
            log.info("rolling restart done: %s", self.workers())
        self.notifier.notify(READY=1, STATUS=self._status())

    async def _replace(self, slot: int) -> bool:
        """Start the slot's successor; once it is ready, drain the old one. False if it failed."""
        old = self.slots[slot]
        new = await self._spawn(slot)
        if not new.ready:
            log.error(
                "worker %d: the replacement %s; the old worker keeps serving",
                slot,
                _describe_failure(new),
            )
            return False
        self.slots[slot] = new
        if old is not None and not old.exited.is_set():
            assert self._nursery is not None
            self._nursery.start_soon(self._retire, old)
            # Done only when the old worker no longer accepts: from then on every new
            # connection reaches new code. (Its in-flight requests go on draining.)
            with trio.move_on_after(self.graceful_timeout + _KILL_MARGIN):
                await old.stopped_accepting.wait()
        return True

    async def _retire(self, worker: _Worker, *, graceful: bool = True) -> None:
        """SIGTERM (a drain), then SIGKILL once the graceful timeout and a margin are over.

        Waits on the process itself, not on `exited`: when the supervisor stops, the reaper
        tasks are gone with their nursery.
        """
        worker.retiring = True
        if worker.process.poll() is not None:
            return
        if graceful:
            worker.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.graceful_timeout + _KILL_MARGIN):
                await worker.process.wait()
        if worker.process.poll() is None:
            log.warning("worker %d (pid %d) still running: killing it", worker.slot, worker.pid)
            worker.process.kill()
            await worker.process.wait()

    async def _stop_all(self) -> None:
        """Drain every worker at once; a second signal (force_stop) makes them stop at once."""
        live = [w for w in self.by_pid.values() if w.process.poll() is None]
        if not live:
            return
        self.notifier.notify(
            STOPPING=1,
            STATUS=f"stopping {len(live)} worker(s)",
            EXTEND_TIMEOUT_USEC=math.ceil((self.graceful_timeout + _KILL_MARGIN) * 1_000_000),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_force_stop, live)
            async with trio.open_nursery() as retiring:
                for worker in live:
                    retiring.start_soon(self._retire, worker)
            nursery.cancel_scope.cancel()

    async def _forward_force_stop(self, live: list[_Worker]) -> None:
        await self.force_stop.wait()
        log.warning("stopping %d worker(s) at once", len(live))
        for worker in live:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)  # their second: stop at once

    async def _read_notifications(self, sock: trio.socket.SocketType) -> None:
        """Route each worker's sd_notify datagram by the sender's pid (SCM_CREDENTIALS)."""
        while True:
            data, ancdata, _, _ = await sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            pid = _sender_pid(ancdata)
            worker = self.by_pid.get(pid) if pid is not None else None
            if worker is None:
                continue
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            if fields.get("READY") == "1" and not worker.ready:
                worker.ready = True
                worker.settled.set()
                log.info("worker %d (pid %d) ready", worker.slot, worker.pid)
            if fields.get("STOPPING") == "1":
                worker.stopped_accepting.set()
            if fields.get("TRIOSERVE_RECYCLE") == "1" and self.slots[worker.slot] is worker:
                log.info(
                    "worker %d (pid %d) reached --max-requests; replacing it",
                    worker.slot,
                    worker.pid,
                )
                assert self._nursery is not None
                self._nursery.start_soon(self._replace_once, worker.slot)

    async def _replace_once(self, slot: int) -> None:
        async with self.restart_lock:
            await self._replace(slot)
        self.notifier.notify(STATUS=self._status())

    async def _watch(
        self, dirs: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """--reload: a rolling restart whenever a .py file under `dirs` changes.

        Reports started only once the inotify watches exist (watchfiles sets them up before
        its first yield, which `yield_on_timeout` makes prompt), so that READY=1 means an edit
        made from then on is seen.
        """
        from watchfiles import PythonFilter, awatch

        watching = False
        async for changes in awatch(
            *dirs,
            watch_filter=PythonFilter(),
            debounce=_RELOAD_DEBOUNCE_MS,
            rust_timeout=_RELOAD_POLL_MS,
            yield_on_timeout=True,
        ):
            if not watching:
                watching = True
                log.info("watching %s for changes", ", ".join(dirs))
                task_status.started()
            if changes:
                names = sorted({Path(path).name for _, path in changes})
                log.info("changed: %s; restarting", ", ".join(names))
                self.restart()

    def _status(self) -> str:
        pids = [worker.pid for worker in self.slots if worker is not None and worker.ready]
        summary = ", ".join(str(listener) for listener in self.listeners)
        return f"{len(pids)} worker(s) serving on {summary} (pids {' '.join(map(str, pids))})"


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def _sender_pid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int(_UCRED.unpack_from(data)[0])
    return None


@asynccontextmanager
async def _notify_socket() -> AsyncIterator[tuple[trio.socket.SocketType, str]]:
    """A datagram socket in the abstract namespace that tells us each sender's pid."""
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"trioserve-{os.getpid()}-{os.urandom(6).hex()}"
        await sock.bind("\0" + name)  # abstract: no file to clean up
        yield sock, "@" + name


def _require_watchfiles() -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise TrioserveError(
            "--reload needs the watchfiles package: pip install 'trioserve[reload]'"
        ) from None


def _describe_failure(worker: _Worker) -> str:
    code = worker.process.returncode
    if code is None:
        return "did not answer"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
