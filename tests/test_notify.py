"""sd_notify against a real unix datagram socket, the way systemd listens for it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trioserve._notify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def test_sends_key_value_lines(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path}, pid=1)
    notifier.notify(READY=1, STATUS="serving on http://127.0.0.1:8000")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving on http://127.0.0.1:8000"
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"trioserve-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}, pid=1)
        notifier.notify(STOPPING=1)
        assert sock.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_missing_or_unreachable_socket_never_fails(tmp_path: Path) -> None:
    silent = Notifier.from_environ({}, pid=1)
    assert not silent.enabled
    silent.notify(READY=1)
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody")}, pid=1)
    assert gone.enabled
    gone.notify(READY=1)  # ENOENT is swallowed
    gone.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 2_000_000),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 2_000_000),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_only_for_our_pid(environ: dict[str, str], expected: int | None) -> None:
    assert Notifier.from_environ(environ, pid=42).watchdog_usec == expected


async def test_watchdog_pings_every_half_interval(
    receiver: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, sock = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, pid=1)
    start = trio.current_time()
    with trio.move_on_after(12):  # virtual time: pings at 0, 5 and 10 s
        await notifier.run_watchdog()
    assert trio.current_time() - start == pytest.approx(12)
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 3
    notifier.close()
