"""The supervisor with real processes: shared sockets, crashes, rolling restarts, reloads.

Readiness and restarts are observed through the supervisor's own sd_notify messages (READY=1,
STATUS= with the worker pids), the way systemd observes them; nothing here sleeps to wait.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.clitools import Server, http_get, run_to_exit, start_server

ACTIVATE = [sys.executable, str(Path(__file__).with_name("sd_child.py")), "activate"]

VERSIONED_APP = """
import os

VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"""


def pids_of(status: str) -> list[int]:
    match = re.search(r"\(pids ([\d ]*)\)", status)
    assert match, status
    return [int(pid) for pid in match.group(1).split()]


def body_of(response: bytes) -> bytes:
    assert response.startswith(b"HTTP/1.1 200 "), response
    return response.partition(b"\r\n\r\n")[2]


def demo_pid(**request: object) -> int:
    raw = http_get(headers="Accept: application/json\r\n", **request)  # type: ignore[arg-type]
    return int(json.loads(body_of(raw))["pid"])


def stop(server: Server) -> tuple[int, str]:
    server.signal(signal.SIGTERM)
    return server.finish(timeout=30)


def test_workers_share_an_inherited_fd_and_a_unix_socket(tmp_path: Path) -> None:
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    port = inherited.getsockname()[1]
    path = str(tmp_path / "w.sock")
    server = start_server(
        ["trioserve.demo:app", "--workers", "2", "--listen", "fd:web", "--listen", f"unix:{path}"],
        tmp_path,
        wrapper=[*ACTIVATE, "--names", "web", "--fds", str(inherited.fileno()), "--"],
        pass_fds=[inherited.fileno()],
    )
    inherited.close()
    workers = set(pids_of(server.status))
    assert len(workers) == 2
    # Both workers accept from the same kernel queues: over many fresh connections, each
    # socket is served, and only ever by the two workers.
    seen_tcp = Counter(demo_pid(port=port) for _ in range(150))
    seen_unix = Counter(demo_pid(unix=path) for _ in range(150))
    assert set(seen_tcp) <= workers and set(seen_unix) <= workers
    assert set(seen_tcp) | set(seen_unix) == workers, (seen_tcp, seen_unix)
    code, err = stop(server)
    assert code == 0, err
    assert not Path(path).exists()  # unlinked once, by the supervisor
    assert err.count(f"listening on unix:{path}") == 1  # bound once, by the supervisor


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    server = start_server(
        ["trioserve.demo:app", "--workers", "2", "--listen", "127.0.0.1:0"], tmp_path
    )
    port = server.tcp_ports[0]
    first, second = pids_of(server.status)
    os.kill(first, signal.SIGKILL)  # a child of the supervisor we started
    status = server.wait_message("STATUS=")
    while len(pids_of(status)) < 2:
        status = server.wait_message("STATUS=")
    replaced = pids_of(status)
    assert second in replaced and first not in replaced
    assert demo_pid(port=port) in replaced
    code, err = stop(server)
    assert code == 0, err
    assert "was killed by SIGKILL" in err


@dataclass
class Load:
    """Keep-alive clients hammering a port until stopped; every request is accounted for."""

    port: int
    sent: int = 0
    answered: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        sock: socket.socket | None = None
        reused = False
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                except OSError as exc:
                    self.note_failure(f"connect: {exc}")
                    return
                reused = False
            with self.lock:
                self.sent += 1
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if not head:
                    raise ConnectionResetError("closed before any response byte")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                while len(body) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("closed mid-body")
                    body += chunk
            except OSError as exc:
                sock.close()
                sock = None
                with self.lock:
                    self.sent -= 1
                if reused and "before any response byte" in str(exc):
                    # RFC 9112 9.3.1: a request on a reused connection the server closed as
                    # idle may be retried; clients do. Counted, not hidden.
                    with self.lock:
                        self.retried += 1
                    continue
                self.note_failure(f"request: {exc}")
                return
            with self.lock:
                self.answered += 1
            reused = True
            if b"connection: close" in head.lower():
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def note_failure(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def test_sighup_rolls_every_worker_under_load_losing_nothing(tmp_path: Path) -> None:
    server = start_server(
        ["trioserve.demo:app", "--workers", "2", "--listen", "127.0.0.1:0", "--no-access-log"],
        tmp_path,
    )
    before = set(pids_of(server.status))
    load = Load(server.tcp_ports[0])
    threads = [threading.Thread(target=load.client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        server.signal(signal.SIGHUP)
        server.wait_message("RELOADING=1")
        after = set(pids_of(server.wait_message("READY=1", timeout=60)))
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(after) == 2 and not after & before
    assert load.failures == []
    assert load.answered == load.sent > 100
    print(f"rolling restart under load: {load.answered} answered, {load.retried} retried")
    code, err = stop(server)
    assert code == 0, err


def test_reload_serves_new_code_and_a_broken_edit_keeps_the_old(tmp_path: Path) -> None:
    app_dir = tmp_path / "src"
    app_dir.mkdir()
    module = app_dir / "versioned.py"
    module.write_text(VERSIONED_APP.format(version="v1"))
    server = start_server(
        ["versioned:app", "--app-dir", str(app_dir), "--reload", "--listen", "127.0.0.1:0"],
        tmp_path,
    )
    port = server.tcp_ports[0]
    assert body_of(http_get(port)).startswith(b"v1 ")

    module.write_text(VERSIONED_APP.format(version="v2"))
    server.wait_message("RELOADING=1")
    server.wait_message("READY=1")
    assert body_of(http_get(port)).startswith(b"v2 ")

    module.write_text("this is not python\n")
    server.wait_message("RELOADING=1")
    server.wait_message("READY=1")  # sent after a failed roll too: the old worker serves on
    assert body_of(http_get(port)).startswith(b"v2 ")

    module.write_text(VERSIONED_APP.format(version="v3"))
    server.wait_message("RELOADING=1")
    server.wait_message("READY=1")
    assert body_of(http_get(port)).startswith(b"v3 ")
    code, err = stop(server)
    assert code == 0, err
    assert "the old worker keeps serving" in err


def test_max_requests_recycles_a_worker_without_dropping_requests(tmp_path: Path) -> None:
    server = start_server(
        ["trioserve.demo:app", "--workers", "1", "--max-requests", "5", "--listen", "127.0.0.1:0"],
        tmp_path,
    )
    port = server.tcp_ports[0]
    (first,) = pids_of(server.status)
    pids = [demo_pid(port=port) for _ in range(5)]
    assert pids == [first] * 5
    status = server.wait_message("STATUS=")
    while first in pids_of(status) or not pids_of(status):
        status = server.wait_message("STATUS=")
    (second,) = pids_of(status)
    assert demo_pid(port=port) == second
    code, err = stop(server)
    assert code == 0, err


def test_a_worker_failing_at_startup_stops_the_supervisor(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.startup.failed', 'message': 'no database'})\n"
    )
    result = run_to_exit(
        ["failing:app", "--app-dir", str(tmp_path), "--workers", "2", "--listen", "127.0.0.1:0"]
    )
    assert result.returncode == 2
    assert "application startup failed: no database" in result.stderr
    assert "trioserve: error: worker 0 exited with code 2 before it was ready" in result.stderr
    assert "Traceback" not in result.stderr


def test_supervisor_checks_the_app_path_itself() -> None:
    result = run_to_exit(["no_such_module_xyz:app", "--workers", "2"])
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "trioserve: error: cannot import 'no_such_module_xyz:app': "
        "no module named 'no_such_module_xyz'"
    )


def test_workers_do_not_inherit_trioserve_variables(tmp_path: Path) -> None:
    # TRIOSERVE_WORKERS reaches the supervisor; if workers inherited it they would recurse.
    server = start_server(
        ["trioserve.demo:app", "--listen", "127.0.0.1:0"],
        tmp_path,
        env={"TRIOSERVE_WORKERS": "1"},
    )
    (worker,) = pids_of(server.status)
    assert demo_pid(port=server.tcp_ports[0]) == worker
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(worker)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children == []
    code, err = stop(server)
    assert code == 0, err


def test_workers_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    server = start_server(
        ["trioserve.demo:app", "--workers", "2", "--listen", "127.0.0.1:0"], tmp_path
    )
    workers = pids_of(server.status)
    # A pidfd turns readable when its process exits, whoever's child it is.
    pidfds = [os.pidfd_open(pid) for pid in workers]
    try:
        os.kill(server.process.pid, signal.SIGKILL)  # the supervisor we started, by its PID
        server.process.wait(timeout=10)
        # Each worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG), drains and exits.
        pending = set(pidfds)
        deadline = time.monotonic() + 20
        while pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(pending)} worker(s) outlived their supervisor"
            ready, _, _ = select.select(list(pending), [], [], remaining)
            pending -= set(ready)
    finally:
        for fd in pidfds:
            os.close(fd)
