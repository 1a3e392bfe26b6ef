"""A socket-activated child for tests/test_inherit.py, run as a script (never imported).

``activate`` is a tiny service manager: it moves the fds it was given (with ``pass_fds``) to 3,
4, ..., sets LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID (our own pid: exec keeps it) and execs the
rest of its command line, as systemd does. The other commands run trioserve's adoption and print
one JSON line describing the result, so the test checks real inheritance:

    sd_child.py activate --fds 7,9 [--names a:b] [--pid self|parent|none]
                         [--pidfdid self|wrong] -- COMMAND...
    sd_child.py inherit          inherited_listeners()
    sd_child.py open SPEC...     open_listeners(SPECs)
    sd_child.py each SPEC...     open_listeners([SPEC]) once per SPEC, one result each;
                                 the SPEC "inherit" calls inherited_listeners() instead
    sd_child.py serve            inherited_listeners(), print, then on each: accept one
                                 connection (or use the inherited one) and send the fd's name
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioserve import Listener

# trio and trioserve are imported only by the commands that need them: `activate` stays quick.

# Where the moved fds wait before they are placed at 3, 4, ...: above anything they could clash
# with.
_PARK = 100


def activate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fds", required=True)
    parser.add_argument("--names")
    parser.add_argument("--pid", choices=("self", "parent", "none"), default="self")
    parser.add_argument("--pidfdid", choices=("self", "wrong"))
    parser.add_argument("--count", type=int, help="LISTEN_FDS, if not the number of fds")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    sources = [int(fd) for fd in args.fds.split(",")]
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, _PARK) for fd in sources]
    for fd in sources:
        os.close(fd)
    for i, fd in enumerate(parked):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(args.count or len(sources))
    if args.names is not None:
        os.environ["LISTEN_FDNAMES"] = args.names
    if args.pid != "none":
        os.environ["LISTEN_PID"] = str(os.getpid() if args.pid == "self" else os.getppid())
    if args.pidfdid is not None:
        pidfd = os.pidfd_open(os.getpid())
        ident = os.fstat(pidfd).st_ino + (1 if args.pidfdid == "wrong" else 0)
        os.close(pidfd)
        os.environ["LISTEN_PIDFDID"] = str(ident)
    os.execvp(args.command[0], args.command)


def describe(listener: Listener) -> dict[str, object]:
    fd = listener.socket.fileno()
    return {
        "kind": listener.kind,
        "family": listener.family.name,
        "address": listener.address,
        "name": listener.name,
        "fd": listener.fd,
        "inherited": listener.inherited,
        "v6only": listener.v6only,
        "str": str(listener),
        "cloexec": not os.get_inheritable(fd),
        "nonblocking": not os.get_blocking(fd),
    }


def result(run: Callable[[], list[Listener]]) -> dict[str, object]:
    """Run a callable returning listeners; describe them, or the error it raised."""
    from trioserve import TrioserveError

    try:
        listeners = run()
    except TrioserveError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"listeners": [describe(listener) for listener in listeners]}


def listen_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "activate":
        activate(args)
        return
    import trio

    from trioserve import inherited_listeners, open_listeners

    def opened(specs: list[str]) -> list[Listener]:
        return trio.run(open_listeners, specs)

    out: dict[str, object]
    if command == "inherit":
        out = result(inherited_listeners)
    elif command == "open":
        out = result(functools.partial(opened, args))
    elif command == "each":
        out = {
            "each": [
                result(
                    inherited_listeners if spec == "inherit" else functools.partial(opened, [spec])
                )
                for spec in args
            ]
        }
    elif command == "serve":
        listeners = inherited_listeners()
        print(json.dumps({"listeners": [describe(x) for x in listeners]}), flush=True)
        trio.run(serve_once, listeners)
        return
    else:
        raise SystemExit(f"unknown command {command!r}")
    out["environ"] = listen_environ()
    print(json.dumps(out), flush=True)


async def serve_once(listeners: list[Listener]) -> None:
    import trio

    async def answer(listener: Listener) -> None:
        if listener.kind == "connection":
            stream = trio.SocketStream(listener.socket)
        else:
            stream = await listener.trio_listener().accept()
        async with stream:
            await stream.send_all(f"{listener.name}\n".encode())
        listener.close()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(answer, listener)


if __name__ == "__main__":
    main(sys.argv[1:])
