"""The real `trioserve` command in subprocesses: errors, signals, and mixed listeners."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clitools import Lines, http_get, run_to_exit, start_server, trioserve_command

# tests/sd_child.py plays systemd: fds moved to 3.., LISTEN_* set with its own pid, then exec.
ACTIVATE = [sys.executable, str(Path(__file__).with_name("sd_child.py")), "activate"]

# An app that tells the test (on stdout) when a request is inside it, then echoes the body: a
# test can hold a request in flight, with no sleeping, by withholding the body.
HOLDING_APP = """
import sys

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("entered", scope["path"], flush=True)
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("trioserve: error: ")
    return lines[0]


@pytest.fixture
def holding_app(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "holding_app.py").write_text(HOLDING_APP)
    yield tmp_path


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("127.0.0.1:99999", "99999"),
        ("unix:", "unix:"),
        ("127.0.0.1:80?nonsense=1", "nonsense"),
        ("fd:http", "http"),
    ],
)
def test_bad_listen_spec_is_one_line_and_exit_2(spec: str, fragment: str) -> None:
    result = run_to_exit(["trioserve.demo:app", "--listen", spec])
    assert result.returncode == 2
    assert fragment in one_error_line(result.stderr)


def test_bad_app_path_is_one_line_and_exit_2() -> None:
    result = run_to_exit(["no_such_module_here:app", "--listen", "127.0.0.1:0"])
    assert result.returncode == 2
    assert "no_such_module_here" in one_error_line(result.stderr)


def test_inherited_pipe_is_one_line_and_exit_2() -> None:
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run(
            [
                *ACTIVATE,
                "--names",
                "http",
                "--fds",
                str(read_end),
                "--",
                *trioserve_command("trioserve.demo:app", "--listen", "fd:http"),
            ],
            pass_fds=[read_end],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")},
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 2
    assert "fd 3" in one_error_line(result.stderr)


def test_sigterm_drains_in_flight_request_and_exits_0(holding_app: Path) -> None:
    server = start_server(
        ["holding_app:app", "--app-dir", str(holding_app), "--listen", "127.0.0.1:0"],
        holding_app,
        stdout=subprocess.PIPE,
    )
    port = server.tcp_ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        assert server.read_stdout_line() == "entered /slow"
        server.signal(signal.SIGTERM)
        server.wait_message("STOPPING=1")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        client.sendall(b"cd")  # the rest of the body: the request completes during the drain
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in response.lower()
    assert response.endswith(b"\r\n\r\nabcd")
    code, err = server.finish()
    assert code == 0, err


def test_second_signal_stops_at_once(holding_app: Path) -> None:
    server = start_server(
        [
            "holding_app:app",
            "--app-dir",
            str(holding_app),
            "--listen",
            "127.0.0.1:0",
            "--graceful-timeout",
            "600",
        ],
        holding_app,
        stdout=subprocess.PIPE,
    )
    with socket.create_connection(("127.0.0.1", server.tcp_ports[0]), timeout=10) as client:
        client.sendall(b"POST /stuck HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n")
        assert server.read_stdout_line() == "entered /stuck"
        server.signal(signal.SIGINT)
        server.wait_message("STOPPING=1")
        server.signal(signal.SIGINT)
        code, err = server.finish(timeout=10)  # far below the 600 s graceful timeout
    assert code == 1, err
    assert "stopping now" in err


def test_demo_on_tcp_v6only_unix_and_inherited_fd_at_once(tmp_path: Path) -> None:
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    inherited_port = inherited.getsockname()[1]
    path = str(tmp_path / "demo.sock")
    args = [
        "trioserve.demo:app",
        "--listen", "127.0.0.1:0",
        "--listen", "[::1]:0",
        "--listen", f"unix:{path}",
        "--listen", "fd:web",
    ]  # fmt: skip
    server = start_server(
        args,
        tmp_path,
        wrapper=[*ACTIVATE, "--names", "web", "--fds", str(inherited.fileno()), "--"],
        pass_fds=[inherited.fileno()],
    )
    inherited.close()  # the child holds the only copy now
    tcp_port, v6_port = server.tcp_ports[:2]
    answers = {
        "tcp": http_get(tcp_port, headers="Accept: application/json\r\n"),
        "v6": http_get(v6_port, host="::1", headers="Accept: application/json\r\n"),
        "unix": http_get(unix=path, headers="Accept: application/json\r\n"),
        "fd": http_get(inherited_port, headers="Accept: application/json\r\n"),
    }
    listeners = {}
    for key, raw in answers.items():
        assert raw.startswith(b"HTTP/1.1 200 "), raw
        listeners[key] = json.loads(raw.partition(b"\r\n\r\n")[2])["listener"]
    assert listeners["tcp"]["kind"] == "tcp"
    assert listeners["v6"]["kind"] == "tcp"
    assert listeners["unix"]["kind"] == "unix"
    assert listeners["fd"]["name"] == "web"
    assert listeners["fd"]["fd"] == 3
    server.signal(signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err
    assert not Path(path).exists()
    for line in ("listening on http://127.0.0.1:", "listening on unix:", 'fd 3 "web"'):
        assert line in err


def test_systemd_socket_activate_with_fdnames(tmp_path: Path) -> None:
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate is required (Debian package systemd)"
    web, admin = str(tmp_path / "web.sock"), str(tmp_path / "admin.sock")
    server = start_server(
        ["trioserve.demo:app"],  # no --listen: adopt every socket-activated fd
        tmp_path,
        wrapper=[activate, "-l", web, "-l", admin, "--fdname=web:admin", "-E", "NOTIFY_SOCKET"],
        wait_ready=False,  # it execs trioserve only on the first connection
    )
    # Its "Listening on PATH as N." lines say the sockets exist; then a connection starts us.
    Lines(server.process.stderr).until(lambda line: line == f"Listening on {admin} as 4.")
    first = http_get(unix=web, headers="Accept: application/json\r\n", timeout=20)
    server.wait_message("READY=1")
    second = http_get(unix=admin, headers="Accept: application/json\r\n")
    names = [
        json.loads(raw.partition(b"\r\n\r\n")[2])["listener"]["name"] for raw in (first, second)
    ]
    assert names == ["web", "admin"]
    server.signal(signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err


def test_options_from_trioserve_environment_variables(tmp_path: Path) -> None:
    path = str(tmp_path / "env.sock")
    server = start_server(
        [],
        tmp_path,
        env={
            "TRIOSERVE_APP": "trioserve.demo:app",
            "TRIOSERVE_LISTEN": f"127.0.0.1:0 unix:{path}",
            "TRIOSERVE_SERVER_HEADER": "false",
        },
    )
    assert len(server.tcp_ports) == 1
    response = http_get(unix=path)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nserver:" not in response.lower()
    server.signal(signal.SIGTERM)
    code, err = server.finish()
    assert code == 0, err


def test_version() -> None:
    import trioserve

    result = run_to_exit(["--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"trioserve, version {trioserve.__version__}"


def test_websocket_ping_interval_0_turns_pings_off() -> None:
    from trioserve._cli import _config_from, cli

    def interval(*args: str) -> float | None:
        with cli.make_context("trioserve", ["trioserve.demo:app", *args]) as ctx:
            return _config_from(ctx.params).websocket_ping_interval

    assert interval() == 20.0
    assert interval("--websocket-ping-interval", "0") is None
    assert interval("--websocket-ping-interval", "2.5") == 2.5


def test_a_negative_ping_interval_is_one_line_and_exit_2() -> None:
    result = run_to_exit(
        ["trioserve.demo:app", "--listen", "127.0.0.1:0", "--websocket-ping-interval", "-1"]
    )
    assert result.returncode == 2
    assert "websocket_ping_interval" in one_error_line(result.stderr)
