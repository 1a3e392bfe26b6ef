"""Hold N idle keep-alive connections to a server, for the memory and SIGTERM scenarios.

Run by `run.py` as a separate process pinned to the load core:

    idle_client.py PORT COUNT DEADLINE_SECONDS

Each connection sends one `GET /` and reads the whole response (the `hello` app answers with a
`Content-Length`), then stays open and silent. Connections are opened in batches of 50 so that a
server with a short listen backlog (hypercorn's default is 100) never sees its queue overflow.

Protocol on stdout/stdin, one line each:
- prints `open N SECONDS` once it has N connections (N < COUNT if the deadline or an error cut it
  short; the reason goes to stderr);
- on a `check` line it prints `alive M`: connections the server has not closed;
- on end of input it closes everything and exits.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import sys
import time

BATCH = 50
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected response: {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed mid-body")
        body += chunk


def _is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read and no FIN: still open
    except OSError:
        return False


def open_idle(port: int, count: int, deadline: float) -> list[socket.socket]:
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            if time.monotonic() > deadline:
                print(f"deadline reached after {len(held)} connections", file=sys.stderr)
                break
            batch = [
                socket.create_connection(("127.0.0.1", port), timeout=10)
                for _ in range(min(BATCH, count - len(held)))
            ]
            held.extend(batch)
            for sock in batch:
                sock.sendall(REQUEST)
            for sock in batch:
                _read_response(sock)
                sock.setblocking(False)  # from now on only peeked at, never waited on
    except OSError as exc:
        print(f"stopped after {len(held)} connections: {exc!r}", file=sys.stderr)
    return held


def main() -> None:
    port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    _raise_fd_limit(count + 64)
    start = time.monotonic()
    held = open_idle(port, count, start + seconds)
    print(f"open {len(held)} {time.monotonic() - start:.3f}", flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            print(f"alive {sum(_is_open(sock) for sock in held)}", flush=True)
    for sock in held:
        with contextlib.suppress(OSError):
            sock.close()


if __name__ == "__main__":
    main()
