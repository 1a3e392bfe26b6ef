"""sd_listen_fds: which inherited fds are ours, what they are, and adopting them.

The protocol (systemd's sd_listen_fds(3)): the service manager passes sockets as fds 3, 4, ...
and sets ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the process they are for),
``LISTEN_FDNAMES`` (their names, ``:``-separated) and, on newer systemd, ``LISTEN_PIDFDID``
(the pidfd inode id of that process, which survives pid reuse).

Reading the environment is a pure function, ``listen_fds(environ, pid)``, so every rule is
tested as a table. The fd work is apart and small: ``inspect_fd`` asks the kernel what an fd
is (family from ``SO_DOMAIN``, never guessed), ``check_fd`` turns that into an error or a kind,
``adopt_fd`` wraps the fd without dup()ing it. Inherited sockets are never re-listen()ed, never
get socket options set, and are never shutdown(): systemd holds the same socket and keeps
serving it after we exit. ``unset_listen_environment`` is the one place trioserve writes to
``os.environ``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ._errors import InheritedFdError
from ._spec import FdSpec

__all__ = [
    "LISTEN_VARIABLES",
    "SD_LISTEN_FDS_START",
    "Activation",
    "FdFacts",
    "InheritedFd",
    "adopt_fd",
    "check_fd",
    "inspect_fd",
    "listen_fds",
    "own_pidfd_id",
    "set_cloexec",
    "unset_listen_environment",
]

SD_LISTEN_FDS_START: Final = 3
LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES")
# fs.nr_open's default: no process can hold more fds, so a larger LISTEN_FDS is garbage.
_MAX_FDS: Final = 1 << 20
_DECIMAL = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class InheritedFd:
    """One inherited fd; ``name`` is None only for ``fd:N`` given without any LISTEN_*."""

    fd: int
    name: str | None

    def __str__(self) -> str:
        return f"fd {self.fd}" if self.name is None else f'fd {self.fd} ("{self.name}")'


@dataclass(frozen=True, slots=True)
class Activation:
    """What the environment says about inherited fds.

    ``status`` is "absent" (no LISTEN_* at all: not socket-activated), "foreign" (LISTEN_PID or
    LISTEN_PIDFDID names another process, so nothing is adopted) or "ours". ``reason`` says why
    nothing is ours, for error messages.
    """

    status: Literal["absent", "foreign", "ours"]
    fds: tuple[InheritedFd, ...] = ()
    reason: str = ""

    def names(self) -> list[str]:
        """Distinct names in fd order (LISTEN_FDNAMES may repeat one)."""
        return list(dict.fromkeys(f.name for f in self.fds if f.name is not None))

    def select(self, spec: FdSpec) -> tuple[InheritedFd, ...]:
        """The fds an ``fd:`` spec names; InheritedFdError if there are none to give."""
        if self.status == "absent":
            if spec.fd is not None:
                # No LISTEN_* at all: fd:N is taken as given (tests, StandardInput=socket).
                return (InheritedFd(spec.fd, None),)
            raise InheritedFdError(f"{spec}: no inherited fds: {self.reason}")
        if self.status == "foreign":
            raise InheritedFdError(f"{spec}: the inherited fds are not ours: {self.reason}")
        if spec.fd is not None:
            for f in self.fds:
                if f.fd == spec.fd:
                    return (f,)
            last = SD_LISTEN_FDS_START + len(self.fds) - 1
            passed = "fd 3" if last == 3 else f"fds 3-{last}"
            raise InheritedFdError(
                f"{spec}: fd {spec.fd} was not passed to us (LISTEN_FDS={len(self.fds)} passes "
                f"{passed})"
            )
        if spec.name is not None:
            chosen = tuple(f for f in self.fds if f.name == spec.name)
            if not chosen:
                names = ", ".join(f'"{n}"' for n in self.names())
                raise InheritedFdError(
                    f"{spec}: no inherited fd is named {spec.name!r} (the names are {names})"
                )
            return chosen
        return self.fds


def listen_fds(environ: Mapping[str, str], pid: int, *, pidfd_id: int | None = None) -> Activation:
    """Read LISTEN_* from ``environ`` for process ``pid``; InheritedFdError if malformed.

    ``pidfd_id`` is our pidfd inode id when known (see ``own_pidfd_id``); LISTEN_PIDFDID is
    only compared when both are there, as systemd does.
    """
    fds_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    names_text = environ.get("LISTEN_FDNAMES")
    if fds_text is None and pid_text is None and names_text is None:
        return Activation("absent", reason="not socket-activated (LISTEN_FDS is not set)")
    # Whose fds these are is decided first: another process's variables are not ours to judge.
    if pid_text is not None:
        listen_pid = _decimal("LISTEN_PID", pid_text)
        if listen_pid != pid:
            return Activation(
                "foreign", reason=f"LISTEN_PID={listen_pid} but this process is {pid}"
            )
        pidfd_text = environ.get("LISTEN_PIDFDID")
        if pidfd_text is not None and pidfd_id is not None:
            expected = _decimal("LISTEN_PIDFDID", pidfd_text)
            if expected != pidfd_id:
                return Activation(
                    "foreign",
                    reason=f"LISTEN_PIDFDID={expected} but this process's is {pidfd_id} "
                    "(the pid was reused)",
                )
    # LISTEN_PID absent but LISTEN_FDS present is accepted: static environments (lithos, some
    # container runtimes) set only LISTEN_FDS because they cannot know the pid in advance.
    if fds_text is None:
        raise InheritedFdError("LISTEN_PID or LISTEN_FDNAMES is set but LISTEN_FDS is not")
    count = _decimal("LISTEN_FDS", fds_text)
    if count <= 0:
        raise InheritedFdError(f"LISTEN_FDS={fds_text} must be a positive number of fds")
    if count > _MAX_FDS:
        raise InheritedFdError(f"LISTEN_FDS={fds_text} is more fds than a process can have")
    if names_text is None:
        names = ["unknown"] * count  # what sd_listen_fds_with_names reports
    else:
        # Empty fields are kept: "a::b" names three fds, the second with the empty name.
        names = names_text.split(":")
        if len(names) != count:
            raise InheritedFdError(
                f"LISTEN_FDNAMES has {len(names)} names ({names_text!r}) but LISTEN_FDS={count}"
            )
    fds = tuple(InheritedFd(SD_LISTEN_FDS_START + i, n) for i, n in enumerate(names))
    return Activation("ours", fds)


def _decimal(variable: str, text: str) -> int:
    # int() would also take " 3", "+3", "3_0" and non-ASCII digits; the protocol says decimal.
    if not _DECIMAL.fullmatch(text):
        raise InheritedFdError(f"{variable}={text!r} is not a decimal number")
    return int(text)


# ---- the part that touches fds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FdFacts:
    """What the kernel says an fd is. ``what`` describes a non-socket ("a pipe", "not open")."""

    what: str = "a socket"
    family: int | None = None
    type: int | None = None
    listening: bool = False
    connected: bool = False

    @property
    def is_socket(self) -> bool:
        return self.family is not None


_FILE_KINDS = (
    (stat.S_ISFIFO, "a pipe"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def inspect_fd(fd: int) -> FdFacts:
    """Ask the kernel what ``fd`` is, changing nothing about it."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        if e.errno == errno.EBADF:
            return FdFacts("not open")
        raise
    if not stat.S_ISSOCK(mode):
        what = next((name for test, name in _FILE_KINDS if test(mode)), "not a socket")
        return FdFacts(what)
    probe = socket.socket(fileno=fd)
    try:
        try:
            probe.getpeername()
            connected = True
        except OSError:
            connected = False
        return FdFacts(
            family=probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN),
            type=probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
            listening=bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
            connected=connected,
        )
    finally:
        probe.detach()  # the fd stays open and unowned: inspecting is not adopting


_TYPE_NAMES: dict[int, str] = {
    socket.SOCK_DGRAM: "a datagram socket",
    socket.SOCK_SEQPACKET: "a seqpacket socket",
    socket.SOCK_RAW: "a raw socket",
}
_SERVED_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def check_fd(inherited: InheritedFd, facts: FdFacts) -> Literal["listener", "connection"]:
    """Whether an fd can be served, and how; InheritedFdError with one line if not."""
    if not facts.is_socket:
        if facts.what == "not open":
            raise InheritedFdError(f"{inherited} is not open")
        raise InheritedFdError(f"{inherited} is {facts.what}, not a socket")
    if facts.type != socket.SOCK_STREAM:
        what = _TYPE_NAMES.get(facts.type or 0, f"a type {facts.type} socket")
        raise InheritedFdError(f"{inherited} is {what}, not a stream socket")
    if facts.family not in _SERVED_FAMILIES:
        raise InheritedFdError(
            f"{inherited} is a socket of family {_family_name(facts.family)}; only TCP and unix "
            "sockets are served"
        )
    if facts.listening:
        return "listener"
    # systemd names the fd "connection" when Accept=yes hands over one accepted connection.
    if inherited.name == "connection":
        if not facts.connected:
            raise InheritedFdError(f"{inherited} is a stream socket that is not connected")
        return "connection"
    raise InheritedFdError(f"{inherited} is a stream socket that is not listening")


def _family_name(family: int | None) -> str:
    try:
        return socket.AddressFamily(family or 0).name
    except ValueError:
        return f"family {family}"


def adopt_fd(fd: int) -> socket.socket:
    """Own ``fd`` as a socket object, keeping its number.

    Not ``socket.fromfd``: that dup()s, and the original fd would stay open with no owner,
    keeping the socket alive after we close ours (and logs would show a number nobody passed).
    Given only a fileno, CPython asks the kernel for the family, type and protocol.
    """
    set_cloexec(fd)
    return socket.socket(fileno=fd)


def set_cloexec(fd: int) -> None:
    """Set FD_CLOEXEC so the app's subprocesses do not inherit (and keep alive) our sockets.

    Only for fds from 3 up: 0-2 are stdio, which children expect to find open.
    """
    if fd >= SD_LISTEN_FDS_START:
        os.set_inheritable(fd, False)


def own_pidfd_id() -> int | None:
    """This process's pidfd inode id (what LISTEN_PIDFDID holds), None where unsupported."""
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return None
    try:
        return os.fstat(pidfd).st_ino
    finally:
        os.close(pidfd)


def unset_listen_environment() -> None:
    """Remove LISTEN_* from os.environ: the one place trioserve writes the environment.

    Called once inherited fds are adopted, so the app's subprocesses do not see variables that
    describe fds they do not have (a child whose pid happens to match would adopt garbage).
    """
    for name in LISTEN_VARIABLES:
        os.environ.pop(name, None)
