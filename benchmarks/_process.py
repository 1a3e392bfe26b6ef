"""Servers under test as processes: start pinned, wait until ready, read /proc, stop by PID.

Every process this module starts is one the harness owns, and it is stopped by its PID (SIGTERM,
then SIGKILL after a bound). Some servers fork workers of their own (granian always runs its
worker in a child process), so CPU time and RSS are summed over the server's process tree, and
a worker left behind after its parent was killed is killed by its PID as well.

Readiness: trioserve is started with `NOTIFY_SOCKET` pointing at a datagram socket the harness
bound, and is ready when `READY=1` arrives (its `STATUS=` names the port it picked from
`127.0.0.1:0`). The peers have no such signal here, so they get a port from `PORT_RANGE` and are
polled with connect attempts every 10 ms under a deadline: acceptable in a benchmark harness, not
in tests. A server started for a TLS scenario is checked the same way; a check that asks for a
200 (`request_ok`) then makes its request over TLS, without verifying the self-signed
certificate: it only checks that the server answers.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PORT_RANGE",
    "ServerProcess",
    "StartError",
    "core_busy_seconds",
    "free_port",
    "request_ok",
    "start_server",
    "wait_until_quiet",
]

# Fixed high ports, below Linux's default ephemeral range (32768-60999) so no client socket of
# ours can be sitting on one. Each start takes the next port from a random point in the range and
# checks it is free by binding it without SO_REUSEADDR (a TIME_WAIT left by an earlier run makes
# that bind fail, so such a port is skipped too).
PORT_RANGE = range(18000, 19000)
_port_cursor = random.randrange(len(PORT_RANGE))

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_STATUS_PORT = re.compile(rb"https?://127\.0\.0\.1:(\d+)")
_HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


class StartError(Exception):
    """A server did not become ready before its deadline, or exited while starting."""


def free_port() -> int:
    global _port_cursor
    for _ in range(len(PORT_RANGE)):
        port = PORT_RANGE[_port_cursor % len(PORT_RANGE)]
        _port_cursor += 1
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    raise StartError(f"no free port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


def core_busy_seconds(core: int) -> float:
    """Time core `core` spent running processes, or stolen by the hypervisor, since boot.

    From /proc/stat. The difference over a run, less the server's own CPU time, is what other
    processes (or the hypervisor) took from the server's core: a measure of how quiet the run
    was. Interrupt and softirq time are left out: on loopback most of it is the network stack
    carrying the benchmark's own packets, which no process is charged for.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        words = line.split()
        if words[0] == f"cpu{core}":
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, words[1:9])
            return (user + nice + system + steal) / _CLK_TCK
    raise OSError(f"no cpu{core} line in /proc/stat")


def wait_until_quiet(cores: Sequence[int], *, busy_below: float, within: float) -> float:
    """Wait, up to `within` seconds, until `cores` together are busy less than `busy_below`
    (a fraction of one core) over a 0.5 s sample; returns the seconds waited.

    On a shared machine a test suite or another benchmark may be running: starting a load run
    in a quiet moment costs a few seconds and saves a meaningless figure.
    """
    start = time.monotonic()
    while True:
        before = sum(core_busy_seconds(core) for core in cores)
        time.sleep(0.5)
        busy = (sum(core_busy_seconds(core) for core in cores) - before) / 0.5
        waited = time.monotonic() - start
        if busy < busy_below or waited >= within:
            return waited


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat_fields(int(entry))[1]) == pid:
                    found.append(int(entry))
    return found


@dataclass
class ServerProcess:
    """A started server: its PID, the port it serves and where its stderr goes."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float
    # Every PID seen in the tree, with its start time: a PID is only ever killed while it still
    # names the same process (the start time, field 22 of /proc/PID/stat, tells a reused PID).
    seen_pids: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        """The server's PID and every descendant's, parents first."""
        pids = [self.pid]
        index = 0
        while index < len(pids):
            pids.extend(_children(pids[index]))
            index += 1
        for pid in pids:
            if pid not in self.seen_pids:
                with contextlib.suppress(OSError, IndexError):
                    self.seen_pids[pid] = _stat_fields(pid)[19]
        return pids

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the whole tree (all threads), from /proc/PID/stat."""
        ticks = 0
        for pid in self.tree():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat_fields(pid)
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / _CLK_TCK

    def rss_kib(self) -> int:
        """VmRSS of the whole tree in KiB, from /proc/PID/status."""
        total = 0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def terminate(self, timeout: float) -> tuple[float, int | None]:
        """SIGTERM, wait up to `timeout`; (seconds to exit, exit code or None if it was killed)."""
        self.tree()  # remember the workers now, while the parent still knows them
        start = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - start
        self.kill()
        return elapsed, code

    def kill(self) -> None:
        """SIGKILL the server if it is still running, and any worker it left behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        for pid, started in self.seen_pids.items():
            if pid == self.pid:
                continue
            with contextlib.suppress(OSError, IndexError):
                fields = _stat_fields(pid)
                if fields[19] == started and fields[0] != "Z":
                    os.kill(pid, signal.SIGKILL)


def _unverified_tls() -> ssl.SSLContext:
    """A client context that accepts any certificate: for readiness checks only (the harness's
    certificate is self-signed, and the traffic never leaves 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def request_ok(port: int, timeout: float = 5.0, *, tls: bool = False) -> bool:
    """One `GET /` on a new connection (over TLS with `tls`); True if the answer is a 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = _unverified_tls().wrap_socket(raw) if tls else raw
            with sock:
                sock.sendall(_HELLO_REQUEST)
                return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:  # ssl.SSLError included
        return False


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    notify: bool,
    env: dict[str, str],
    cwd: Path,
    log_dir: Path,
    core: int | None,
    deadline: float = 30.0,
    until_response: bool = False,
    tls: bool = False,
) -> ServerProcess:
    """Start `argv` pinned to `core` and return once it accepts connections.

    With `notify`, `argv` listens on port 0 (pass `port=0`) and readiness is `READY=1` on
    `NOTIFY_SOCKET`; otherwise `port` is the one from `free_port()` that `argv` names, and it is
    polled. `until_response` waits for a served 200 rather than an accepted connection (the
    startup scenario); with `tls` that request is made over TLS.
    """
    command = list(argv)
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    log_path = log_dir / f"{name}.{time.monotonic_ns()}.log"
    env = dict(env)
    notify_dir = None
    notify_sock = None
    try:
        if notify:
            notify_dir = tempfile.TemporaryDirectory(prefix="bench-notify-")
            notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify_sock.bind(os.path.join(notify_dir.name, "notify"))
            notify_sock.settimeout(0.1)
            env["NOTIFY_SOCKET"] = os.path.join(notify_dir.name, "notify")
        with log_path.open("wb") as log:
            started_at = time.monotonic()
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        server = ServerProcess(name, proc, port, log_path, started_at)
        try:
            server.port = _wait_ready(
                server, notify_sock, started_at + deadline, until_response, tls
            )
        except BaseException:
            server.kill()
            raise
        return server
    finally:
        if notify_sock is not None:
            notify_sock.close()
        if notify_dir is not None:
            notify_dir.cleanup()


def _wait_ready(
    server: ServerProcess,
    notify_sock: socket.socket | None,
    deadline: float,
    until_response: bool,
    tls: bool,
) -> int:
    port = server.port
    while True:
        if server.proc.poll() is not None:
            raise StartError(
                f"{server.name} exited with {server.proc.returncode} while starting:\n"
                + server.log_tail()
            )
        if time.monotonic() > deadline:
            raise StartError(f"{server.name} not ready in time:\n" + server.log_tail())
        if notify_sock is not None:
            try:
                message = notify_sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" not in message.split(b"\n"):
                continue
            match = _STATUS_PORT.search(message)
            if match is None:
                raise StartError(f"READY=1 without a 127.0.0.1 port in STATUS: {message!r}")
            port = int(match.group(1))
            if not until_response or request_ok(port, tls=tls):
                return port
            raise StartError(f"{server.name} said READY=1 but did not answer a request")
        if until_response:
            if request_ok(port, timeout=1.0, tls=tls):
                return port
        else:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return port
        time.sleep(0.002 if until_response else 0.01)
