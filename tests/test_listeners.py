"""Listeners against real sockets: loopback TCP on port 0, unix sockets in tmp_path."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import uuid
from pathlib import Path

import pytest
import trio

from trioserve import (
    InheritedFdError,
    Listener,
    ListenError,
    SpecError,
    TcpSpec,
    UnixSpec,
    open_listeners,
)
from trioserve._listeners import DEFAULT_BACKLOG, _bind_tcp_group, _tcp_targets

TIMEOUT = 5


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def port_of(listener: Listener) -> int:
    assert isinstance(listener.address, tuple)
    return listener.address[1]


async def round_trip(listener: Listener, stream: trio.abc.Stream) -> None:
    """Send through a client stream and read it back from the accepted side."""
    server = await listener.trio_listener().accept()
    async with server, stream:
        await stream.send_all(b"ping")
        assert await server.receive_some(4) == b"ping"


async def test_tcp_listener_on_loopback_accepts_and_describes_itself() -> None:
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners(["127.0.0.1:0"])
        port = port_of(listener)
        assert port > 0
        assert (listener.kind, listener.family) == ("tcp", socket.AF_INET)
        assert (listener.inherited, listener.name, listener.fd) == (False, None, None)
        assert (listener.v6only, listener.owns_path, listener.backlog) == (
            None,
            False,
            DEFAULT_BACKLOG,
        )
        assert str(listener) == f"http://127.0.0.1:{port}"
        assert listener.info() == {
            "kind": "tcp",
            "address": ("127.0.0.1", port),
            "name": None,
            "fd": None,
            "inherited": False,
            "v6only": None,
            "tls": False,
        }
        sock = listener.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        await round_trip(listener, await trio.open_tcp_stream("127.0.0.1", port))
        listener.close()
        listener.close()  # idempotent
        assert sock.fileno() == -1


async def test_ipv6_sockets_are_v6only_unless_asked_for_dual_stack() -> None:
    with trio.fail_after(TIMEOUT):
        only, specific, dual = await open_listeners(
            ["[::1]:0", "[::1]:0?v6only=0", "[::ffff:127.0.0.1]:0?v6only=0"]
        )
        try:
            assert only.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert dual.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            # The kernel makes a socket bound to one IPv6 address IPv6-only whatever we asked;
            # the Listener reports what the kernel says.
            assert (only.v6only, specific.v6only, dual.v6only) == (True, True, False)
            assert str(only) == f"http://[::1]:{port_of(only)} (IPv6-only)"
            assert str(dual) == f"http://[::ffff:127.0.0.1]:{port_of(dual)} (dual-stack)"
            await round_trip(only, await trio.open_tcp_stream("::1", port_of(only)))
            # A dual-stack socket takes IPv4 connections.
            await round_trip(dual, await trio.open_tcp_stream("127.0.0.1", port_of(dual)))
        finally:
            for listener in (only, specific, dual):
                listener.close()


async def test_ipv4_and_ipv6_share_one_kernel_chosen_port() -> None:
    # What :0 and a name with several addresses do, on loopback addresses only.
    targets = [(socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0, 0, 0))]
    with trio.fail_after(TIMEOUT):
        v4, v6 = await _bind_tcp_group(TcpSpec(None, 0), targets)  # type: ignore[arg-type]
        try:
            assert port_of(v4) == port_of(v6) > 0
            assert (v4.family, v6.family, v6.v6only) == (socket.AF_INET, socket.AF_INET6, True)
            await round_trip(v4, await trio.open_tcp_stream("127.0.0.1", port_of(v4)))
            await round_trip(v6, await trio.open_tcp_stream("::1", port_of(v6)))
        finally:
            v4.close()
            v6.close()


async def test_every_interface_means_ipv4_plus_ipv6_only_or_one_dual_stack_socket() -> None:
    # Only the plan is checked: binding wildcard addresses in tests would expose the port.
    assert await _tcp_targets(TcpSpec(None, 80)) == [
        (socket.AF_INET, ("0.0.0.0", 0)),
        (socket.AF_INET6, ("::", 0, 0, 0)),
    ]
    assert await _tcp_targets(TcpSpec(None, 80, v6only=False)) == [
        (socket.AF_INET6, ("::", 0, 0, 0))
    ]


async def test_host_name_listens_on_every_address_with_one_port() -> None:
    with trio.fail_after(TIMEOUT):
        expected = {
            info[4][0]
            for info in await trio.socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
        }
        listeners = await open_listeners(["localhost:0?backlog=7"])
        try:
            assert {listener.address[0] for listener in listeners} == expected
            assert len({port_of(listener) for listener in listeners}) == 1
            assert {listener.backlog for listener in listeners} == {7}
        finally:
            for listener in listeners:
                listener.close()


async def test_port_in_use_is_a_listen_error_naming_the_address() -> None:
    with trio.fail_after(TIMEOUT):
        [held] = await open_listeners(["127.0.0.1:0"])
        port = port_of(held)
        try:
            with pytest.raises(ListenError) as caught:
                await open_listeners([f"127.0.0.1:{port}"])
            assert str(caught.value) == (
                f"cannot listen on http://127.0.0.1:{port} (listen spec '127.0.0.1:{port}'): "
                "Address already in use"
            )
        finally:
            held.close()


async def test_specs_and_strings_mix_and_keep_their_order(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with trio.fail_after(TIMEOUT):
        listeners = await open_listeners([UnixSpec(path), "127.0.0.1:0", TcpSpec("::1", 0)])
        try:
            assert [(x.kind, x.family) for x in listeners] == [
                ("unix", socket.AF_UNIX),
                ("tcp", socket.AF_INET),
                ("tcp", socket.AF_INET6),
            ]
        finally:
            for listener in listeners:
                listener.close()


async def test_bad_spec_string_raises_spec_error() -> None:
    with pytest.raises(SpecError, match="port 70000 is out of range"):
        await open_listeners(["127.0.0.1:70000"])


# ---- unix sockets ----------------------------------------------------------------------------


async def test_unix_socket_gets_mode_owner_group_and_is_removed_at_close(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners([f"unix:{path}?mode=0640&owner={user}&group={group}"])
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        assert (listener.kind, listener.address, listener.owns_path) == ("unix", str(path), True)
        assert str(listener) == f"unix:{path} (mode 0640, owner {user}, group {group})"
        await round_trip(listener, await trio.open_unix_socket(str(path)))
        listener.close()
        assert not path.exists()


async def test_unix_mode_does_not_depend_on_or_change_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with trio.fail_after(TIMEOUT):
            [listener] = await open_listeners([f"unix:{tmp_path / 'a.sock'}?mode=0666"])
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(tmp_path / "a.sock").st_mode) == 0o666
    finally:
        listener.close()


async def test_unknown_owner_is_a_listen_error_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    before = open_fds()
    with pytest.raises(ListenError) as caught:
        await open_listeners([f"unix:{path}?owner=no-such-user-trioserve"])
    assert str(caught.value) == (
        f"cannot listen on unix:{path}: unknown user 'no-such-user-trioserve'"
    )
    with pytest.raises(ListenError, match="unknown group 'no-such-group-trioserve'"):
        await open_listeners([f"unix:{path}?group=no-such-group-trioserve"])
    assert not path.exists()
    assert open_fds() == before


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays: a server that died without cleaning up
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners([f"unix:{path}"])
        try:
            await round_trip(listener, await trio.open_unix_socket(str(path)))
        finally:
            listener.close()


async def test_live_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        before = os.lstat(path).st_ino
        with pytest.raises(ListenError) as caught:
            await open_listeners([f"unix:{path}"])
        assert str(caught.value) == f"another server is listening on unix:{path}"
        assert os.lstat(path).st_ino == before


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
async def test_path_that_is_not_a_socket_is_never_removed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "file":
        path.write_text("precious")
    elif kind == "symlink":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.mkdir()
    with pytest.raises(ListenError) as caught:
        await open_listeners([f"unix:{path}"])
    what = "a symbolic link" if kind == "symlink" else "not a socket"
    assert str(caught.value) == (
        f"cannot listen on unix:{path}: it exists and is {what}; not removing it"
    )
    assert path.is_symlink() if kind == "symlink" else path.exists()
    if kind == "file":
        assert path.read_text() == "precious"


async def test_close_leaves_a_path_that_a_successor_recreated(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    with trio.fail_after(TIMEOUT):
        [old] = await open_listeners([f"unix:{path}"])
        # A successor removes our file as stale-or-not and binds its own before we exit.
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as successor:
            successor.bind(str(path))
            successor.listen()
            old.close()
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))  # still the successor's, still served


async def test_abstract_socket_has_no_file(tmp_path: Path) -> None:
    name = f"trioserve-test-{uuid.uuid4().hex}"
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners([f"unix:@{name}"])
        assert (listener.address, listener.owns_path) == (f"@{name}", False)
        assert str(listener) == f"unix:@{name}"
        await round_trip(listener, await trio.open_unix_socket("\0" + name))
        with pytest.raises(ListenError, match=f"another server is listening on unix:@{name}"):
            await open_listeners([f"unix:@{name}"])
        listener.close()


async def test_failed_open_closes_what_was_already_opened(tmp_path: Path) -> None:
    first = tmp_path / "first.sock"
    before = open_fds()
    with pytest.raises(ListenError, match="No such file or directory"):
        await open_listeners(
            ["127.0.0.1:0", f"unix:{first}", "[::1]:0", f"unix:{tmp_path / 'no' / 'x.sock'}"]
        )
    assert not first.exists()
    assert open_fds() == before


# ---- fd:N without any LISTEN_* (a socket handed over by a test harness) -----------------------


def listening_tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::ffff:127.0.0.1", 0))
    sock.listen()
    return sock


async def test_fd_n_is_adopted_as_is_and_close_never_shuts_it_down() -> None:
    with trio.fail_after(TIMEOUT), listening_tcp_socket() as original:
        port = original.getsockname()[1]
        fd = os.dup(original.fileno())
        os.set_inheritable(fd, True)
        [listener] = await open_listeners([f"fd:{fd}"], environ={})
        assert (listener.kind, listener.fd, listener.name, listener.inherited) == (
            "tcp",
            fd,
            None,
            True,
        )
        assert listener.family == socket.AF_INET6  # asked of the socket, not assumed
        assert (listener.v6only, listener.backlog, listener.owns_path) == (False, None, False)
        assert str(listener) == (
            f"fd {fd} -> http://[::ffff:127.0.0.1]:{port} (inherited, dual-stack)"
        )
        assert not os.get_inheritable(fd)  # FD_CLOEXEC
        assert listener.info()["inherited"] is True
        listener.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        # Closing our fd did not shutdown() the socket: the other copy still accepts.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            conn, _ = original.accept()
            conn.close()


async def test_same_fd_selected_twice_is_adopted_once() -> None:
    with trio.fail_after(TIMEOUT), listening_tcp_socket() as original:
        fd = os.dup(original.fileno())
        listeners = await open_listeners([f"fd:{fd}", f"fd://{fd}"], environ={})
        assert len(listeners) == 1
        listeners[0].close()


def bad_fds() -> list[tuple[str, str]]:
    return [
        ("pipe", "is a pipe, not a socket"),
        ("datagram", "is a datagram socket, not a stream socket"),
        ("unbound stream", "is a stream socket that is not listening"),
        ("closed", "is not open"),
    ]


@pytest.mark.parametrize(("what", "problem"), bad_fds())
async def test_unusable_fd_fails_before_anything_is_opened(what: str, problem: str) -> None:
    keep: list[socket.socket] = []
    if what == "pipe":
        fd, write_end = os.pipe()
        os.close(write_end)
    elif what == "closed":
        fd, write_end = os.pipe()
        os.close(fd)
        os.close(write_end)
    else:
        kind = socket.SOCK_DGRAM if what == "datagram" else socket.SOCK_STREAM
        keep.append(socket.socket(socket.AF_INET, kind))
        fd = keep[0].fileno()
    try:
        before = open_fds()
        with pytest.raises(InheritedFdError) as caught:
            await open_listeners(["127.0.0.1:0", f"fd:{fd}"], environ={})
        assert str(caught.value) == f"fd {fd} {problem}"
        assert open_fds() == before  # the TCP listener was never opened
        if what != "closed":
            os.fstat(fd)  # and the refused fd was left open, as it was
    finally:
        if what == "pipe":
            os.close(fd)
        for sock in keep:
            sock.close()


async def test_trio_listener_wraps_the_same_socket() -> None:
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners(["127.0.0.1:0"])
        wrapped = listener.trio_listener()
        assert wrapped is listener.trio_listener()
        assert wrapped.socket is listener.socket
        listener.close()


async def test_a_connection_has_no_trio_listener() -> None:
    ours, peer = trio.socket.socketpair()
    with peer:
        connection = Listener(
            kind="connection", family=socket.AF_UNIX, socket=ours, address="", fd=3, name="c"
        )
        assert str(connection) == 'fd 3 "c" -> unix:(unnamed) (one connection)'
        with pytest.raises(ListenError, match="is one connection, not a listening socket"):
            connection.trio_listener()
        connection.close()
        assert repr(connection) == '<Listener fd 3 "c" -> unix:(unnamed) (one connection) closed>'
