"""Exec a command socket-activated, as systemd would: fds at 3, 4, ... and LISTEN_* for its pid.

Run as a script by the supervisor (never imported, stdlib only, so it starts in milliseconds):

    python -S _activate.py SRC_FD,SRC_FD,... NAME:NAME:... PARENT_PID -- COMMAND ARGS...

sd_listen_fds wants LISTEN_PID to be the server's own pid, which is only known after fork.
subprocess's preexec_fn could set it, but running Python between fork and exec in a process
with threads (trio's thread cache) risks deadlock; exec keeps the pid, so this hop is safe.
"""

import ctypes
import fcntl
import os
import signal
import sys

# Sources are parked above every target before being moved, so that moving one onto 3, 4, ...
# can never overwrite another that has not moved yet.
_PARK = 1000
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _drain_when_orphaned(parent: int) -> None:
    """Ask the kernel for SIGTERM (a drain) if the supervisor dies; it survives the exec.

    Without it a supervisor killed hard (SIGKILL, the OOM killer) leaves its workers serving
    with nobody to restart or stop them. If the parent is already gone, do not start at all.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not Linux, or refused: run without it rather than not at all
    if os.getppid() != parent:
        raise SystemExit("the supervisor exited before its worker started")


def main(argv: list[str]) -> None:
    fds_arg, names, parent, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: _activate.py FD,FD,... NAME:NAME:... PARENT -- COMMAND...")
    _drain_when_orphaned(int(parent))
    sources = [int(fd) for fd in fds_arg.split(",") if fd]
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _PARK) for fd in sources]
    for fd in sources:
        os.close(fd)
    for target, fd in enumerate(parked, start=3):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(sources))
    os.environ["LISTEN_FDNAMES"] = names
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
