"""Exec a command socket-activated the way systemd does it: fds at 3, 4, ... and LISTEN_*.

    python tests/launch.py [--names a:b] [--pid N|--no-pid] SRC_FD[,SRC_FD...] -- CMD ARGS...

Each SRC_FD (an fd this process inherited through pass_fds) is dup2()ed to 3, 4, ... in order;
LISTEN_FDS is their count and LISTEN_PID this process's own pid, which exec keeps, so the
command sees exactly what systemd would hand it.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    names: str | None = None
    pid: str | None = str(os.getpid())
    while argv[0].startswith("--"):
        option = argv.pop(0)
        if option == "--names":
            names = argv.pop(0)
        elif option == "--pid":
            pid = argv.pop(0)
        elif option == "--no-pid":
            pid = None
        else:
            raise SystemExit(f"launch.py: unknown option {option}")
    sources = [int(fd) for fd in argv.pop(0).split(",") if fd]
    if argv.pop(0) != "--":
        raise SystemExit("launch.py: expected -- before the command")
    # Park the sources above every target first, so dup2 onto 3.. cannot clobber one not yet
    # moved; the parked copies are close-on-exec and vanish with the exec.
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in sources]
    for fd in sources:
        os.close(fd)
    for target, fd in enumerate(parked, start=3):
        os.dup2(fd, target, inheritable=True)
    os.environ["LISTEN_FDS"] = str(len(sources))
    if pid is not None:
        os.environ["LISTEN_PID"] = pid
    if names is not None:
        os.environ["LISTEN_FDNAMES"] = names
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
