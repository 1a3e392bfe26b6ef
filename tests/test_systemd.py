"""sd_listen_fds as pure functions of (environ, pid): tables of environments and fd facts."""

from __future__ import annotations

import socket

import pytest

from trioserve import FdSpec, InheritedFdError, TcpSpec
from trioserve._listeners import default_listen_specs
from trioserve._systemd import Activation, FdFacts, InheritedFd, check_fd, listen_fds

PID = 4242


def ours(*names: str) -> Activation:
    return Activation("ours", tuple(InheritedFd(3 + i, n) for i, n in enumerate(names)))


ENVIRONMENTS: list[tuple[dict[str, str], Activation]] = [
    ({}, Activation("absent", reason="not socket-activated (LISTEN_FDS is not set)")),
    ({"PATH": "/bin", "LISTEN_PIDFDID": "7"}, listen_fds({}, PID)),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, ours("unknown")),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "3"}, ours("unknown", "unknown", "unknown")),
    (
        {"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http:https:control"},
        ours("http", "https", "control"),
    ),
    # Empty fields are names too (systemd writes them for sockets without FileDescriptorName=
    # next to named ones in some versions); repeated names are allowed.
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a::a"}, ours("a", "", "a")),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, ours("")),
    # No LISTEN_PID: static environments (lithos) set only LISTEN_FDS.
    ({"LISTEN_FDS": "2"}, ours("unknown", "unknown")),
    ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, ours("web")),
    # Another process's variables: not ours, whatever else they say.
    (
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},
        Activation("foreign", reason="LISTEN_PID=1 but this process is 4242"),
    ),
    (
        {"LISTEN_PID": "99", "LISTEN_FDS": "garbage", "LISTEN_FDNAMES": "a:b:c"},
        Activation("foreign", reason="LISTEN_PID=99 but this process is 4242"),
    ),
    # LISTEN_PIDFDID is ignored when our pidfd id is unknown (pidfd_id=None here).
    ({"LISTEN_PID": "4242", "LISTEN_PIDFDID": "123", "LISTEN_FDS": "1"}, ours("unknown")),
]


@pytest.mark.parametrize(("environ", "expected"), ENVIRONMENTS)
def test_listen_fds_reads_the_environment(environ: dict[str, str], expected: Activation) -> None:
    assert listen_fds(environ, PID) == expected


def test_listen_pidfdid_is_compared_when_our_id_is_known() -> None:
    environ = {"LISTEN_PID": "4242", "LISTEN_PIDFDID": "123", "LISTEN_FDS": "1"}
    assert listen_fds(environ, PID, pidfd_id=123) == ours("unknown")
    other = listen_fds(environ, PID, pidfd_id=124)
    assert other.status == "foreign"
    assert other.reason == "LISTEN_PIDFDID=123 but this process's is 124 (the pid was reused)"


BAD_ENVIRONMENTS: list[tuple[dict[str, str], str]] = [
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "LISTEN_FDS=0 must be a positive number of fds"),
    ({"LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a decimal number"),
    ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a decimal number"),
    ({"LISTEN_FDS": " 2"}, "LISTEN_FDS=' 2' is not a decimal number"),
    ({"LISTEN_FDS": "+2"}, "LISTEN_FDS='+2' is not a decimal number"),
    ({"LISTEN_FDS": ""}, "LISTEN_FDS='' is not a decimal number"),
    ({"LISTEN_FDS": "\u0663"}, "LISTEN_FDS='\u0663' is not a decimal number"),
    ({"LISTEN_FDS": "99999999"}, "LISTEN_FDS=99999999 is more fds than a process can have"),
    ({"LISTEN_PID": "x42", "LISTEN_FDS": "1"}, "LISTEN_PID='x42' is not a decimal number"),
    ({"LISTEN_PID": "4242"}, "LISTEN_PID or LISTEN_FDNAMES is set but LISTEN_FDS is not"),
    ({"LISTEN_FDNAMES": "http"}, "LISTEN_PID or LISTEN_FDNAMES is set but LISTEN_FDS is not"),
    (
        {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"},
        "LISTEN_FDNAMES has 1 names ('http') but LISTEN_FDS=2",
    ),
    (
        {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"},
        "LISTEN_FDNAMES has 2 names ('a:b') but LISTEN_FDS=1",
    ),
    (
        {"LISTEN_PID": "4242", "LISTEN_PIDFDID": "x", "LISTEN_FDS": "1"},
        "LISTEN_PIDFDID='x' is not a decimal number",
    ),
]


@pytest.mark.parametrize(("environ", "message"), BAD_ENVIRONMENTS)
def test_malformed_environment_is_one_line_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InheritedFdError) as caught:
        listen_fds(environ, PID, pidfd_id=1)
    assert str(caught.value) == message


SELECTIONS: list[tuple[Activation, FdSpec, tuple[InheritedFd, ...]]] = [
    (ours("http", "https", "http"), FdSpec(), ours("http", "https", "http").fds),
    (
        ours("http", "https", "http"),
        FdSpec(name="http"),
        (InheritedFd(3, "http"), InheritedFd(5, "http")),
    ),
    (ours("http", "https"), FdSpec(fd=4), (InheritedFd(4, "https"),)),
    (ours("a", "", "c"), FdSpec(name=""), (InheritedFd(4, ""),)),
    # No LISTEN_* at all: fd:N is taken as given, without a name.
    (listen_fds({}, PID), FdSpec(fd=0), (InheritedFd(0, None),)),
    (listen_fds({}, PID), FdSpec(fd=7), (InheritedFd(7, None),)),
]


@pytest.mark.parametrize(("activation", "spec", "expected"), SELECTIONS)
def test_select_picks_fds_by_number_name_or_all(
    activation: Activation, spec: FdSpec, expected: tuple[InheritedFd, ...]
) -> None:
    assert activation.select(spec) == expected


BAD_SELECTIONS: list[tuple[Activation, FdSpec, str]] = [
    (ours("http"), FdSpec(fd=4), "fd:4: fd 4 was not passed to us (LISTEN_FDS=1 passes fd 3)"),
    (
        ours("a", "b"),
        FdSpec(fd=2),
        "fd:2: fd 2 was not passed to us (LISTEN_FDS=2 passes fds 3-4)",
    ),
    (
        ours("a", "b"),
        FdSpec(fd=0),
        "fd:0: fd 0 was not passed to us (LISTEN_FDS=2 passes fds 3-4)",
    ),
    (
        ours("http", "control", "http"),
        FdSpec(name="https"),
        """fd:https: no inherited fd is named 'https' (the names are "http", "control")""",
    ),
    (
        listen_fds({}, PID),
        FdSpec(name="http"),
        "fd:http: no inherited fds: not socket-activated (LISTEN_FDS is not set)",
    ),
    (
        listen_fds({}, PID),
        FdSpec(),
        "fd:*: no inherited fds: not socket-activated (LISTEN_FDS is not set)",
    ),
    (
        listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, PID),
        FdSpec(fd=3),
        "fd:3: the inherited fds are not ours: LISTEN_PID=1 but this process is 4242",
    ),
    (
        listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, PID),
        FdSpec(),
        "fd:*: the inherited fds are not ours: LISTEN_PID=1 but this process is 4242",
    ),
]


@pytest.mark.parametrize(("activation", "spec", "message"), BAD_SELECTIONS)
def test_select_errors_say_what_there_is(
    activation: Activation, spec: FdSpec, message: str
) -> None:
    with pytest.raises(InheritedFdError) as caught:
        activation.select(spec)
    assert str(caught.value) == message


LISTENING_TCP = FdFacts(family=socket.AF_INET6, type=socket.SOCK_STREAM, listening=True)
CONNECTED_TCP = FdFacts(family=socket.AF_INET, type=socket.SOCK_STREAM, connected=True)

CHECKS: list[tuple[InheritedFd, FdFacts, str]] = [
    (InheritedFd(3, "http"), LISTENING_TCP, "listener"),
    (
        InheritedFd(3, "s"),
        FdFacts(family=socket.AF_UNIX, type=socket.SOCK_STREAM, listening=True),
        "listener",
    ),
    (InheritedFd(3, "connection"), CONNECTED_TCP, "connection"),
    # A listening socket is served as one even when systemd calls it "connection".
    (InheritedFd(3, "connection"), LISTENING_TCP, "listener"),
]


@pytest.mark.parametrize(("fd", "facts", "kind"), CHECKS)
def test_check_fd_accepts_listening_and_accepted_stream_sockets(
    fd: InheritedFd, facts: FdFacts, kind: str
) -> None:
    assert check_fd(fd, facts) == kind


BAD_CHECKS: list[tuple[InheritedFd, FdFacts, str]] = [
    (
        InheritedFd(4, "dns"),
        FdFacts(family=socket.AF_INET, type=socket.SOCK_DGRAM),
        'fd 4 ("dns") is a datagram socket, not a stream socket',
    ),
    (
        InheritedFd(4, "x"),
        FdFacts(family=socket.AF_UNIX, type=socket.SOCK_SEQPACKET, listening=True),
        'fd 4 ("x") is a seqpacket socket, not a stream socket',
    ),
    (InheritedFd(5, "log"), FdFacts("a pipe"), 'fd 5 ("log") is a pipe, not a socket'),
    (InheritedFd(5, None), FdFacts("a regular file"), "fd 5 is a regular file, not a socket"),
    (InheritedFd(6, "gone"), FdFacts("not open"), 'fd 6 ("gone") is not open'),
    (
        InheritedFd(3, "http"),
        CONNECTED_TCP,
        'fd 3 ("http") is a stream socket that is not listening',
    ),
    (
        InheritedFd(3, "connection"),
        FdFacts(family=socket.AF_INET, type=socket.SOCK_STREAM),
        'fd 3 ("connection") is a stream socket that is not connected',
    ),
    (
        InheritedFd(3, "nl"),
        FdFacts(family=socket.AF_NETLINK, type=socket.SOCK_STREAM, listening=True),
        'fd 3 ("nl") is a socket of family AF_NETLINK; only TCP and unix sockets are served',
    ),
]


@pytest.mark.parametrize(("fd", "facts", "message"), BAD_CHECKS)
def test_check_fd_refuses_with_one_line_naming_fd_and_what_it_is(
    fd: InheritedFd, facts: FdFacts, message: str
) -> None:
    with pytest.raises(InheritedFdError) as caught:
        check_fd(fd, facts)
    assert str(caught.value) == message


DEFAULTS: list[tuple[dict[str, str], list[object]]] = [
    ({}, [TcpSpec("127.0.0.1", 8000)]),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, [FdSpec()]),
    ({"LISTEN_FDS": "1"}, [FdSpec()]),
    ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, [TcpSpec("127.0.0.1", 8000)]),
]


@pytest.mark.parametrize(("environ", "expected"), DEFAULTS)
def test_default_specs_adopt_everything_when_activated_else_loopback(
    environ: dict[str, str], expected: list[object]
) -> None:
    assert default_listen_specs(environ, PID) == expected


def test_default_specs_report_a_malformed_environment() -> None:
    with pytest.raises(InheritedFdError, match="LISTEN_FDS=0"):
        default_listen_specs({"LISTEN_FDS": "0"}, PID)
