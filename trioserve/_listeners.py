"""Listener: a bound or inherited socket with typed metadata; opening and adopting them.

``open_listeners`` turns specs into Listeners the caller owns. It checks every inherited fd
before it opens anything, so a bad fd fails fast; if a later bind fails, what was already
opened is closed, and inherited fds are untouched. The environment is read, never written,
except for the one ``unset_listen_environment`` call after a successful adoption from
``os.environ``.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket as _socket
import stat
from collections.abc import Iterable, Mapping
from typing import Literal, final

import trio

from ._errors import ListenError
from ._spec import FdSpec, ListenSpec, TcpSpec, UnixSpec, parse_listen
from ._systemd import (
    Activation,
    InheritedFd,
    adopt_fd,
    check_fd,
    inspect_fd,
    listen_fds,
    own_pidfd_id,
    unset_listen_environment,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "Listener",
    "default_listen_specs",
    "inherited_listeners",
    "open_listeners",
]

# The backlog is the queue of connections the kernel has completed and we have not accepted.
# Too small, and a burst makes the kernel drop SYNs: the client retries after 1 s, then 3 s, a
# stall that looks like an outage. Too large costs nothing until it is used (it is a limit, not
# an allocation). So ask for the most that fits the 16 bits some kernels store it in; Linux
# silently clamps it to net.core.somaxconn (4096 since 5.4, 128 before), which leaves the
# decision with the administrator's sysctl. trio and Go make the same choice.
DEFAULT_BACKLOG = 0xFFFF

# With port 0 on several addresses, the later sockets reuse the port the kernel gave the first.
# Someone else may hold that port on the other family; then start over with a fresh port.
_SHARED_PORT_ATTEMPTS = 8

Kind = Literal["tcp", "unix", "connection"]


@final
class Listener:
    """A listening (or, for kind "connection", connected) socket and what it is.

    Compose, do not subclass: ``trio_listener()`` gives the ``trio.SocketListener`` view.
    """

    def __init__(
        self,
        *,
        kind: Kind,
        family: _socket.AddressFamily,
        socket: trio.socket.SocketType,
        address: tuple[str, int] | str,
        name: str | None = None,
        fd: int | None = None,
        inherited: bool = False,
        v6only: bool | None = None,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        backlog: int | None = None,
        path_id: tuple[int, int] | None = None,
    ) -> None:
        self.kind = kind
        self.family = family
        self.socket = socket
        self.address = address  # tcp (host, port); unix path, "@name" for abstract
        self.name = name  # LISTEN_FDNAMES entry when inherited
        self.fd = fd  # the inherited fd number
        self.inherited = inherited
        self.v6only = v6only
        self.mode = mode  # what we applied to a unix socket file
        self.owner = owner
        self.group = group
        self.backlog = backlog  # what we passed to listen(); None when inherited
        # (st_dev, st_ino) of the socket file we created: we unlink the path at close only if
        # it still is that file, because a successor may have bound a new socket there.
        self._path_id = path_id
        self._closed = False
        self._trio_listener: trio.SocketListener | None = None
        # Serve TLS on it (the spec's ?tls=1); set by open_listeners, or by a caller.
        self.tls = False

    @property
    def owns_path(self) -> bool:
        """Whether close() unlinks the unix path (only if it is still our inode)."""
        return self._path_id is not None

    def __str__(self) -> str:
        notes = []
        if self.inherited:
            notes.append("inherited")
        if self.kind == "connection":
            notes.append("one connection")
        if self.tls and isinstance(self.address, str):
            notes.append("TLS")  # a TCP address says it with https://
        if self.v6only is not None:
            notes.append("IPv6-only" if self.v6only else "dual-stack")
        if self.mode is not None:
            notes.append(f"mode {self.mode:04o}")
        if self.owner is not None:
            notes.append(f"owner {self.owner}")
        if self.group is not None:
            notes.append(f"group {self.group}")
        line = _url(self.family, self.address, self.tls)
        if notes:
            line += f" ({', '.join(notes)})"
        if self.fd is not None:
            label = f"fd {self.fd}" if self.name is None else f'fd {self.fd} "{self.name}"'
            line = f"{label} -> {line}"
        return line

    def __repr__(self) -> str:
        return f"<Listener {self}{' closed' if self._closed else ''}>"

    def info(self) -> dict[str, object]:
        """What an app sees as scope["extensions"]["trioserve.listener"]."""
        return {
            "kind": self.kind,
            "address": self.address,
            "name": self.name,
            "fd": self.fd,
            "inherited": self.inherited,
            "v6only": self.v6only,
            "tls": self.tls,
        }

    def trio_listener(self) -> trio.SocketListener:
        """A ``trio.SocketListener`` on this socket, for embedding in plain trio code.

        Closing it closes the socket but does not unlink a unix path: call ``close()``.
        """
        if self.kind == "connection":
            raise ListenError(f"{self} is one connection, not a listening socket")
        if self._trio_listener is None:
            self._trio_listener = trio.SocketListener(self.socket)
        return self._trio_listener

    def close(self) -> None:
        """Close the socket and unlink our unix path; safe to call twice.

        Never shutdown(): for an inherited socket that would stop the copy systemd keeps, and
        the next instance would inherit a dead socket.
        """
        if self._closed:
            return
        self._closed = True
        if self._path_id is not None and isinstance(self.address, str):
            # If this fails (the directory is gone, say), the next start's stale check copes.
            with contextlib.suppress(OSError):
                _unlink_if_same(self.address, self._path_id)
        self.socket.close()


def _url(family: int, address: tuple[str, int] | str, tls: bool = False) -> str:
    if isinstance(address, str):
        return f"unix:{address or '(unnamed)'}"
    host, port = address
    scheme = "https" if tls else "http"
    return (
        f"{scheme}://[{host}]:{port}"
        if family == _socket.AF_INET6
        else f"{scheme}://{host}:{port}"
    )


# ---- opening -----------------------------------------------------------------------------------


async def open_listeners(
    specs: Iterable[str | ListenSpec],
    *,
    environ: Mapping[str, str] | None = None,
    pid: int | None = None,
) -> list[Listener]:
    """Open every spec, in order; the caller owns (and closes) the result.

    ``environ`` and ``pid`` default to this process's; pass them to test activation logic.
    Raises SpecError, InheritedFdError or another ListenError, with one readable line.
    """
    parsed = [parse_listen(s) if isinstance(s, str) else s for s in specs]
    activation, checked = _check_inherited(
        [s for s in parsed if isinstance(s, FdSpec)], environ, pid
    )
    groups: list[list[Listener]] = []
    opened: list[Listener] = []
    adopted: set[int] = set()
    try:
        for spec in parsed:
            group: list[Listener] = []
            if isinstance(spec, TcpSpec):
                group = await _bind_tcp_group(spec, await _tcp_targets(spec))
            elif isinstance(spec, UnixSpec):
                group = [await _open_unix(spec)]
            opened += group
            groups.append(group)
        # Adopted last: a failed bind above then leaves the inherited fds as they were.
        for spec, group in zip(parsed, groups, strict=True):
            if isinstance(spec, FdSpec) and activation is not None:
                for inherited in activation.select(spec):
                    if inherited.fd not in adopted:
                        adopted.add(inherited.fd)
                        listener = _adopt(inherited, checked[inherited.fd])
                        opened.append(listener)
                        group.append(listener)
    except BaseException:
        for listener in opened:
            listener.close()
        raise
    for spec, group in zip(parsed, groups, strict=True):
        for listener in group:
            listener.tls = spec.tls
    if adopted and activation is not None and activation.status == "ours" and environ is None:
        unset_listen_environment()
    return [listener for group in groups for listener in group]


def inherited_listeners(
    *, environ: Mapping[str, str] | None = None, pid: int | None = None
) -> list[Listener]:
    """Adopt every fd systemd passed us, in fd order; [] when not socket-activated."""
    activation = _activation(environ, pid)
    if activation.status != "ours":
        return []
    _, checked = _check_inherited([FdSpec()], environ, pid, activation)
    listeners = [_adopt(fd, checked[fd.fd]) for fd in activation.fds]
    if environ is None:
        unset_listen_environment()
    return listeners


def default_listen_specs(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> list[ListenSpec]:
    """What to listen on without --listen: every inherited fd if activated, else loopback:8000."""
    if _activation(environ, pid).status == "ours":
        return [FdSpec()]
    return [TcpSpec("127.0.0.1", 8000)]


def _activation(environ: Mapping[str, str] | None, pid: int | None) -> Activation:
    pidfd_id = None
    if environ is None:
        environ = os.environ
    if pid is None:
        pid = os.getpid()
        if "LISTEN_PIDFDID" in environ:
            pidfd_id = own_pidfd_id()
    return listen_fds(environ, pid, pidfd_id=pidfd_id)


def _check_inherited(
    specs: list[FdSpec],
    environ: Mapping[str, str] | None,
    pid: int | None,
    activation: Activation | None = None,
) -> tuple[Activation | None, dict[int, Literal["listener", "connection"]]]:
    """Check every fd the specs select, before anything is opened or adopted."""
    if not specs:
        return None, {}
    if activation is None:
        activation = _activation(environ, pid)
    checked: dict[int, Literal["listener", "connection"]] = {}
    for spec in specs:
        for inherited in activation.select(spec):
            if inherited.fd not in checked:
                checked[inherited.fd] = check_fd(inherited, inspect_fd(inherited.fd))
    return activation, checked


def _adopt(inherited: InheritedFd, how: Literal["listener", "connection"]) -> Listener:
    sock = adopt_fd(inherited.fd)
    try:
        family = _socket.AddressFamily(sock.family)  # from SO_DOMAIN, via CPython
        address = _address(family, sock.getsockname())
        v6only = None
        if family == _socket.AF_INET6:
            # Read, never set: the socket is systemd's (BindIPv6Only= decides).
            v6only = bool(sock.getsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY))
        # trio sets O_NONBLOCK. That flag lives on the open file description that systemd's
        # copy shares, but it is not a socket option and systemd only polls its copy.
        trio_sock = trio.socket.from_stdlib_socket(sock)
    except BaseException:
        sock.close()
        raise
    kind: Kind = "unix" if family == _socket.AF_UNIX else "tcp"
    return Listener(
        kind="connection" if how == "connection" else kind,
        family=family,
        socket=trio_sock,
        address=address,
        name=inherited.name,
        fd=inherited.fd,
        inherited=True,
        v6only=v6only,
    )


def _address(family: int, raw: object) -> tuple[str, int] | str:
    if family != _socket.AF_UNIX:
        assert isinstance(raw, tuple)
        return (str(raw[0]), int(raw[1]))
    # Linux reports an abstract name as bytes starting with NUL; we write it "@name".
    if isinstance(raw, bytes):
        if raw.startswith(b"\0"):
            return "@" + raw[1:].decode("utf-8", "backslashreplace")
        return os.fsdecode(raw)
    assert isinstance(raw, str)
    return "@" + raw[1:] if raw.startswith("\0") else raw


async def _tcp_targets(spec: TcpSpec) -> list[tuple[_socket.AddressFamily, tuple[object, ...]]]:
    """The socket addresses a spec binds, port left at 0."""
    if spec.host is None:
        if spec.v6only is False:
            return [(_socket.AF_INET6, ("::", 0, 0, 0))]
        return [(_socket.AF_INET, ("0.0.0.0", 0)), (_socket.AF_INET6, ("::", 0, 0, 0))]
    try:
        infos = await trio.socket.getaddrinfo(
            spec.host, 0, type=_socket.SOCK_STREAM, flags=_socket.AI_PASSIVE
        )
    except _socket.gaierror as e:
        raise ListenError(
            f"cannot resolve {spec.host!r} (listen spec '{spec}'): {e.strerror}"
        ) from None
    targets: list[tuple[_socket.AddressFamily, tuple[object, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr) not in targets:  # one entry per address, not per protocol
            targets.append((family, tuple(sockaddr)))
    return targets


async def _bind_tcp_group(
    spec: TcpSpec, targets: list[tuple[_socket.AddressFamily, tuple[object, ...]]]
) -> list[Listener]:
    for attempt in range(1, _SHARED_PORT_ATTEMPTS + 1):
        group: list[Listener] = []
        retry = False
        try:
            for family, sockaddr in targets:
                port = group[0].address[1] if group and spec.port == 0 else spec.port
                assert isinstance(port, int)
                bound = (sockaddr[0], port, *sockaddr[2:])
                try:
                    group.append(await _bind_tcp(family, bound, spec))
                except OSError as e:
                    if e.errno == errno.EAFNOSUPPORT and len(targets) > 1:
                        continue  # no IPv6 (or IPv4) on this host: serve the other family
                    if e.errno == errno.EADDRINUSE and port != spec.port:
                        retry = attempt < _SHARED_PORT_ATTEMPTS
                    if not retry:
                        where = _url(family, (str(sockaddr[0]), port))
                        raise ListenError(
                            f"cannot listen on {where} (listen spec '{spec}'): {e.strerror}"
                        ) from e
                    break
            if not group:
                raise ListenError(f"listen spec '{spec}': no address family it needs is usable")
        except BaseException:
            for listener in group:
                listener.close()
            raise
        if not retry:
            return group
        for listener in group:
            listener.close()
    raise AssertionError("unreachable: the last attempt never retries")


async def _bind_tcp(
    family: _socket.AddressFamily, sockaddr: tuple[object, ...], spec: TcpSpec
) -> Listener:
    sock = trio.socket.socket(family, _socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted server bind while its predecessor's connections sit in
        # TIME_WAIT. On Linux it never lets two sockets listen on one port (that is REUSEPORT).
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        v6only = None
        if family == _socket.AF_INET6:
            # Always set, never inherited from net.ipv6.bindv6only, which differs by distro.
            v6only = spec.v6only is not False
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(v6only))
        await sock.bind(sockaddr)
        if family == _socket.AF_INET6:
            # Read back: binding a specific IPv6 address makes the socket IPv6-only whatever
            # we asked, since it cannot receive IPv4 (v4-mapped addresses excepted).
            v6only = bool(sock.getsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY))
        backlog = spec.backlog or DEFAULT_BACKLOG
        sock.listen(backlog)
        address = _address(family, sock.getsockname())
    except BaseException:
        sock.close()
        raise
    return Listener(
        kind="tcp", family=family, socket=sock, address=address, v6only=v6only, backlog=backlog
    )


async def _open_unix(spec: UnixSpec) -> Listener:
    backlog = spec.backlog or DEFAULT_BACKLOG
    uid, gid = _account_id(spec, spec.owner, "user"), _account_id(spec, spec.group, "group")
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    path_id = None
    try:
        if spec.abstract:
            await sock.bind("\0" + spec.path[1:])
            sock.listen(backlog)
        else:
            _remove_stale(spec.path)
            # Permissions go on between bind() and listen(), not through the umask (a process
            # global other threads rely on) and not through fchmod() (on Linux that changes
            # the socket's own inode, not the file bind() created). The window where the file
            # has the umask's mode grants nothing: connect() checks the file's mode when it is
            # called and is refused until listen(). Not a temporary name renamed into place
            # either: getsockname() and `ss -xl` would show the temporary name forever.
            await sock.bind(spec.path)
            path_id = _lstat_id(spec.path)
            if spec.mode is not None:
                os.chmod(spec.path, spec.mode)
            if uid != -1 or gid != -1:
                os.chown(spec.path, uid, gid, follow_symlinks=False)
            sock.listen(backlog)
    except BaseException as e:
        if path_id is not None:
            _unlink_if_same(spec.path, path_id)
        sock.close()
        if isinstance(e, OSError):
            if e.errno == errno.EADDRINUSE and spec.abstract:
                raise ListenError(f"another server is listening on unix:{spec.path}") from e
            raise ListenError(f"cannot listen on unix:{spec.path}: {e.strerror}") from e
        raise
    return Listener(
        kind="unix",
        family=_socket.AF_UNIX,
        socket=sock,
        address=spec.path,
        mode=spec.mode,
        owner=spec.owner,
        group=spec.group,
        backlog=backlog,
        path_id=path_id,
    )


def _account_id(spec: UnixSpec, name: str | None, what: Literal["user", "group"]) -> int:
    if name is None:
        return -1  # chown's "leave as is"
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid if what == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ListenError(f"cannot listen on unix:{spec.path}: unknown {what} {name!r}") from None


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody answers on; refuse a live socket or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise ListenError(
            f"cannot listen on unix:{path}: it exists and is {what}; not removing it"
        )
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.setblocking(False)  # a live server with a full backlog answers EAGAIN, not a hang
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: its server is gone
    except FileNotFoundError:
        return  # removed meanwhile
    except BlockingIOError:
        raise ListenError(f"another server is listening on unix:{path}") from None
    except OSError as e:
        raise ListenError(
            f"cannot listen on unix:{path}: cannot tell whether the socket there is in use "
            f"({e.strerror})"
        ) from None
    else:
        raise ListenError(f"another server is listening on unix:{path}")
    finally:
        probe.close()
    _unlink_if_same(path, (st.st_dev, st.st_ino))


def _lstat_id(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def _unlink_if_same(path: str, path_id: tuple[int, int]) -> None:
    # lstat-then-unlink is not atomic, but the gap is microseconds and the alternative (never
    # cleaning up) leaves a stale file for every restart.
    try:
        if _lstat_id(path) == path_id:
            os.unlink(path)
    except FileNotFoundError:
        pass
