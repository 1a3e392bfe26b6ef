"""Real inheritance: child processes given fds with pass_fds and LISTEN_*, and systemd's own
systemd-socket-activate. tests/sd_child.py plays both the service manager and the server."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.clitools import Lines

CHILD = str(Path(__file__).with_name("sd_child.py"))
TIMEOUT = 15
# The children must not see LISTEN_* that the test runner itself may have been given.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}


def activated(fds: list[int], *command: str, **options: str | int | None) -> list[str]:
    """The command line: our little service manager, then the child command after `--`."""
    line = [sys.executable, CHILD, "activate", "--fds", ",".join(map(str, fds))]
    for key, value in options.items():
        if value is not None:
            line += [f"--{key}", str(value)]
    return [*line, "--", *command]


def run_child(fds: list[int], *args: str, **options: str | int | None) -> dict[str, object]:
    command = activated(fds, sys.executable, CHILD, *args, **options)
    proc = subprocess.run(
        command, pass_fds=fds, capture_output=True, text=True, timeout=TIMEOUT, env=CLEAN_ENV
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def tcp_listener(stack: ExitStack, host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = stack.enter_context(socket.socket(family))
    sock.bind((host, 0))
    sock.listen()
    return sock


def unix_listener(stack: ExitStack, path: Path) -> socket.socket:
    sock = stack.enter_context(socket.socket(socket.AF_UNIX))
    sock.bind(str(path))
    sock.listen()
    return sock


def test_inherited_fds_keep_order_names_and_their_own_family(
    sockets: ExitStack, tmp_path: Path
) -> None:
    web = tcp_listener(sockets)
    ctl = unix_listener(sockets, tmp_path / "ctl.sock")
    web6 = tcp_listener(sockets, "::1")
    port, port6 = web.getsockname()[1], web6.getsockname()[1]
    out = run_child(
        [web.fileno(), ctl.fileno(), web6.fileno()],
        "inherit",
        names="web:ctl:web6",
        pidfdid="self",
    )
    common = {"inherited": True, "cloexec": True, "nonblocking": True}
    assert out["listeners"] == [
        {
            "kind": "tcp",
            "family": "AF_INET",
            "address": ["127.0.0.1", port],
            "name": "web",
            "fd": 3,
            "v6only": None,
            "str": f'fd 3 "web" -> http://127.0.0.1:{port} (inherited)',
            **common,
        },
        {
            "kind": "unix",
            "family": "AF_UNIX",
            "address": str(tmp_path / "ctl.sock"),
            "name": "ctl",
            "fd": 4,
            "v6only": None,
            "str": f'fd 4 "ctl" -> unix:{tmp_path / "ctl.sock"} (inherited)',
            **common,
        },
        {
            "kind": "tcp",
            "family": "AF_INET6",
            "address": ["::1", port6],
            "name": "web6",
            "fd": 5,
            "v6only": True,
            "str": f'fd 5 "web6" -> http://[::1]:{port6} (inherited, IPv6-only)',
            **common,
        },
    ]
    assert out["environ"] == {}  # LISTEN_PID, LISTEN_PIDFDID, LISTEN_FDS, LISTEN_FDNAMES gone


def test_fd_specs_pick_by_name_and_number_without_listen_pid(
    sockets: ExitStack, tmp_path: Path
) -> None:
    fds = [tcp_listener(sockets).fileno() for _ in range(3)]
    own = tmp_path / "own.sock"
    out = run_child(
        fds, "open", "fd:http", f"unix:{own}", "fd://5", names="http:http:admin", pid="none"
    )
    picked = out["listeners"]
    assert isinstance(picked, list)
    assert [(x["fd"], x["name"], x["inherited"]) for x in picked] == [
        (3, "http", True),
        (4, "http", True),
        (None, None, False),
        (5, "admin", True),
    ]  # fmt: skip
    assert out["environ"] == {}


def test_unusable_fds_are_refused_with_one_line_each(sockets: ExitStack) -> None:
    dns = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    log, write_end = os.pipe()
    sockets.callback(os.close, log)
    sockets.callback(os.close, write_end)
    web = sockets.enter_context(socket.socket(socket.AF_INET))  # never listen()ed
    out = run_child(
        [dns.fileno(), log, web.fileno()],
        "each",
        "fd:3",
        "fd:log",
        "fd:5",
        "fd:6",
        "fd:nope",
        names="dns:log:web",
    )
    assert out["each"] == [
        {
            "error": "InheritedFdError",
            "message": 'fd 3 ("dns") is a datagram socket, not a stream socket',
        },
        {"error": "InheritedFdError", "message": 'fd 4 ("log") is a pipe, not a socket'},
        {
            "error": "InheritedFdError",
            "message": 'fd 5 ("web") is a stream socket that is not listening',
        },
        {
            "error": "InheritedFdError",
            "message": "fd:6: fd 6 was not passed to us (LISTEN_FDS=3 passes fds 3-5)",
        },
        {
            "error": "InheritedFdError",
            "message": "fd:nope: no inherited fd is named 'nope' "
            '(the names are "dns", "log", "web")',
        },
    ]
    # Nothing was adopted, so nothing was removed from the environment.
    assert out["environ"] == {
        "LISTEN_FDS": "3",
        "LISTEN_FDNAMES": "dns:log:web",
        "LISTEN_PID": out["environ"]["LISTEN_PID"],  # type: ignore[index]
    }


def test_fd_counted_but_not_passed_is_not_open(sockets: ExitStack) -> None:
    out = run_child([tcp_listener(sockets).fileno()], "inherit", count=2)
    assert out["error"] == "InheritedFdError"
    assert out["message"] == 'fd 4 ("unknown") is not open'


@pytest.mark.parametrize("which", ["LISTEN_PID", "LISTEN_PIDFDID"])
def test_fds_for_another_process_are_not_adopted(sockets: ExitStack, which: str) -> None:
    fd = tcp_listener(sockets).fileno()
    if which == "LISTEN_PID":
        out = run_child([fd], "each", "fd:3", "fd:*", "inherit", pid="parent")
        reason = r"LISTEN_PID=\d+ but this process is \d+"
    else:
        out = run_child([fd], "each", "fd:3", "fd:*", "inherit", pidfdid="wrong")
        reason = r"LISTEN_PIDFDID=\d+ but this process's is \d+ \(the pid was reused\)"
    each = out["each"]
    assert isinstance(each, list)
    assert each.pop() == {"listeners": []}  # inherited_listeners() adopts nothing
    for spec, result in zip(["fd:3", "fd:\\*"], each, strict=True):
        assert result["error"] == "InheritedFdError"
        assert re.fullmatch(f"{spec}: the inherited fds are not ours: {reason}", result["message"])
    environ = out["environ"]
    assert isinstance(environ, dict)
    assert environ["LISTEN_FDS"] == "1"  # left for whoever they are for


def receive_all(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def start(command: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CLEAN_ENV,
    )


def finish(proc: subprocess.Popen[bytes], *, terminate: bool = False) -> int:
    if terminate:
        proc.terminate()
    _, err = proc.communicate(timeout=TIMEOUT)
    if not terminate:
        assert proc.returncode == 0, err.decode()
    return proc.returncode


def is_json(line: str) -> bool:
    return line.startswith("{")


def test_connection_named_connection_is_served_as_one_connection(sockets: ExitStack) -> None:
    server = tcp_listener(sockets)
    client = sockets.enter_context(socket.create_connection(server.getsockname(), TIMEOUT))
    conn, _ = server.accept()
    with conn:
        proc = start(
            activated([conn.fileno()], sys.executable, CHILD, "serve", names="connection"),
            (conn.fileno(),),
        )
    ready = json.loads(Lines(proc.stdout).until(is_json))
    [listener] = ready["listeners"]
    assert (listener["kind"], listener["name"], listener["fd"]) == ("connection", "connection", 3)
    port = server.getsockname()[1]
    assert listener["str"] == (
        f'fd 3 "connection" -> http://127.0.0.1:{port} (inherited, one connection)'
    )
    assert receive_all(client) == b"connection\n"
    finish(proc)


def socket_activate() -> str:
    # Not skipped when missing: CI installs Debian's systemd package, which provides it.
    path = shutil.which("systemd-socket-activate")
    assert path, "systemd-socket-activate is required (Debian package systemd)"
    return path


def test_systemd_socket_activate_hands_over_named_tcp_and_unix_sockets(
    sockets: ExitStack, tmp_path: Path
) -> None:
    # systemd-socket-activate wants a real port, and probing for a free one is racy. So the TCP
    # socket is ours, on port 0, passed *through* it (it forwards fds it was itself given via
    # LISTEN_FDS), and its own socket is a unix path, whose first connection starts the server.
    web = tcp_listener(sockets)
    port = web.getsockname()[1]
    ctl = tmp_path / "ctl.sock"
    proc = start(
        activated(
            [web.fileno()],
            socket_activate(),
            f"--listen={ctl}",
            "--fdname=web:ctl",
            sys.executable,
            CHILD,
            "serve",
        ),
        (web.fileno(),),
    )
    try:
        Lines(proc.stderr).until(lambda line: line == f"Listening on {ctl} as 4.")
        with socket.socket(socket.AF_UNIX) as first:
            first.connect(str(ctl))  # systemd-socket-activate now execs the server
            ready = json.loads(Lines(proc.stdout).until(is_json))
            assert [(x["fd"], x["name"], x["family"], x["str"]) for x in ready["listeners"]] == [
                (3, "web", "AF_INET", f'fd 3 "web" -> http://127.0.0.1:{port} (inherited)'),
                (4, "ctl", "AF_UNIX", f'fd 4 "ctl" -> unix:{ctl} (inherited)'),
            ]
            assert receive_all(first) == b"ctl\n"
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as second:
            assert receive_all(second) == b"web\n"
        finish(proc)
    finally:
        if proc.returncode is None:
            finish(proc, terminate=True)


def test_systemd_socket_activate_accept_mode_passes_one_connection(tmp_path: Path) -> None:
    path = tmp_path / "accept.sock"
    proc = start(
        [
            *(socket_activate(), "--accept", f"--listen={path}", "--fdname=connection"),
            *(sys.executable, CHILD, "serve"),
        ]
    )
    try:
        Lines(proc.stderr).until(lambda line: line == f"Listening on {path} as 3.")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            ready = json.loads(Lines(proc.stdout).until(is_json))
            [listener] = ready["listeners"]
            assert (listener["kind"], listener["name"]) == ("connection", "connection")
            assert (
                listener["str"] == f'fd 3 "connection" -> unix:{path} (inherited, one connection)'
            )
            assert receive_all(client) == b"connection\n"
    finally:
        finish(
            proc, terminate=True
        )  # in accept mode it keeps listening: we started it, we stop it
