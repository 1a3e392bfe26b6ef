"""Run the real `trioserve` CLI in a subprocess and know when it is ready, without sleeping.

Readiness comes the way systemd gets it: the child sends `READY=1` to a `NOTIFY_SOCKET` that
the test binds. The `STATUS=` in the same datagram lists the live listeners.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STARTUP_TIMEOUT = 20.0
# Every server started, so that tests/conftest.py can stop any a failing test left running.
STARTED: list[Server] = []


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    notify: socket.socket
    status: str = ""
    messages: list[str] = field(default_factory=list)

    @property
    def tcp_ports(self) -> list[int]:
        return [int(port) for port in re.findall(r"http://[^ ,]*:(\d+)", self.status)]

    def wait_message(self, prefix: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """Wait for the next sd_notify datagram that starts with `prefix`."""
        self.notify.settimeout(timeout)
        while True:
            try:
                message = self.notify.recv(65536).decode()
            except TimeoutError:
                raise AssertionError(
                    f"no {prefix!r} notification in {timeout} s; got {self.messages}"
                ) from None
            self.messages.append(message)
            if message.startswith(prefix):
                return message

    def kill(self) -> None:
        """SIGKILL the server and every worker it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def read_stdout_line(self) -> str:
        """The app's next stdout line (tests' apps print when a request reaches them)."""
        assert self.process.stdout is not None
        return self.process.stdout.readline().decode().strip()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for the process to exit; return its exit code and stderr."""
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"server did not exit in {timeout} s: {err.decode()}") from None
        finally:
            self.notify.close()
        return self.process.returncode, err.decode()


class Lines:
    """Lines from a child's pipe, each wait bounded by a deadline (select, never sleep)."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self.fd = pipe.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def until(self, wanted: Callable[[str], bool], timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                self.seen.append(line.decode())
                if wanted(self.seen[-1]):
                    return self.seen[-1]
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; lines so far: {self.seen}"
            if select.select([self.fd], [], [], remaining)[0]:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"pipe closed; lines so far: {self.seen}"
                self.buffer += chunk


def trioserve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioserve", *args]


def start_server(
    args: Sequence[str],
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    wrapper: Sequence[str] = (),
    wait_ready: bool = True,
    stdout: int = subprocess.DEVNULL,
) -> Server:
    """Start `trioserve ARGS` (behind `wrapper`, if any) and wait for READY=1."""
    address = str(tmp_path / f"notify-{len(os.listdir(tmp_path))}.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    child_env.update(env or {})
    child_env["NOTIFY_SOCKET"] = address
    process = subprocess.Popen(
        [*wrapper, *trioserve_command(*args)],
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        # Its own process group (id = its pid): cleanup can stop it and any workers it
        # started, and nothing else.
        start_new_session=True,
    )
    server = Server(process, notify)
    STARTED.append(server)
    if wait_ready:
        try:
            ready = server.wait_message("READY=1")
        except AssertionError:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"server never became ready: {err.decode()}") from None
        server.status = ready.partition("STATUS=")[2]
    return server


def run_to_exit(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Run `trioserve ARGS` to completion (for commands that must fail fast)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    child_env.update(env or {})
    return subprocess.run(
        trioserve_command(*args),
        env=child_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        pass_fds=pass_fds,
        timeout=timeout,
        check=False,
    )


def http_get(
    port: int | None = None,
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    unix: str | None = None,
    headers: str = "",
    timeout: float = 10.0,
) -> bytes:
    """One HTTP/1.1 request with Connection: close over a plain blocking socket."""
    if unix is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = unix
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (host, port)
    with sock:
        sock.settimeout(timeout)
        sock.connect(target)  # type: ignore[arg-type]
        request = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n"
        sock.sendall(request.encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
        return bytes(data)
